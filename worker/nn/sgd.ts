// Stochastic gradient descent with momentum and L2 weight decay, PyTorch's
// torch.optim.SGD semantics (dampening 0, optionally Nesterov). Allocation-free step;
// with --kernels native the addon runs the same arithmetic (native/elementwise.cc).
// Not a gradient all-reduce: it reads each Param's grad as already summed.

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { stepKernelBackend } from "./kernels/backend.js";
import { nativeKernels, type NativeKernels } from "./kernels/native.js";
import type { Param } from "./layer.js";

export interface SgdOptions {
  lr: number;
  momentum: number;
  /** L2 penalty added to the gradient; skipped for params with decay === false. */
  weightDecay: number;
  /** torch.optim.SGD(nesterov=True): step along g + μ·buf instead of buf; needs momentum > 0. */
  nesterov?: boolean;
}

export class SGD {
  /** Mutable so a schedule can change it between steps. */
  lr: number;
  readonly momentum: number;
  readonly weightDecay: number;
  readonly nesterov: boolean;
  private readonly params: readonly Param[];
  /**
   * One momentum buffer per param. PyTorch sets buf = g on the first step; zeros
   * give the same, since μ·0 + g = g exactly, so no first-step flag is kept.
   */
  private readonly bufs: Float32Array[];
  /** The addon's update (same bits), or null: the loops below. */
  private readonly native: NativeKernels | null;

  constructor(params: readonly Param[], opts: SgdOptions, native = stepKernelBackend() === "native") {
    for (const [key, v] of [["lr", opts.lr], ["momentum", opts.momentum], ["weightDecay", opts.weightDecay]] as const) {
      if (!Number.isFinite(v) || v < 0) {
        throw new SyncbnError(ErrorCode.BadConfig, `SGD ${key} must be a finite number >= 0, got ${v}`);
      }
    }
    if (opts.nesterov && !(opts.momentum > 0)) {
      throw new SyncbnError(ErrorCode.BadConfig, `SGD nesterov needs momentum > 0, got ${opts.momentum}`);
    }
    this.nesterov = opts.nesterov === true;
    this.params = [...params];
    this.lr = opts.lr;
    this.momentum = opts.momentum;
    this.weightDecay = opts.weightDecay;
    this.bufs = this.params.map((p) => new Float32Array(p.value.length));
    this.native = native ? nativeKernels() : null;
  }

  /**
   * Per element: g = grad + wd·p; buf = μ·buf + g; p −= lr·buf, or with Nesterov
   * p −= lr·(g + μ·buf) (with μ = 0: p −= lr·g, buffers untouched). Arithmetic in
   * float64, stored to float32.
   */
  step(): void {
    const lr = this.lr, mu = this.momentum;
    for (let k = 0; k < this.params.length; k++) {
      const param = this.params[k];
      const p = param.value, grad = param.grad, buf = this.bufs[k];
      const wd = param.decay === false ? 0 : this.weightDecay;
      if (this.native) {
        this.native.sgdStep(p, grad, buf, lr, mu, wd, mu === 0 ? 0 : this.nesterov ? 2 : 1);
      } else if (mu === 0) {
        for (let i = 0; i < p.length; i++) p[i] -= lr * (grad[i] + wd * p[i]);
      } else if (this.nesterov) {
        for (let i = 0; i < p.length; i++) {
          const g = grad[i] + wd * p[i];
          buf[i] = mu * buf[i] + g;
          p[i] -= lr * (g + mu * buf[i]); // PyTorch: g.add(buf, alpha=μ) with the float32 buffer
        }
      } else {
        for (let i = 0; i < p.length; i++) {
          const b = mu * buf[i] + (grad[i] + wd * p[i]);
          buf[i] = b;
          p[i] -= lr * buf[i]; // the float32-rounded buffer, as PyTorch stores it
        }
      }
    }
  }

  /** The live momentum buffers, in params order (not copies: copy before the next step if needed). */
  state(): Float32Array[] {
    return [...this.bufs];
  }

  /** Copies saved momentum buffers in; count and lengths must match the params. */
  loadState(bufs: readonly Float32Array[]): void {
    if (bufs.length !== this.bufs.length) {
      throw new SyncbnError(ErrorCode.Checkpoint, `optimizer state has ${bufs.length} buffers, the model has ${this.bufs.length} params`);
    }
    for (let k = 0; k < bufs.length; k++) {
      if (bufs[k].length !== this.bufs[k].length) {
        throw new SyncbnError(
          ErrorCode.Checkpoint,
          `momentum buffer for ${this.params[k].name} has ${bufs[k].length} values, expected ${this.bufs[k].length}`,
        );
      }
    }
    for (let k = 0; k < bufs.length; k++) this.bufs[k].set(bufs[k]);
  }
}
