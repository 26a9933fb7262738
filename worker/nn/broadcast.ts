// Graph ops for the tensor arithmetic of ONNX exports: y = a ∘ b (Add, Sub, Mul,
// Div) with numpy broadcasting over the per-sample dims, either operand an
// activation or a constant (no batch dim, no gradient); Concat along one
// per-sample axis; and View, a reshape that copies nothing. Each element in
// float64, rounded once; a broadcast operand's gradient is summed in float64.
// Not a tensor library: shapes are fixed when the graph is built.

import { BatchBuffer, sizeOf, type Layer, type Param } from "./layer.js";
import type { Op } from "./graph.js";
import { requireLength, requireSaved } from "./linear.js";

export type BinaryKind = "Add" | "Sub" | "Mul" | "Div";

/** An operand: an activation of this per-sample shape, or a constant tensor (values row-major over shape). */
export type Operand = { readonly shape: readonly number[]; readonly values?: Float32Array };

/** The numpy broadcast of per-sample shapes of equal rank, or null where a dim pair is neither equal nor has a 1. */
export function broadcastShape(a: readonly number[], b: readonly number[]): number[] | null {
  if (a.length !== b.length) return null;
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i] && a[i] !== 1 && b[i] !== 1) return null;
    out.push(Math.max(a[i]!, b[i]!));
  }
  return out;
}

/** For each element of `out` (row-major), the index of the element of `shape` (same rank, dims 1 or equal) it reads. */
function readIndex(shape: readonly number[], out: readonly number[]): Int32Array {
  const total = sizeOf(out), idx = new Int32Array(total);
  const strides = shape.map((_, i) => sizeOf(shape.slice(i + 1)));
  for (let j = 0; j < total; j++) {
    let rest = j, at = 0;
    for (let d = out.length - 1; d >= 0; d--) {
      const coord = rest % out[d]!;
      rest = (rest - coord) / out[d]!;
      if (shape[d] !== 1) at += coord * strides[d]!;
    }
    idx[j] = at;
  }
  return idx;
}

interface Side {
  readonly size: number; // elements per sample
  readonly values: Float32Array | null; // a constant, else null
  readonly idx: Int32Array; // (S): where each output element reads this side
  readonly full: boolean; // idx is the identity
  readonly saved: BatchBuffer; // (N, size) the last training input, copied (Mul, Div need it)
  readonly dx: BatchBuffer; // (N, size)
}

export class BroadcastBinary implements Op {
  readonly inShapes: readonly (readonly number[])[];
  readonly outShape: readonly number[];
  private readonly size: number;
  private readonly a: Side;
  private readonly b: Side;
  private readonly y: BatchBuffer; // (N, ...outShape)
  private readonly acc: Float64Array; // (size of the larger operand) one sample's broadcast gradient sum
  private readonly dxs: Float32Array[];
  private savedN = -1;

  /** a and b of equal rank (the importer pads a constant's dims with leading 1s); at least one an activation. */
  constructor(readonly name: string, readonly kind: BinaryKind, a: Operand, b: Operand) {
    const out = broadcastShape(a.shape, b.shape);
    if (!out) throw new RangeError(`${name}: shapes (${a.shape.join(", ")}) and (${b.shape.join(", ")}) do not broadcast`);
    if (a.values && b.values) throw new RangeError(`${name}: both operands are constants`);
    this.outShape = out;
    this.size = sizeOf(out);
    this.inShapes = [a, b].filter((o) => !o.values).map((o) => o.shape);
    const side = (o: Operand): Side => {
      const size = sizeOf(o.shape);
      const idx = readIndex(o.shape, out);
      return { size, values: o.values ?? null, idx, full: size === this.size, saved: new BatchBuffer(size), dx: new BatchBuffer(size) };
    };
    this.a = side(a);
    this.b = side(b);
    this.y = new BatchBuffer(this.size);
    this.acc = new Float64Array(Math.max(this.a.size, this.b.size));
    this.dxs = this.inShapes.map(() => new Float32Array(0));
  }

  params(): Param[] {
    return [];
  }

  forward(xs: readonly Float32Array[], n: number, train: boolean): Float32Array {
    let next = 0;
    const input = (s: Side): Float32Array => {
      if (s.values) return s.values;
      const x = xs[next++]!;
      requireLength(this.name, "x", x, n * s.size);
      if (train && this.kind !== "Add" && this.kind !== "Sub") s.saved.view(n).set(x.subarray(0, n * s.size));
      return x;
    };
    const A = input(this.a), B = input(this.b);
    const S = this.size, ia = this.a.idx, ib = this.b.idx, y = this.y.view(n);
    const aStep = this.a.values ? 0 : this.a.size, bStep = this.b.values ? 0 : this.b.size;
    for (let s = 0; s < n; s++) {
      const ao = s * aStep, bo = s * bStep, yo = s * S;
      switch (this.kind) {
        case "Add": for (let j = 0; j < S; j++) y[yo + j] = A[ao + ia[j]!]! + B[bo + ib[j]!]!; break;
        case "Sub": for (let j = 0; j < S; j++) y[yo + j] = A[ao + ia[j]!]! - B[bo + ib[j]!]!; break;
        case "Mul": for (let j = 0; j < S; j++) y[yo + j] = A[ao + ia[j]!]! * B[bo + ib[j]!]!; break;
        case "Div": for (let j = 0; j < S; j++) y[yo + j] = A[ao + ia[j]!]! / B[bo + ib[j]!]!; break;
      }
    }
    this.savedN = train ? n : -1;
    return y;
  }

  /** One dx per activation operand, in operand order: ∂(a∘b)/∂a·dy and ∂(a∘b)/∂b·dy, summed over its broadcast dims. */
  backward(dy: Float32Array, n: number): readonly Float32Array[] {
    requireSaved(this.name, n, this.savedN);
    requireLength(this.name, "dy", dy, n * this.size);
    let k = 0;
    for (const [self, other, isA] of [[this.a, this.b, true], [this.b, this.a, false]] as const) {
      if (self.values) continue;
      this.dxs[k++] = this.operandGrad(self, other, isA, dy, n);
    }
    return this.dxs;
  }

  private operandGrad(self: Side, other: Side, isA: boolean, dy: Float32Array, n: number): Float32Array {
    const S = this.size, kind = this.kind;
    const dx = self.dx.view(n);
    const product = kind === "Mul" || kind === "Div"; // only these read the saved inputs
    const O = other.values ?? (product ? other.saved.view(n) : dy), X = product ? self.saved.view(n) : dy;
    const oStep = other.values ? 0 : other.size, is = self.idx, io = other.idx;
    // d/da: Add, Sub 1; Mul b; Div 1/b.  d/db: Add 1; Sub −1; Mul a; Div −a/b².
    const grad = (g: number, j: number, s: number): number => {
      if (kind === "Add") return g;
      if (kind === "Sub") return isA ? g : -g;
      const o = O[s * oStep + io[j]!]!;
      if (kind === "Mul") return g * o;
      if (isA) return g / o;
      const self_ = X[s * self.size + is[j]!]!;
      return (-g * o) / (self_ * self_); // here o is a (the other side) and self_ is b
    };
    for (let s = 0; s < n; s++) {
      const off = s * S, xo = s * self.size;
      if (self.full) {
        for (let j = 0; j < S; j++) dx[xo + j] = grad(dy[off + j]!, j, s);
      } else {
        const acc = this.acc.subarray(0, self.size);
        acc.fill(0);
        for (let j = 0; j < S; j++) acc[is[j]!]! += grad(dy[off + j]!, j, s);
        for (let i = 0; i < self.size; i++) dx[xo + i] = acc[i]!;
      }
    }
    return dx;
  }
}

/** Concatenation of activations along per-sample axis `axis` (ONNX axis − 1); all other dims equal. */
export class Concat implements Op {
  readonly outShape: readonly number[];
  private readonly inner: number[]; // per input: its dims from the axis on, multiplied
  private readonly outer: number; // dims before the axis, multiplied
  private readonly y: BatchBuffer;
  private readonly dx: BatchBuffer[];
  private readonly dxs: Float32Array[];
  private savedN = -1;

  constructor(readonly name: string, readonly inShapes: readonly (readonly number[])[], axis: number) {
    const first = inShapes[0]!;
    if (!(axis >= 0 && axis < first.length)) throw new RangeError(`${name}: axis ${axis} outside the per-sample shape (${first.join(", ")})`);
    for (const s of inShapes) {
      if (s.length !== first.length || s.some((d, i) => i !== axis && d !== first[i])) {
        throw new RangeError(`${name}: shapes (${inShapes.map((t) => t.join("×")).join("), (")}) differ outside axis ${axis}`);
      }
    }
    this.outShape = first.map((d, i) => (i === axis ? inShapes.reduce((a, s) => a + s[axis]!, 0) : d));
    this.outer = sizeOf(first.slice(0, axis));
    this.inner = inShapes.map((s) => sizeOf(s.slice(axis)));
    this.y = new BatchBuffer(sizeOf(this.outShape));
    this.dx = inShapes.map((s) => new BatchBuffer(sizeOf(s)));
    this.dxs = inShapes.map(() => new Float32Array(0));
  }

  params(): Param[] {
    return [];
  }

  forward(xs: readonly Float32Array[], n: number, train: boolean): Float32Array {
    const y = this.y.view(n), row = this.inner.reduce((a, b) => a + b, 0);
    let col = 0;
    xs.forEach((x, k) => {
      const w = this.inner[k]!;
      requireLength(this.name, "x", x, n * this.outer * w);
      for (let r = 0; r < n * this.outer; r++) y.set(x.subarray(r * w, (r + 1) * w), r * row + col);
      col += w;
    });
    this.savedN = train ? n : -1;
    return y;
  }

  backward(dy: Float32Array, n: number): readonly Float32Array[] {
    requireSaved(this.name, n, this.savedN);
    const row = this.inner.reduce((a, b) => a + b, 0);
    requireLength(this.name, "dy", dy, n * this.outer * row);
    let col = 0;
    this.inner.forEach((w, k) => {
      const dx = this.dx[k]!.view(n);
      for (let r = 0; r < n * this.outer; r++) dx.set(dy.subarray(r * row + col, r * row + col + w), r * w);
      this.dxs[k] = dx;
      col += w;
    });
    return this.dxs;
  }
}

/** A reshape to another per-sample shape of the same size: row-major data is already it, so forward returns x and backward dy. */
export class View implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  private readonly size: number;

  constructor(readonly name: string, inShape: readonly number[], outShape: readonly number[]) {
    if (sizeOf(inShape) !== sizeOf(outShape)) throw new RangeError(`${name}: cannot view (${inShape.join(", ")}) as (${outShape.join(", ")})`);
    this.inShape = [...inShape];
    this.outShape = [...outShape];
    this.size = sizeOf(inShape);
  }

  params(): Param[] {
    return [];
  }

  forward(x: Float32Array, n: number, _train: boolean): Float32Array {
    requireLength(this.name, "x", x, n * this.size);
    return x;
  }

  backward(dy: Float32Array, n: number): Float32Array {
    requireLength(this.name, "dy", dy, n * this.size);
    return dy;
  }
}
