// Elementwise ReLU, y = max(x, 0), on any per-sample shape. NaN passes through as
// in PyTorch. Not a leaky or parametric ReLU, and not in place: it owns its output.

import { BatchBuffer, sizeOf, type Layer, type Param } from "./layer.js";
import { requireLength } from "./linear.js";

export class ReLU implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  private readonly size: number;
  /** Doubles as the backward mask: y > 0 exactly where x > 0. */
  private readonly y: BatchBuffer; // (N, ...shape)
  private readonly dx: BatchBuffer; // (N, ...shape)
  private savedN = -1;

  constructor(readonly name: string, shape: readonly number[]) {
    this.inShape = [...shape];
    this.outShape = [...shape];
    this.size = sizeOf(shape);
    this.y = new BatchBuffer(this.size);
    this.dx = new BatchBuffer(this.size);
  }

  params(): Param[] {
    return [];
  }

  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const len = n * this.size;
    requireLength(this.name, "x", x, len);
    const y = this.y.view(n);
    for (let i = 0; i < len; i++) {
      const v = x[i];
      y[i] = v <= 0 ? 0 : v;
    }
    this.savedN = train ? n : -1; // an eval forward overwrites what backward needs
    return y;
  }

  /** dx = dy where y > 0 (or NaN), else 0: PyTorch's threshold_backward. */
  backward(dy: Float32Array, n: number): Float32Array {
    if (n !== this.savedN) {
      throw new RangeError(`layer ${this.name}: backward for ${n} samples after a training forward of ${this.savedN}`);
    }
    const len = n * this.size;
    requireLength(this.name, "dy", dy, len);
    const y = this.y.view(n);
    const dx = this.dx.view(n);
    for (let i = 0; i < len; i++) dx[i] = y[i] <= 0 ? 0 : dy[i];
    return dx;
  }
}
