// Fully connected layer y = x·Wᵀ + b, W stored (out, in) row-major like PyTorch's
// nn.Linear, initialized like PyTorch's default. Also the shared fan-in init helper.
// Not a general matmul: inputs are (n, in) rows only; spatial inputs go through
// Flatten first.

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import type { Rng } from "../../shared/rng.js";
import { BatchBuffer, type Layer, type Param } from "./layer.js";

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

export class Linear implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  readonly weight: Param; // (out, in)
  readonly bias: Param; // (out)
  private readonly y: BatchBuffer; // (N, out)
  private readonly dx: BatchBuffer; // (N, in)
  /** A copy of the last training input: the caller may reuse its buffer before backward. */
  private readonly xSaved: BatchBuffer; // (N, in)
  private savedN = -1;

  constructor(
    readonly name: string,
    readonly inFeatures: number,
    readonly outFeatures: number,
    rng: Rng,
  ) {
    requireInt(name, "inFeatures", inFeatures, 1);
    requireInt(name, "outFeatures", outFeatures, 1);
    this.inShape = [inFeatures];
    this.outShape = [outFeatures];
    const w = new Float32Array(outFeatures * inFeatures);
    const b = new Float32Array(outFeatures);
    initFanInUniform(w, b, inFeatures, rng);
    this.weight = { name: `${name}.weight`, value: w, grad: new Float32Array(w.length) };
    this.bias = { name: `${name}.bias`, value: b, grad: new Float32Array(b.length) };
    this.y = new BatchBuffer(outFeatures);
    this.dx = new BatchBuffer(inFeatures);
    this.xSaved = new BatchBuffer(inFeatures);
  }

  params(): Param[] {
    return [this.weight, this.bias];
  }

  /** n·out·in multiply-adds, one dot product per output. */
  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const inF = this.inFeatures, outF = this.outFeatures;
    requireLength(this.name, "x", x, n * inF);
    const y = this.y.view(n);
    const w = this.weight.value, b = this.bias.value;
    for (let i = 0; i < n; i++) {
      const xOff = i * inF, yOff = i * outF;
      for (let o = 0; o < outF; o++) y[yOff + o] = b[o] + dot(x, xOff, w, o * inF, inF);
    }
    if (train) {
      this.xSaved.view(n).set(x.subarray(0, n * inF));
      this.savedN = n;
    }
    return y;
  }

  /**
   * dW = dyᵀ·x, db = Σ_i dy_i, dx = dy·W: 2·n·out·in multiply-adds, all in
   * row-update (ikj) order so the inner loop runs along contiguous rows.
   */
  backward(dy: Float32Array, n: number): Float32Array {
    if (n !== this.savedN) {
      throw new RangeError(`layer ${this.name}: backward for ${n} samples after a training forward of ${this.savedN}`);
    }
    const inF = this.inFeatures, outF = this.outFeatures;
    requireLength(this.name, "dy", dy, n * outF);
    const x = this.xSaved.view(n);
    const dx = this.dx.view(n);
    const w = this.weight.value, dw = this.weight.grad, db = this.bias.grad;
    dw.fill(0);
    dx.fill(0);
    for (let o = 0; o < outF; o++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += dy[i * outF + o];
      db[o] = s;
    }
    for (let i = 0; i < n; i++) {
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
    return dx;
  }
}
