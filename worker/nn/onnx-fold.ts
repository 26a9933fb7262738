// Constant folding for the ONNX importer (onnx-import.ts): the integer shape
// arithmetic PyTorch emits for x.view(n, -1) and F.pad (Shape, Gather, Unsqueeze,
// Concat, Slice, Cast, ConstantOfShape, Reshape and Transpose of constants), with "n" standing for the batch size. Not a general
// evaluator: anything else is refused with the node's name and op type, and a
// ConstantOfShape is held to MAX_FOLDED_ELEMENTS before its output is made.

import type { NodeProto } from "onnx-buf";
import { attr, int, SUPPORTED_OPS, type Sym } from "./onnx-import.js";
import { MAX_FOLDED_ELEMENTS, tensorInts } from "./onnx-tensor.js";

/** Row-major strides of dims. */
function strides(dims: readonly number[]): number[] {
  const out = dims.map(() => 1);
  for (let d = dims.length - 2; d >= 0; d--) out[d] = out[d + 1]! * dims[d + 1]!;
  return out;
}

/**
 * ONNX Slice of a folded constant: per listed axis start, end (clamped as the spec
 * says, −1 being "before the first" for negative steps) and a non-zero step; null
 * for anything malformed.
 */
function sliceConst(dims: readonly number[], data: readonly (number | "n")[], starts: readonly (number | "n")[], ends: readonly (number | "n")[], axes: readonly (number | "n")[], steps: readonly (number | "n")[]): { dims: number[]; data: (number | "n")[] } | null {
  const rank = dims.length;
  const ranges = dims.map((d) => ({ start: 0, step: 1, count: d }));
  for (let i = 0; i < axes.length; i++) {
    const [a0, s0, e0, st] = [axes[i], starts[i], ends[i], steps[i]];
    if (typeof a0 !== "number" || typeof s0 !== "number" || typeof e0 !== "number" || typeof st !== "number" || st === 0) return null;
    const axis = a0 < 0 ? a0 + rank : a0, dim = dims[axis];
    if (dim === undefined) return null;
    const norm = (v: number): number => (v < 0 ? v + dim : v);
    const start = st > 0 ? Math.min(Math.max(norm(s0), 0), dim) : Math.min(Math.max(norm(s0), 0), dim - 1);
    const end = st > 0 ? Math.min(Math.max(norm(e0), 0), dim) : Math.min(Math.max(norm(e0), -1), dim - 1);
    ranges[axis] = { start, step: st, count: Math.max(0, Math.ceil((end - start) / st)) };
  }
  const outDims = ranges.map((r) => r.count), inStrides = strides(dims);
  const total = outDims.reduce((a, d) => a * d, 1);
  const out: (number | "n")[] = [];
  for (let j = 0; j < total; j++) {
    let rest = j, at = 0;
    for (let d = rank - 1; d >= 0; d--) {
      const r = ranges[d]!;
      at += (r.start + (rest % r.count) * r.step) * inStrides[d]!;
      rest = Math.floor(rest / r.count);
    }
    out.push(data[at]!);
  }
  return { dims: outDims, data: out };
}

/** A constant whose values are known (not too large, of a foldable type). */
type Folded = Extract<Sym, { k: "const" }> & { data: (number | "n")[] };
const INT64 = 7;

/** Constant folding of the integer shape arithmetic PyTorch emits for x.view(n, -1); "n" is the batch size. */
export function foldShape(node: NodeProto, syms: Map<string, Sym>, bad: (node: NodeProto, what: string) => void): void {
  const ins = node.input.map((i) => syms.get(i));
  const c = (i: number): Folded | null => {
    const s = ins[i];
    return s?.k === "const" && s.data !== null ? (s as Folded) : null;
  };
  // A value folded from a state_dict tensor stays marked as one (arithmetic with it is refused, not frozen).
  const moves = node.opType !== "Shape" && node.opType !== "ConstantOfShape"; // ops whose outputs are (some of) their inputs' values
  const state = moves ? (ins.find((s) => s?.k === "const" && s.state !== undefined) as Extract<Sym, { k: "const" }> | undefined) : undefined;
  const out = (dims: number[], data: (number | "n")[]): void =>
    void syms.set(node.output[0]!, { k: "const", dims, data, floats: null, name: node.output[0]!, dataType: INT64, ...(state ? { state: state.state } : {}) });
  const idx = (i: number, len: number): number => (i < 0 ? i + len : i);
  switch (node.opType) {
    case "Shape": {
      const s = ins[0];
      if (s?.k === "act") return out([s.v.shape.length + 1], ["n", ...s.v.shape]);
      if (s?.k === "const") return out([s.dims.length], s.dims);
      break;
    }
    case "Gather": {
      const data = c(0);
      const ix = c(1);
      if (data && ix && data.dims.length === 1 && int(node, "axis", 0) === 0) {
        const picked = ix.data.map((i) => data.data[idx(Number(i), data.data.length)]!);
        return out(ix.dims, picked);
      }
      break;
    }
    case "Unsqueeze":
    case "Cast":
    case "Squeeze": {
      const data = c(0);
      if (data && data.data.length <= 1 && node.opType !== "Cast") return out([1], data.data);
      if (data && node.opType === "Cast") return out(data.dims, data.data);
      // Longer tensors (nn.PReLU's weight unsqueezed to (C, 1, 1)): the same values, 1s inserted or removed.
      const axes = node.input.length > 1 && node.input[1] !== "" ? c(1)?.data : attr(node, "axes")?.ints.map(Number);
      if (data && axes && axes.every((a) => typeof a === "number")) {
        const rank = data.dims.length + (node.opType === "Unsqueeze" ? axes.length : 0);
        const at = (axes as number[]).map((a) => (a < 0 ? a + rank : a));
        if (node.opType === "Squeeze" && at.every((a) => data.dims[a] === 1)) return out(data.dims.filter((_, i) => !at.includes(i)), data.data);
        if (node.opType === "Unsqueeze" && at.every((a) => a >= 0 && a < rank)) {
          const dims: number[] = [];
          for (let i = 0, k = 0; i < rank; i++) dims.push(at.includes(i) ? 1 : data.dims[k++]!);
          return out(dims, data.data);
        }
      }
      break;
    }
    case "Concat": {
      const parts = node.input.map((_, i) => c(i));
      if (parts.every((p) => p !== null)) {
        const data = parts.flatMap((p) => p!.data);
        return out([data.length], data);
      }
      break;
    }
    case "Slice": {
      const data = c(0), starts = c(1), ends = c(2);
      const axes = node.input.length > 3 && node.input[3] !== "" ? c(3) : null;
      const steps = node.input.length > 4 && node.input[4] !== "" ? c(4) : null;
      if (!data || !starts || !ends || (node.input.length > 3 && node.input[3] !== "" && !axes) || (node.input.length > 4 && node.input[4] !== "" && !steps)) break;
      const sliced = sliceConst(data.dims, data.data, starts.data, ends.data, axes?.data ?? starts.data.map((_, i) => i), steps?.data ?? starts.data.map(() => 1));
      if (sliced) return out(sliced.dims, sliced.data);
      break;
    }
    case "Reshape": {
      const data = c(0), shape = c(1);
      if (data && shape && shape.data.every((d) => typeof d === "number")) {
        const want = (shape.data as number[]).map((d, i) => (d === 0 ? (data.dims[i] ?? NaN) : d));
        const known = want.filter((d) => d !== -1).reduce((a, d) => a * d, 1);
        const dims = want.map((d) => (d === -1 ? data.data.length / known : d));
        if (want.filter((d) => d === -1).length <= 1 && dims.every((d) => Number.isInteger(d) && d >= 0) && dims.reduce((a, d) => a * d, 1) === data.data.length) return out(dims, data.data);
      }
      break;
    }
    case "Transpose": {
      const data = c(0);
      if (data) {
        const rank = data.dims.length;
        const perm = attr(node, "perm")?.ints.map(Number) ?? data.dims.map((_, i) => rank - 1 - i);
        if (perm.length === rank && [...perm].sort().every((p, i) => p === i)) {
          const dims = perm.map((p) => data.dims[p]!);
          const inStrides = strides(data.dims);
          const outData = new Array<number | "n">(data.data.length);
          for (let j = 0; j < outData.length; j++) {
            let rest = j, at = 0;
            for (let d = rank - 1; d >= 0; d--) {
              at += (rest % dims[d]!) * inStrides[perm[d]!]!;
              rest = Math.floor(rest / dims[d]!);
            }
            outData[j] = data.data[at]!;
          }
          return out(dims, outData);
        }
      }
      break;
    }
    case "ConstantOfShape": {
      const shape = c(0);
      const v = attr(node, "value")?.t;
      const fill = v ? (tensorInts(v, `node "${node.name}" (ConstantOfShape) value`)?.[0] ?? 0) : 0;
      if (shape && shape.data.every((d) => typeof d === "number")) {
        const dims = shape.data as number[];
        // Only shape vectors fold: a bound before the array is made, never after (one [1e8] would take gigabytes).
        const count = dims.reduce((a, d) => a * d, 1);
        if (dims.some((d) => !Number.isSafeInteger(d) || d < 0) || count > MAX_FOLDED_ELEMENTS) {
          bad(node, `an output of dims [${dims.join(", ")}] is not supported (non-negative dims of at most ${MAX_FOLDED_ELEMENTS} elements: shape arithmetic only)`);
          return;
        }
        return out(dims, new Array<number>(count).fill(fill));
      }
      break;
    }
    default:
      bad(node, `unsupported op; supported ops: ${SUPPORTED_OPS}`);
      return;
  }
  bad(node, `a shape computation that does not fold to constants (dynamic shapes are not supported); supported ops: ${SUPPORTED_OPS}`);
}
