// Constant folding for the ONNX importer (onnx-import.ts): the integer shape
// arithmetic PyTorch emits for x.view(n, -1) (Shape, Gather, Unsqueeze, Concat,
// Slice, Cast, ConstantOfShape), with "n" standing for the batch size. Not a general
// evaluator: anything else is refused with the node's name and op type, and a
// ConstantOfShape is held to MAX_FOLDED_ELEMENTS before its output is made.

import type { NodeProto } from "onnx-buf";
import { attr, int, SUPPORTED_OPS, type Sym } from "./onnx-import.js";
import { MAX_FOLDED_ELEMENTS, tensorInts } from "./onnx-tensor.js";

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
  const out = (dims: number[], data: (number | "n")[]): void => void syms.set(node.output[0]!, { k: "const", dims, data, floats: null, name: node.output[0]!, dataType: INT64 });
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
      const data = c(0);
      const starts = c(1);
      const ends = c(2);
      // Steps (input 4) other than 1 are not folded: a reversed or strided slice would come out wrong.
      const unitSteps = node.input.length < 5 || node.input[4] === "" || c(4)?.data.every((a) => a === 1) === true;
      if (data && starts && ends && data.dims.length === 1 && (node.input.length < 4 || c(3)?.data.every((a) => a === 0)) && unitSteps) {
        const len = data.data.length;
        const s = Math.max(0, Math.min(len, idx(Number(starts.data[0]), len)));
        const e = Math.max(0, Math.min(len, idx(Number(ends.data[0]), len)));
        return out([Math.max(0, e - s)], data.data.slice(s, e));
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
