// What every normalization layer with running statistics shares (BatchNorm,
// GhostBatchNorm, BatchRenorm; not GroupNorm): shapes, the per-channel affine
// γ, β, the running statistics eval mode uses, and the output buffers. The
// training-mode statistics are each subclass's own business.

import type { BnConventions } from "../../shared/config.js";
import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { stepKernelBackend } from "./kernels/backend.js";
import { normPasses, type BatchView, type NormPasses } from "./kernels/norm-passes.js";
import { sizeOf, type Layer, type Param } from "./layer.js";

/**
 * A normalization layer that keeps running statistics for eval mode.
 * Checkpoints, the rank-0 broadcast and PreciseBN read and overwrite these fields.
 */
export interface RunningStatsLayer extends Layer {
  /** Index among the model's norm layers: the `layer` of its rounds. */
  readonly layerIndex: number;
  readonly channels: number;
  /** H·W, or 1 for (N, C) input. */
  readonly spatial: number;
  readonly runningMean: Float64Array; // (C)
  readonly runningVar: Float64Array; // (C)
  /** Number of running-stat updates so far (PyTorch's num_batches_tracked). */
  tracked: number;
}

export function isRunningStatsLayer(l: Layer): l is RunningStatsLayer {
  return "runningMean" in l && l.runningMean instanceof Float64Array && "runningVar" in l;
}

export abstract class RunningStatsNorm implements RunningStatsLayer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  readonly channels: number;
  /** H·W, or 1 for (N, C) input. */
  readonly spatial: number;
  readonly gamma: Param; // (C), initialized to 1
  readonly beta: Param; // (C), initialized to 0
  readonly runningMean: Float64Array; // (C), starts at 0
  readonly runningVar: Float64Array; // (C), starts at 1
  tracked = 0;
  /** The passes over the data, TypeScript, WebAssembly or native (SYNCBN_KERNELS), and the buffers they use. */
  protected readonly passes: NormPasses;
  protected readonly y: BatchView; // (N, C, S)
  protected readonly xhat: BatchView; // (N, C, S)
  protected readonly dx: BatchView; // (N, C, S)
  /** Batch size of the last training forward; -1 after an eval forward (backward needs a training forward). */
  protected savedN = -1;

  constructor(
    readonly name: string,
    /** Index among the model's norm layers: the `layer` of its rounds. */
    readonly layerIndex: number,
    shape: readonly number[], // [C] or [C, H, W]
    readonly conventions: BnConventions,
  ) {
    this.inShape = shape;
    this.outShape = shape;
    this.channels = shape[0]!;
    this.spatial = sizeOf(shape.slice(1));
    const c = this.channels;
    this.gamma = { name: `${name}.weight`, value: new Float32Array(c).fill(1), grad: new Float32Array(c), shape: [c] };
    this.beta = { name: `${name}.bias`, value: new Float32Array(c), grad: new Float32Array(c), shape: [c] };
    this.runningMean = new Float64Array(c);
    this.runningVar = new Float64Array(c).fill(1);
    this.passes = normPasses(stepKernelBackend(), sizeOf(shape), c);
    this.y = this.passes.y;
    this.xhat = this.passes.xhat;
    this.dx = this.passes.dx;
  }

  /** γ and β; none with affine = false (they stay 1 and 0: PyTorch's affine=False has neither in its state_dict). */
  params(): Param[] {
    return this.conventions.affine === false ? [] : [this.gamma, this.beta];
  }

  /** Eval mode: y = γ·(x − running mean)/sqrt(running var + eps) + β; no statistics, no network. */
  protected forwardEval(x: Float32Array, n: number): Float32Array {
    const xs = this.passes.stageInput(x, n);
    const y = this.y.view(n);
    this.passes.normalizeEval(y, xs, this.runningMean, this.runningVar, this.gamma.value, this.beta.value, this.conventions.eps, n, this.channels, this.spatial);
    return y;
  }

  protected requireTrainingForward(n: number): void {
    if (n !== this.savedN) {
      throw new SyncbnError(ErrorCode.BadConfig, `${this.name}: backward for ${n} samples without a matching training forward`, {
        layer: this.layerIndex,
        phase: "bwd",
      });
    }
  }

  abstract forward(x: Float32Array, n: number, train: boolean): Float32Array | Promise<Float32Array>;
  abstract backward(dy: Float32Array, n: number): Float32Array | Promise<Float32Array>;
}
