// The ONNX importer's mapping of the ops common CNN exports add to the basic set
// (onnx-import.ts): activations (Sigmoid, Tanh, Softplus, Elu, Erf, HardSigmoid,
// HardSwish, LeakyRelu, Clip, PRelu), Dropout, Add/Sub/Mul/Div with broadcasting,
// Concat, Transpose/Slice/Split and the reshapes of activations, padded pooling. An
// adapter like the importer: it builds graph nodes from the ops' public constructors
// and refuses, one line per problem, whatever it cannot map. Constants it only folds
// as shape arithmetic (Add/Sub/Mul/Div of two; the rest is onnx-fold.ts).

import type { NodeProto } from "onnx-buf";
import { Activation, type ActivationKind } from "./activations.js";
import { BroadcastBinary, Concat, View, type BinaryKind, type Operand } from "./broadcast.js";
import { Dropout, type DropoutClock } from "./dropout.js";
import { Flatten } from "./flatten.js";
import { AvgPool2d } from "./avgpool.js";
import { Add, type GraphBuilder, type Value } from "./graph.js";
import { MaxPool2d } from "./maxpool.js";
import { IndexMap, permuteMap, sliceMap, sliceRange, type SliceRange } from "./index-map.js";
import { PReLU } from "./prelu.js";
import { AvgPool2dExclusive, Pad2d, type Pads } from "./pad-pool.js";
import { sizeOf } from "./layer.js";
import { int, type Sym } from "./onnx-import.js";
import { MAX_VALUE_ELEMENTS } from "./onnx-tensor.js";

type Const = Extract<Sym, { k: "const" }>;

/** What the importer lends this module for one node. */
export interface OpContext {
  readonly g: GraphBuilder;
  readonly syms: Map<string, Sym>;
  bad(node: NodeProto, what: string): void;
  act(node: NodeProto, i: number): Value | null;
  cst(node: NodeProto, i: number): Const | null;
  /** The value of attribute `name` (float or int, by the attribute's type), or undefined. */
  num(node: NodeProto, name: string): number | undefined;
  ints(node: NodeProto, name: string): number[] | undefined;
  /** Starting values of layer tensors by state_dict name (nn.PReLU's weight). */
  readonly initial: Map<string, Float32Array>;
  /** Dropout draws: the clock, and the count of Dropout nodes built so far (each its own stream). */
  readonly dropout: { readonly clock: DropoutClock; count: number };
}

/** Op types this module maps (Add and the reshapes also have cases in onnx-import.ts). */
export const EXTRA_OPS = ["Split", "PRelu", "Sigmoid", "Tanh", "Softplus", "Elu", "Erf", "HardSigmoid", "HardSwish", "LeakyRelu", "Clip", "Dropout", "Sub", "Mul", "Div"];

/** A constant's values as numbers (a float tensor, or a folded integer or Cast one), or null with a refusal. */
function numbers(ctx: OpContext, node: NodeProto, c: Const, role: string): Float32Array | null {
  if (c.floats) return c.floats;
  if (c.data && c.data.every((d) => typeof d === "number")) return Float32Array.from(c.data as number[]);
  ctx.bad(node, `${role} "${c.name}" is not a constant syncbn can read (a tensor of at most a few thousand numbers)`);
  return null;
}

/** A scalar from an optional constant input i, the attribute `name` (older opsets), or `dflt`. */
function scalarInput(ctx: OpContext, node: NodeProto, i: number, name: string, dflt: number): number | null {
  if (node.input.length > i && node.input[i] !== "") {
    const c = ctx.cst(node, i);
    const v = c ? numbers(ctx, node, c, name) : null;
    if (!v) return null;
    if (v.length !== 1) {
      ctx.bad(node, `${name} must be one number, got ${v.length}`);
      return null;
    }
    return v[0]!;
  }
  return ctx.num(node, name) ?? dflt;
}

/** Builds the node if it is one of this module's ops; returns false for any other op type. */
export function importExtraOp(node: NodeProto, ctx: OpContext, set: (s: Sym) => void): boolean {
  const { g } = ctx;
  const activation = (kind: ActivationKind): void => {
    const v = ctx.act(node, 0);
    if (v) set({ k: "act", v: g.layer(new Activation(node.name, v.shape, kind), v) });
  };
  switch (node.opType) {
    case "Sigmoid":
      activation({ op: "sigmoid" });
      return true;
    case "Tanh":
      activation({ op: "tanh" });
      return true;
    case "Softplus":
      activation({ op: "softplus" });
      return true;
    case "Elu":
      activation({ op: "elu", alpha: ctx.num(node, "alpha") ?? 1 });
      return true;
    case "Erf":
      activation({ op: "erf" });
      return true;
    case "HardSigmoid":
      activation({ op: "hardsigmoid", alpha: ctx.num(node, "alpha") ?? 0.2, beta: ctx.num(node, "beta") ?? 0.5 });
      return true;
    case "HardSwish":
      activation({ op: "hardswish" });
      return true;
    case "LeakyRelu":
      activation({ op: "leakyrelu", alpha: ctx.num(node, "alpha") ?? 0.01 });
      return true;
    case "Clip": {
      const min = scalarInput(ctx, node, 1, "min", -Infinity);
      const max = scalarInput(ctx, node, 2, "max", Infinity);
      if (min === null || max === null) return true;
      if (!(min <= max)) {
        ctx.bad(node, `min ${min} is above max ${max}`);
        return true;
      }
      activation({ op: "clip", min, max });
      return true;
    }
    case "Dropout":
      importDropout(node, ctx, set);
      return true;
    case "PRelu": {
      // nn.PReLU: the slope is the module's weight (1 or one per channel), trained under its state_dict name.
      const v = ctx.act(node, 0), c = ctx.cst(node, 1);
      if (!v || !c) return true;
      const slopes = c.data ? numbers(ctx, node, c, "slope") : null;
      if (!slopes) return true;
      // One per channel broadcasts as (C, 1, …, 1) over the per-sample dims (the exporter's Unsqueeze); a bare (C) would align with the last.
      const dims = c.dims.slice(c.dims.findIndex((d) => d !== 1) < 0 ? c.dims.length : c.dims.findIndex((d) => d !== 1));
      const perChannel = slopes.length === v.shape[0] && dims.length === v.shape.length && dims.slice(1).every((d) => d === 1);
      if (c.state === undefined || !(slopes.length === 1 || perChannel)) {
        ctx.bad(node, `the slope must be an nn.PReLU weight of 1 value or (${v.shape[0]}${", 1".repeat(v.shape.length - 1)}), got "${c.name}" of dims [${c.dims.join(", ")}]`);
        return true;
      }
      const name = c.state.endsWith(".weight") ? c.state.slice(0, -".weight".length) : c.state;
      if (ctx.initial.has(`${name}.weight`)) {
        ctx.bad(node, `the slope "${c.state}" is used by an earlier PRelu too (a module called twice): a shared slope is not supported`);
        return true;
      }
      ctx.initial.set(`${name}.weight`, slopes);
      set({ k: "act", v: g.layer(new PReLU(name, v.shape, slopes.length), v) });
      return true;
    }
    case "Add":
    case "Sub":
    case "Mul":
    case "Div":
      importBinary(node, ctx, set, node.opType);
      return true;
    case "Concat": {
      const vs = node.input.map((_, i) => ctx.act(node, i));
      if (vs.some((v) => !v)) return true;
      const values = vs as Value[];
      const rank = values[0]!.shape.length;
      const axis = ctx.num(node, "axis") ?? 0;
      const sampleAxis = (axis < 0 ? axis + rank + 1 : axis) - 1;
      if (sampleAxis < 0 || sampleAxis >= rank || values.some((v) => v.shape.length !== rank)) {
        ctx.bad(node, `only a concatenation of activations of one rank along a non-batch axis is supported (axis ${axis}, shapes ${values.map((v) => `(${v.shape.join(", ")})`).join(", ")})`);
        return true;
      }
      set({ k: "act", v: g.apply(new Concat(node.name, values.map((v) => v.shape), sampleAxis), ...values) });
      return true;
    }
    case "Transpose":
    case "Slice":
    case "Split":
      importMove(node, ctx, set);
      return true;
    case "Squeeze":
    case "Unsqueeze": {
      const v = ctx.act(node, 0);
      if (!v) return true;
      const axesIn = node.input.length > 1 && node.input[1] !== "" ? ctx.cst(node, 1) : null;
      const raw = axesIn ? numbers(ctx, node, axesIn, "axes") : node.input.length > 1 && node.input[1] !== "" ? null : Float32Array.from(ctx.ints(node, "axes") ?? []);
      if (!raw) return true;
      const shape = view(node, v.shape, Array.from(raw), node.opType === "Squeeze");
      if (!shape) ctx.bad(node, `only a ${node.opType.toLowerCase()} of non-batch axes of size 1 is supported (axes ${Array.from(raw).join(",")} of (n, ${v.shape.join(", ")}))`);
      else set({ k: "act", v: sameShape(shape, v.shape) ? v : g.layer(new View(node.name, v.shape, shape), v) });
      return true;
    }
    default:
      return false;
  }
}

/**
 * Transpose, Slice and Split of an activation as index maps over its per-sample dims:
 * the batch axis stays first and whole (perm[0] = 0, no slice or split of axis 0).
 */
function importMove(node: NodeProto, ctx: OpContext, set: (s: Sym) => void): void {
  const v = ctx.act(node, 0);
  if (!v) return;
  const rank = v.shape.length + 1;
  const axisOf = (a: number): number => (a < 0 ? a + rank : a);
  const layer = (name: string, m: { outShape: number[]; idx: Int32Array }): Value => ctx.g.layer(new IndexMap(name, v.shape, m.outShape, m.idx), v);
  const full = (): SliceRange[] => v.shape.map((d) => ({ start: 0, step: 1, count: d }));
  if (node.opType === "Transpose") {
    const perm = ctx.ints(node, "perm") ?? Array.from({ length: rank }, (_, i) => rank - 1 - i);
    if (perm.length !== rank || perm[0] !== 0 || [...perm].sort((a, b) => a - b).some((p, i) => p !== i)) {
      ctx.bad(node, `only a transpose that keeps the batch axis first is supported (perm ${perm.join(",")} of (n, ${v.shape.join(", ")}))`);
      return;
    }
    set({ k: "act", v: layer(node.name, permuteMap(v.shape, perm.slice(1).map((p) => p - 1))) });
    return;
  }
  const inputs = (i: number, attrName: string): number[] | null => {
    if (node.input.length > i && node.input[i] !== "") {
      const c = ctx.cst(node, i);
      const f = c ? numbers(ctx, node, c, attrName) : null;
      return f ? Array.from(f) : null;
    }
    return ctx.ints(node, attrName) ?? null;
  };
  if (node.opType === "Slice") {
    const starts = inputs(1, "starts"), ends = inputs(2, "ends");
    if (!starts || !ends) return;
    const axes = (inputs(3, "axes") ?? starts.map((_, i) => i)).map(axisOf);
    const steps = inputs(4, "steps") ?? starts.map(() => 1);
    const ranges = full();
    if (axes.some((a) => a < 1 || a >= rank) || steps.some((s) => s === 0)) {
      ctx.bad(node, `only a slice of non-batch axes with non-zero steps is supported (axes ${axes.join(",")} of (n, ${v.shape.join(", ")}))`);
      return;
    }
    axes.forEach((a, i) => (ranges[a - 1] = sliceRange(starts[i]!, ends[i]!, steps[i]!, v.shape[a - 1]!)));
    if (ranges.some((r) => r.count === 0)) {
      ctx.bad(node, "the slice is empty");
      return;
    }
    set({ k: "act", v: layer(node.name, sliceMap(v.shape, ranges)) });
    return;
  }
  // Split: sizes from input 1 (opset 13), the `split` attribute, or equal parts.
  const axis = axisOf(ctx.num(node, "axis") ?? 0);
  const size = v.shape[axis - 1];
  const parts = node.output.length;
  const sizes = inputs(1, "split") ?? (size !== undefined && size % parts === 0 ? new Array<number>(parts).fill(size / parts) : null);
  if (size === undefined || axis < 1 || !sizes || sizes.length !== parts || sizes.reduce((a, b) => a + b, 0) !== size || sizes.some((s) => s < 1)) {
    ctx.bad(node, `only a split of a non-batch axis into ${parts} non-empty parts that cover it is supported (axis ${axis} of (n, ${v.shape.join(", ")}), sizes ${sizes?.join(",") ?? "unequal"})`);
    return;
  }
  let start = 0;
  sizes.forEach((count, k) => {
    const ranges = full();
    ranges[axis - 1] = { start, step: 1, count };
    start += count;
    ctx.syms.set(node.output[k]!, { k: "act", v: layer(`${node.name}.${k}`, sliceMap(v.shape, ranges)) });
  });
}

/** The per-sample shape after squeezing (or unsqueezing) ONNX axes of (n, ...shape), or null where the batch axis is touched. */
function view(_node: NodeProto, shape: readonly number[], axes: number[], squeeze: boolean): number[] | null {
  if (squeeze) {
    const rank = shape.length + 1;
    const drop = axes.length === 0 ? shape.map((d, i) => (d === 1 ? i + 1 : -1)).filter((a) => a > 0) : axes.map((a) => (a < 0 ? a + rank : a));
    if (drop.some((a) => a < 1 || a >= rank || shape[a - 1] !== 1)) return null;
    return shape.filter((_, i) => !drop.includes(i + 1));
  }
  const rank = shape.length + 1 + axes.length;
  const add = axes.map((a) => (a < 0 ? a + rank : a));
  if (add.some((a) => a < 1 || a >= rank) || new Set(add).size !== add.length) return null;
  const out: number[] = [];
  let k = 0;
  for (let a = 1; a < rank; a++) out.push(add.includes(a) ? 1 : shape[k++]!);
  return out;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * Dropout(x, ratio, training_mode) (opset ≥ 12) or Dropout(x) with a `ratio`
 * attribute (older): training semantics when syncbn trains, unless the graph's
 * training_mode is the constant false (an eval-mode export: the identity).
 */
function importDropout(node: NodeProto, ctx: OpContext, set: (s: Sym) => void): void {
  const v = ctx.act(node, 0);
  if (!v) return;
  const ratio = scalarInput(ctx, node, 1, "ratio", 0.5);
  if (ratio === null) return;
  if (!(ratio >= 0 && ratio < 1)) {
    ctx.bad(node, `ratio ${ratio} must be in [0, 1)`);
    return;
  }
  let training = true;
  if (node.input.length > 2 && node.input[2] !== "") {
    const c = ctx.cst(node, 2);
    const t = c ? numbers(ctx, node, c, "training_mode") : null;
    if (!t) return;
    training = t[0] !== 0;
  }
  if (node.output.length > 1 && node.output[1] !== "") ctx.syms.set(node.output[1]!, { k: "refused" }); // the mask: nothing may read it
  if (!training) {
    set({ k: "act", v });
    return;
  }
  const index = ctx.dropout.count++;
  set({ k: "act", v: ctx.g.layer(new Dropout(node.name, v.shape, ratio, index, ctx.dropout.clock), v) });
}

/**
 * a ∘ b for activations and constants with numpy broadcasting. A constant of ONNX
 * rank r + 1 (r the activation's per-sample rank) must have a leading 1; a shorter
 * one is padded with leading 1s. Two activations must have the same rank.
 */
function importBinary(node: NodeProto, ctx: OpContext, set: (s: Sym) => void, kind: BinaryKind): void {
  // A pending zero Pad operand is built as its border first (ctx.act).
  const syms = [0, 1].map((i) => (ctx.syms.get(node.input[i] ?? "")?.k === "pad" && ctx.act(node, i), ctx.syms.get(node.input[i] ?? "")));
  const acts = syms.filter((s) => s?.k === "act") as Extract<Sym, { k: "act" }>[];
  if (acts.length === 0 && foldBinary(node, syms, set, kind)) return;
  if (acts.length === 0 || syms.some((s) => s?.k !== "act" && s?.k !== "const")) {
    ctx.bad(node, `only ${kind} of activations and constants (one at least an activation) is supported; inputs "${node.input.join('", "')}"`);
    return;
  }
  const rank = acts[0]!.v.shape.length;
  if (acts.some((a) => a.v.shape.length !== rank)) {
    ctx.bad(node, `${kind} of activations of different ranks (${acts.map((a) => `(${a.v.shape.join(", ")})`).join(", ")}) is not supported`);
    return;
  }
  const operands: Operand[] = [];
  for (const [i, s] of syms.entries()) {
    if (s!.k === "act") {
      operands.push({ shape: s!.v.shape });
      continue;
    }
    const c = s as Const;
    // A parameter and a buffer look alike in the export: training one PyTorch keeps fixed, or the reverse, would be silently wrong.
    if (c.state !== undefined) {
      ctx.bad(node, `input ${i} comes from the model tensor "${c.state}" (an nn.Parameter or a buffer, the export does not say which): arithmetic with it is not supported; write the constant in forward (torch.tensor(...)) or use a layer`);
      return;
    }
    const values = numbers(ctx, node, c, `input ${i}`);
    if (!values) return;
    let dims = c.dims;
    if (dims.length === rank + 1 && dims[0] === 1) dims = dims.slice(1);
    if (dims.length > rank || sizeOf(dims) !== values.length) {
      ctx.bad(node, `constant "${c.name}" of dims [${c.dims.join(", ")}] does not broadcast over (n, ${acts[0]!.v.shape.join(", ")}) without the batch axis`);
      return;
    }
    operands.push({ shape: [...new Array<number>(rank - dims.length).fill(1), ...dims], values });
  }
  const [a, b] = operands as [Operand, Operand];
  if (!a.shape.every((d, i) => d === b.shape[i] || d === 1 || b.shape[i] === 1)) {
    ctx.bad(node, `shapes (n, ${a.shape.join(", ")}) and (n, ${b.shape.join(", ")}) do not broadcast`);
    return;
  }
  const out = a.shape.map((d, i) => Math.max(d, b.shape[i]!));
  if (sizeOf(out) > MAX_VALUE_ELEMENTS) {
    ctx.bad(node, `the broadcast output (${out.join(", ")}) is over the limit of ${MAX_VALUE_ELEMENTS} elements per sample`);
    return;
  }
  const inputs = acts.map((x) => x.v);
  // Two activations of one shape added: the residual join (no copies, the same bits as before).
  if (kind === "Add" && inputs.length === 2 && sameShape(a.shape, b.shape)) set({ k: "act", v: ctx.g.apply(new Add(node.name, a.shape), ...inputs) });
  else set({ k: "act", v: ctx.g.apply(new BroadcastBinary(node.name, kind, a, b), ...inputs) });
}

/**
 * Shape arithmetic on two folded constants (x.view(n, C·H·W) exports Shape, Gather,
 * Mul): elementwise, a one-element side broadcast; integer Div truncates, as ONNX.
 * False (nothing set) when a side is not a folded number list.
 */
function foldBinary(node: NodeProto, syms: (Sym | undefined)[], set: (s: Sym) => void, kind: BinaryKind): boolean {
  const [a, b] = syms as [Sym | undefined, Sym | undefined];
  if (a?.k !== "const" || b?.k !== "const" || !a.data || !b.data) return false;
  const x = a.data, y = b.data;
  if (x.some((v) => v === "n") || y.some((v) => v === "n") || (x.length !== y.length && x.length !== 1 && y.length !== 1)) return false;
  const len = Math.max(x.length, y.length);
  const ints = a.floats === null && b.floats === null;
  const data: number[] = [];
  for (let i = 0; i < len; i++) {
    const p = x[x.length === 1 ? 0 : i] as number, q = y[y.length === 1 ? 0 : i] as number;
    const v = kind === "Add" ? p + q : kind === "Sub" ? p - q : kind === "Mul" ? p * q : p / q;
    data.push(ints && kind === "Div" ? Math.trunc(v) : v);
  }
  const dims = x.length >= y.length ? a.dims : b.dims;
  const state = a.state ?? b.state;
  set({ k: "const", dims, data, floats: ints ? null : Float32Array.from(data), name: node.output[0] ?? "", dataType: ints ? 7 : 1, ...(state ? { state } : {}) });
  return true;
}

/**
 * A Reshape of an activation (n, ...shape) to constant dims d: d[0] must stay the
 * batch (the folded "n", 0, or −1 with the rest holding exactly one sample); 0
 * copies the input's dim, one −1 is inferred. Returns the per-sample shape or null.
 */
export function reshapeTarget(shape: readonly number[], d: readonly (number | "n")[]): number[] | null {
  const size = sizeOf(shape);
  if (d.length < 1) return null;
  const rest = d.slice(1).map((x, i) => (x === 0 ? (shape[i] ?? NaN) : x));
  if (rest.some((x) => x === "n" || (typeof x === "number" && (!Number.isInteger(x) || x < -1)))) return null;
  const dims = rest as number[];
  const free = dims.filter((x) => x === -1).length;
  const known = sizeOf(dims.filter((x) => x !== -1));
  if (d[0] === "n" || d[0] === 0) {
    if (free > 1 || (free === 1 ? known === 0 || size % known !== 0 : known !== size)) return null;
    return dims.map((x) => (x === -1 ? size / known : x));
  }
  if (d[0] === -1 && free === 0 && known === size) return dims;
  return null;
}

/** The value of a Reshape or Flatten to per-sample `shape`: a Flatten for one vector (as before), a View otherwise, v itself if unchanged. */
export function reshaped(g: GraphBuilder, name: string, v: Value, shape: readonly number[]): Value {
  if (sameShape(shape, v.shape)) return v;
  if (shape.length === 1) return g.layer(new Flatten(name, v.shape), v);
  return g.layer(new View(name, v.shape, shape), v);
}

/** v (C, H, W) inside a border of `fill`, pads [top, left, bottom, right]; v itself for none. Throws past the per-value limit. */
export function padded(g: GraphBuilder, name: string, v: Value, pads: readonly number[], fill: number): Value {
  const [c, h, w] = v.shape as [number, number, number];
  // Checked before Pad2d allocates: a Pad node's constant can ask for any border.
  const size = c * (h + pads[0]! + pads[2]!) * (w + pads[1]! + pads[3]!);
  if (!(size <= MAX_VALUE_ELEMENTS)) throw new RangeError(`padding ${pads.join(",")} makes (${c}, ${h}, ${w}) over the limit of ${MAX_VALUE_ELEMENTS} elements per sample`);
  return pads.some((p) => p !== 0) ? g.layer(new Pad2d(name, c, h, w, pads as Pads, fill), v) : v;
}

/**
 * A pool of v after the graph's zero Pad node (padBefore) and with the pool's own
 * pads: −∞ around a max pool, zeros around an average pool that counts them
 * (count_include_pad=1, or a Pad node: PyTorch's default), or the average over the
 * in-image cells (count_include_pad=0, PyTorch's count_include_pad=False).
 */
export function pooled(g: GraphBuilder, node: NodeProto, v: Value, padBefore: readonly number[], own: readonly number[], countIncludePad: boolean, k: number, s: number): Value {
  const max = node.opType === "MaxPool";
  const pad = (x: Value, pads: readonly number[], fill: number, suffix: string): Value => padded(g, `${node.name}${suffix}`, x, pads, fill);
  v = pad(v, padBefore, 0, ".pad");
  const [c, h, w] = v.shape as [number, number, number];
  if (!max && !countIncludePad && own.some((p) => p !== 0)) return g.layer(new AvgPool2dExclusive(node.name, c, h, w, k, s, own as Pads), v);
  if (max && int(node, "ceil_mode", 0) !== 0) {
    // PyTorch's ceil_mode: ⌈(H + pads − k)/s⌉ + 1 windows, less one if the last would start past the input and its
    // first pad; the windows hanging over the far edge see a −∞ border, so the floor-mode pool over it is the same.
    const extra = (size: number, p0: number, p1: number): number => {
      let out = Math.ceil((size + p0 + p1 - k) / s) + 1;
      if ((out - 1) * s >= size + p0) out--;
      return Math.max(0, (out - 1) * s + k - (size + p0 + p1));
    };
    own = [own[0]!, own[1]!, own[2]! + extra(h, own[0]!, own[2]!), own[3]! + extra(w, own[1]!, own[3]!)];
  }
  v = pad(v, own, max ? -Infinity : 0, ".pads");
  const [, ph, pw] = v.shape as [number, number, number];
  return g.layer(max ? new MaxPool2d(node.name, c, ph, pw, k, s) : new AvgPool2d(node.name, c, ph, pw, k, s), v);
}
