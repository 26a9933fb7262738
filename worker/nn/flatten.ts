// Flatten (C, H, W) (or any per-sample shape) to one feature vector per sample.
// NCHW row-major data already is (N, C·H·W), so forward returns its input view and
// backward returns dy: no copy. Not a reshape to arbitrary shapes.

import { sizeOf, type Layer, type Param } from "./layer.js";
import { requireLength } from "./linear.js";

export class Flatten implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];

  constructor(readonly name: string, shape: readonly number[]) {
    this.inShape = [...shape];
    this.outShape = [sizeOf(shape)];
  }

  params(): Param[] {
    return [];
  }

  /** Returns x itself (not a layer-owned buffer): its owner keeps it alive for the step. */
  forward(x: Float32Array, n: number, _train: boolean): Float32Array {
    requireLength(this.name, "x", x, n * this.outShape[0]);
    return x;
  }

  /** Returns dy itself. */
  backward(dy: Float32Array, n: number): Float32Array {
    requireLength(this.name, "dy", dy, n * this.outShape[0]);
    return dy;
  }
}
