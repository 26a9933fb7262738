// Data movement within a sample as one layer: y[j] = x[idx[j]] for a per-sample
// index map fixed at build time, dx the scatter of dy back (summed where an input
// element is read twice). ONNX Transpose of an activation (ShuffleNet's channel
// shuffle) and Slice/Split of one (x.chunk, x[:, a:b]) are index maps. Not a copy-free
// view (broadcast.ts View is): the output is its own buffer.

import { BatchBuffer, sizeOf, type Layer, type Param } from "./layer.js";
import { requireLength, requireSaved } from "./linear.js";

export class IndexMap implements Layer {
  private readonly inSize: number;
  private readonly y: BatchBuffer; // (N, ...outShape)
  private readonly dx: BatchBuffer; // (N, ...inShape)
  private savedN = -1;

  constructor(readonly name: string, readonly inShape: readonly number[], readonly outShape: readonly number[], private readonly idx: Int32Array) {
    if (idx.length !== sizeOf(outShape)) throw new RangeError(`layer ${name}: ${idx.length} indices for an output of (${outShape.join(", ")})`);
    this.inSize = sizeOf(inShape);
    this.y = new BatchBuffer(idx.length);
    this.dx = new BatchBuffer(this.inSize);
  }

  params(): Param[] {
    return [];
  }

  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const I = this.inSize, O = this.idx.length, idx = this.idx;
    requireLength(this.name, "x", x, n * I);
    const y = this.y.view(n);
    for (let s = 0; s < n; s++) for (let j = 0; j < O; j++) y[s * O + j] = x[s * I + idx[j]!]!;
    this.savedN = train ? n : -1;
    return y;
  }

  backward(dy: Float32Array, n: number): Float32Array {
    requireSaved(this.name, n, this.savedN);
    const I = this.inSize, O = this.idx.length, idx = this.idx;
    requireLength(this.name, "dy", dy, n * O);
    const dx = this.dx.view(n);
    dx.fill(0);
    for (let s = 0; s < n; s++) for (let j = 0; j < O; j++) dx[s * I + idx[j]!]! += dy[s * O + j]!;
    return dx;
  }
}

/** Row-major strides of a shape. */
function strides(shape: readonly number[]): number[] {
  return shape.map((_, i) => sizeOf(shape.slice(i + 1)));
}

/** The per-sample map of a transpose: output dim d is input dim perm[d]. */
export function permuteMap(shape: readonly number[], perm: readonly number[]): { outShape: number[]; idx: Int32Array } {
  const outShape = perm.map((p) => shape[p]!);
  const inStrides = strides(shape);
  const idx = new Int32Array(sizeOf(outShape));
  for (let j = 0; j < idx.length; j++) {
    let rest = j, at = 0;
    for (let d = outShape.length - 1; d >= 0; d--) {
      at += (rest % outShape[d]!) * inStrides[perm[d]!]!;
      rest = Math.floor(rest / outShape[d]!);
    }
    idx[j] = at;
  }
  return { outShape, idx };
}

/** One dim of a slice: `count` elements from `start`, `step` apart (negative steps walk back). */
export interface SliceRange {
  readonly start: number;
  readonly step: number;
  readonly count: number;
}

/** The per-sample map of a slice with one range per dim. */
export function sliceMap(shape: readonly number[], ranges: readonly SliceRange[]): { outShape: number[]; idx: Int32Array } {
  const outShape = ranges.map((r) => r.count);
  const inStrides = strides(shape);
  const idx = new Int32Array(sizeOf(outShape));
  for (let j = 0; j < idx.length; j++) {
    let rest = j, at = 0;
    for (let d = outShape.length - 1; d >= 0; d--) {
      const r = ranges[d]!;
      at += (r.start + (rest % r.count) * r.step) * inStrides[d]!;
      rest = Math.floor(rest / r.count);
    }
    idx[j] = at;
  }
  return { outShape, idx };
}

/** ONNX's clamping of a Slice's start and end on a dim of `size` (−1 is "before the first" for negative steps). */
export function sliceRange(start: number, end: number, step: number, size: number): SliceRange {
  const norm = (v: number): number => (v < 0 ? v + size : v);
  const s = step > 0 ? Math.min(Math.max(norm(start), 0), size) : Math.min(Math.max(norm(start), 0), size - 1);
  const e = step > 0 ? Math.min(Math.max(norm(end), 0), size) : Math.min(Math.max(norm(end), -1), size - 1);
  return { start: s, step, count: Math.max(0, Math.ceil((e - s) / step)) };
}
