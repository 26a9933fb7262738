// Fully connected layer y = x·Wᵀ + b, W stored (out, in) row-major like PyTorch's
// nn.Linear, initialized like PyTorch's default. Three paths behind one layer: the
// native one (kernels/linear-native.ts, where the addon loads), the WebAssembly
// SIMD one (kernels/linear-wasm.ts) and their plain TypeScript twin here. Also the shared fan-in init helper. Not a general matmul: inputs are
// (n, in) rows only; spatial inputs go through Flatten first.

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import type { Rng } from "../../shared/rng.js";
import { convKernelBackend, type KernelBackend } from "./kernels/backend.js";
import { LinearNative } from "./kernels/linear-native.js";
import { LinearWasm } from "./kernels/linear-wasm.js";
import { requireNative } from "./kernels/native.js";
import { addSegment, beginSegments, endSegments, BatchBuffer, segmentLength, type Layer, type Param, type RankSegments } from "./layer.js";

/**
 * PyTorch's default init for Linear and Conv: kaiming_uniform_(a=√5) gives
 * bound = gain·√3/√fan_in with gain = √(2/(1+a²)) = √(1/3), i.e. 1/√fan_in; the
 * bias uses the same bound. Weight first, then bias, each in row-major order.
 */
export function initFanInUniform(weight: Float32Array, bias: Float32Array, fanIn: number, rng: Rng): void {
  const bound = fanIn > 0 ? 1 / Math.sqrt(fanIn) : 0;
  for (let i = 0; i < weight.length; i++) weight[i] = rng.uniform(-bound, bound);
  for (let i = 0; i < bias.length; i++) bias[i] = rng.uniform(-bound, bound);
}

/** Param.grad64 of weight and bias for a block of r ranks, and the kernels' view of them. */
export function rankSegments(r: number, weight: Param, bias: Param): RankSegments {
  weight.grad64 = new Float64Array(weight.grad.length);
  bias.grad64 = new Float64Array(bias.grad.length);
  return { count: r, dw: weight.grad64, db: bias.grad64 };
}

/** Throws BadConfig unless v is an integer ≥ min; `what` names it for the message. */
export function requireInt(layer: string, what: string, v: number, min: number): void {
  if (!Number.isInteger(v) || v < min) {
    throw new SyncbnError(ErrorCode.BadConfig, `layer ${layer}: ${what} must be an integer >= ${min}, got ${v}`);
  }
}

/** Throws RangeError (a caller bug, not a user error) if a batch array is too short. */
export function requireLength(layer: string, what: string, a: ArrayLike<number>, need: number): void {
  if (a.length < need) {
    throw new RangeError(`layer ${layer}: ${what} has ${a.length} values, needs ${need}`);
  }
}

/** Throws RangeError (a caller bug) unless a backward of n samples follows a training forward of as many. */
export function requireSaved(layer: string, n: number, savedN: number): void {
  if (n !== savedN) throw new RangeError(`layer ${layer}: backward for ${n} samples after a training forward of ${savedN}`);
}

/** Σ_k a[aOff+k]·b[bOff+k] for k < len, four partial sums in float64 (breaks the add latency chain). */
export function dot(a: Float32Array, aOff: number, b: Float32Array, bOff: number, len: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let k = 0;
  for (; k + 3 < len; k += 4) {
    s0 += a[aOff + k] * b[bOff + k];
    s1 += a[aOff + k + 1] * b[bOff + k + 1];
    s2 += a[aOff + k + 2] * b[bOff + k + 2];
    s3 += a[aOff + k + 3] * b[bOff + k + 3];
  }
  for (; k < len; k++) s0 += a[aOff + k] * b[bOff + k];
  return (s0 + s1) + (s2 + s3);
}

/**
 * The compute of one Linear, one implementation per backend; owns its batch
 * buffers. Returned arrays are views it overwrites on its next call.
 */
export interface LinearKernel {
  /** y (n, out) = x·Wᵀ + b; train keeps x for backward. */
  forward(x: Float32Array, n: number, train: boolean, w: Float32Array, b: Float32Array): Float32Array;
  /**
   * For the last training forward of n samples: overwrites dw, db; returns dx (n, in).
   * With seg (a rank block): dw, db per rank segment, summed into seg; dw, db its rounding.
   */
  backward(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): Float32Array;
  /** The layer became part of a rank block: lay out what per-segment grads need now, before any view of this step is handed out. */
  enableSegments?(): void;
}

/** The plain TypeScript path: the reference twin of LinearWasm. */
export class LinearJs implements LinearKernel {
  private readonly y: BatchBuffer; // (N, out)
  private readonly dx: BatchBuffer; // (N, in)
  /** A copy of the last training input: the caller may reuse its buffer before backward. */
  private readonly xSaved: BatchBuffer; // (N, in)

  constructor(private readonly inF: number, private readonly outF: number) {
    this.y = new BatchBuffer(outF);
    this.dx = new BatchBuffer(inF);
    this.xSaved = new BatchBuffer(inF);
  }

  /** n·out·in multiply-adds, one dot product per output. */
  forward(x: Float32Array, n: number, train: boolean, w: Float32Array, b: Float32Array): Float32Array {
    const inF = this.inF, outF = this.outF;
    const y = this.y.view(n);
    for (let i = 0; i < n; i++) {
      const xOff = i * inF, yOff = i * outF;
      for (let o = 0; o < outF; o++) y[yOff + o] = b[o] + dot(x, xOff, w, o * inF, inF);
    }
    if (train) this.xSaved.view(n).set(x.subarray(0, n * inF));
    return y;
  }

  /**
   * dW = dyᵀ·x, db = Σ_i dy_i, dx = dy·W: 2·n·out·in multiply-adds, all in
   * row-update (ikj) order so the inner loop runs along contiguous rows. With
   * rank segments, dW and db per segment as a batch of its samples alone, added
   * into seg in float64.
   */
  backward(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): Float32Array {
    const inF = this.inF, outF = this.outF;
    const x = this.xSaved.view(n);
    const dx = this.dx.view(n);
    const b = segmentLength("linear", n, seg);
    dx.fill(0);
    beginSegments(seg);
    for (let r = 0; r < (seg?.count ?? 1); r++) {
      const first = r * b, end = first + b;
      dw.fill(0);
      for (let o = 0; o < outF; o++) {
        let s = 0;
        for (let i = first; i < end; i++) s += dy[i * outF + o];
        db[o] = s;
      }
      for (let i = first; i < end; i++) {
        const xOff = i * inF, dyOff = i * outF;
        for (let o = 0; o < outF; o++) {
          const g = dy[dyOff + o];
          const wOff = o * inF;
          for (let k = 0; k < inF; k++) {
            dw[wOff + k] += g * x[xOff + k];
            dx[xOff + k] += g * w[wOff + k];
          }
        }
      }
      addSegment(seg, dw, db);
    }
    endSegments(seg, dw, db);
    return dx;
  }
}

export class Linear implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  readonly weight: Param; // (out, in)
  readonly bias: Param; // (out)
  private readonly kernel: LinearKernel;
  private savedN = -1;
  private segments: RankSegments | null = null;

  /** `backend` defaults to the process-wide choice (kernels/backend.ts, as Conv2d's); "native" needs the addon built. */
  constructor(
    readonly name: string,
    readonly inFeatures: number,
    readonly outFeatures: number,
    rng: Rng,
    readonly backend: KernelBackend = convKernelBackend(),
  ) {
    requireInt(name, "inFeatures", inFeatures, 1);
    requireInt(name, "outFeatures", outFeatures, 1);
    this.inShape = [inFeatures];
    this.outShape = [outFeatures];
    const w = new Float32Array(outFeatures * inFeatures);
    const b = new Float32Array(outFeatures);
    initFanInUniform(w, b, inFeatures, rng);
    this.weight = { name: `${name}.weight`, value: w, grad: new Float32Array(w.length), shape: [outFeatures, inFeatures] };
    this.bias = { name: `${name}.bias`, value: b, grad: new Float32Array(b.length), shape: [outFeatures] };
    this.kernel = backend === "wasm" ? new LinearWasm(inFeatures, outFeatures) : backend === "native" ? new LinearNative(inFeatures, outFeatures, requireNative(name)) : new LinearJs(inFeatures, outFeatures);
  }

  params(): Param[] {
    return [this.weight, this.bias];
  }

  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    requireLength(this.name, "x", x, n * this.inFeatures);
    const y = this.kernel.forward(x, n, train, this.weight.value, this.bias.value);
    if (train) this.savedN = n;
    return y;
  }

  backward(dy: Float32Array, n: number): Float32Array {
    requireSaved(this.name, n, this.savedN);
    requireLength(this.name, "dy", dy, n * this.outFeatures);
    return this.kernel.backward(dy, n, this.weight.value, this.weight.grad, this.bias.grad, this.segments);
  }

  setRankSegments(r: number): void {
    this.segments = r > 1 ? rankSegments(r, this.weight, this.bias) : null;
    if (this.segments) this.kernel.enableSegments?.();
  }
}
