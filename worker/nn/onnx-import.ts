// The ONNX importer: a PyTorch training-mode export turned into a graph of the
// runtime's existing ops via the GraphBuilder (BatchNormalization → the run's norm
// layer; initializers → starting tensors by state_dict name). An adapter: it never
// reaches into ops, and refuses what it cannot map, one line per problem. Decoding
// the file and its hash: onnx-file.ts; the ops common CNNs add: onnx-ops.ts.

import type { AttributeProto, ModelProto, NodeProto, TensorProto } from "onnx-buf";
import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { Rng } from "../../shared/rng.js";
import { GlobalAvgPool } from "./avgpool.js";
import { Conv2d, convGeometry } from "./conv2d.js";
import type { DropoutClock } from "./dropout.js";
import { GraphBuilder, type Graph, type Value } from "./graph.js";
import { GroupedConv2d } from "./grouped-conv.js";
import { sizeOf } from "./layer.js";
import { View } from "./broadcast.js";
import { EXPORT_LINE } from "./onnx-file.js";
import { foldShape } from "./onnx-fold.js";
import { EXTRA_OPS, importExtraOp, padded, pooled, reshaped, reshapeTarget, type OpContext } from "./onnx-ops.js";
import { FLOAT_TYPES, MAX_FOLDED_ELEMENTS, MAX_MODEL_ELEMENTS, MAX_VALUE_ELEMENTS, tensorElements, tensorFloats, tensorInts, TensorError, typeName } from "./onnx-tensor.js";
import { Linear } from "./linear.js";
import { ReLU } from "./relu.js";

export const SUPPORTED_OPS =
  "Conv (grouped and depthwise too), BatchNormalization, Relu, PRelu, Sigmoid, Tanh, Softplus, Elu, Erf, HardSigmoid, HardSwish, LeakyRelu, Clip, Dropout, MaxPool, AveragePool (padded too), GlobalAveragePool, " +
  "ReduceMean (axes 2,3), Add/Sub/Mul/Div (broadcasting), Concat, Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Slice, Split, Gemm, MatMul+Add, " +
  "Identity, Constant, Pad (zeros), and shape arithmetic (Shape/Gather/Cast/ConstantOfShape…) that folds to constants (docs/onnx-ops.md)";

export { decodeOnnx, EXPORT_LINE, onnxFileHash, onnxHash } from "./onnx-file.js";

/**
 * Appends the run's norm layer (index = its order among BN nodes) for BatchNormalization node `name`, or returns v
 * for `none`: with the node's epsilon, its `momentum` attribute (ONNX's: the old value's weight, 1 − PyTorch's), and
 * whether it is affine (false: γ = 1 and β = 0 are constants, PyTorch's affine=False).
 */
export type OnnxNormFactory = (g: GraphBuilder, name: string, v: Value, eps: number, onnxMomentum: number, affine: boolean) => Value;

export interface OnnxModel {
  graph: Graph;
  /** Initializers by name (float32 tensors): the starting weights and running statistics. */
  initial: Map<string, Float32Array>;
  batchNorms: number;
}

/**
 * A per-sample activation, a pending zero pad, or a constant (ints may hold "n", the
 * batch size; data is null for a constant too large or of a type shape arithmetic
 * does not fold; floats is null unless it is FLOAT, DOUBLE or FLOAT16).
 */
export type Sym =
  | { k: "act"; v: Value }
  | { k: "pad"; v: Value; pads: number[] }
  | { k: "matmul"; v: Value; w: Float32Array; inF: number; outF: number; node: string }
  /** state: the state_dict initializer (parameter or buffer) the values come from, through any folding. */
  | { k: "const"; dims: number[]; data: (number | "n")[] | null; floats: Float32Array | null; name: string; dataType: number; state?: string }
  /** The output of a node already refused: whatever reads it is skipped, not refused again. */
  | { k: "refused" };

export const KNOWN_OPS = new Set([
  "Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Add", "Flatten", "Gemm", "MatMul", "Identity",
  "Constant", "Pad", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Slice", "Cast", "ConstantOfShape", "Transpose", ...EXTRA_OPS,
]);

/** Where an eval-only import (a preflight, a weights check) draws no masks: rank 0, step 0. */
const NO_DROPOUT_CLOCK: DropoutClock = { seed: 0, firstRank: 0, ranks: 1, step: () => 0 };

/** A constant's values, sizes checked (onnx-tensor.ts); throws TensorError naming `what`. */
function constOf(t: TensorProto, name: string, what: string): Sym {
  const floats = tensorFloats(t, what);
  const data = floats ? (floats.length <= MAX_FOLDED_ELEMENTS ? Array.from(floats) : null) : tensorInts(t, what);
  return { k: "const", dims: t.dims.map(Number), data, floats, name, dataType: t.dataType };
}

export function attr(node: NodeProto, name: string): AttributeProto | undefined {
  return node.attribute.find((a) => a.name === name);
}
function ints(node: NodeProto, name: string, dflt: number[]): number[] {
  const a = attr(node, name);
  return a ? a.ints.map(Number) : dflt;
}
export function int(node: NodeProto, name: string, dflt: number): number {
  const a = attr(node, name);
  return a ? Number(a.i) : dflt;
}
/** A FLOAT (type 1) or INT attribute's value, or undefined. */
function num(node: NodeProto, name: string): number | undefined {
  const a = attr(node, name);
  return a ? (a.type === 1 ? a.f : Number(a.i)) : undefined;
}
function float(node: NodeProto, name: string, dflt: number): number {
  const a = attr(node, name);
  return a ? a.f : dflt;
}
/** The layer name of a state_dict tensor: "layer1.0.conv1.weight" → "layer1.0.conv1". */
function owner(name: string, suffix: string): string {
  return name.endsWith(suffix) ? name.slice(0, -suffix.length) : name;
}

/** Per-sample dims of a graph input or output (the batch dim dropped), or null where not fixed. */
function sampleDims(m: ModelProto, which: "input" | "output", index: number): number[] | null {
  const info = m.graph![which][index];
  const t = info?.type?.value;
  if (!t || t.case !== "tensorType" || !t.value.shape) return null;
  const dims = t.value.shape.dim.slice(1).map((d) => (d.value.case === "dimValue" ? Number(d.value.value) : NaN));
  return dims.some((d) => !Number.isFinite(d)) ? null : dims;
}

/**
 * Builds the graph of `m` for samples of inShape and `classes` outputs, with `norm`
 * at every BatchNormalization. Throws one BadConfig error with one line per problem.
 */
export function importOnnx(
  m: ModelProto, path: string, inShape: readonly number[], classes: number, normIsNone: boolean, norm: OnnxNormFactory, dropoutClock: DropoutClock = NO_DROPOUT_CLOCK,
): OnnxModel {
  const graphProto = m.graph!;
  const problems: string[] = [];
  const bad = (node: NodeProto | null, what: string): void => {
    problems.push(node ? `--model ${path}: node "${node.name}" (${node.opType}): ${what}` : `--model ${path}: ${what}`);
  };
  const inits = new Map(graphProto.initializer.map((t) => [t.name, t]));
  const realInputs = graphProto.input.filter((i) => !inits.has(i.name));
  if (realInputs.length !== 1) bad(null, `the graph has ${realInputs.length} inputs (${realInputs.map((i) => i.name).join(", ")}); syncbn feeds exactly one image batch`);
  if (graphProto.output.length !== 1) bad(null, `the graph has ${graphProto.output.length} outputs; syncbn trains exactly one logits output`);
  const want = sampleDims(m, "input", graphProto.input.indexOf(realInputs[0]!));
  if (realInputs.length === 1 && want && (want.length !== inShape.length || want.some((d, i) => d !== inShape[i]))) {
    bad(null, `the graph's input is (${want.join(", ")}) per sample but the data's samples are (${inShape.join(", ")}); export with torch.randn(2, ${inShape.join(", ")})`);
  }
  const outDims = sampleDims(m, "output", 0);
  if (outDims && (outDims.length !== 1 || outDims[0] !== classes)) {
    bad(null, `the graph's output is (${outDims.join(", ")}) per sample but the data has ${classes} classes; the last layer must have ${classes} outputs`);
  }
  const bnCount = graphProto.node.filter((n) => n.opType === "BatchNormalization").length;
  if (bnCount === 0 && !normIsNone) {
    bad(null, `the graph has no BatchNormalization node (an eval-mode export folds BN into the convolutions); export in training mode: ${EXPORT_LINE}`);
  }
  // Op types and attribute values first, over every node: each problem gets its own line.
  for (const node of graphProto.node) {
    if ((node.opType === "Softmax" || node.opType === "LogSoftmax") && node.domain === "") bad(node, "unsupported op: syncbn's loss applies the softmax itself; end the model with the logits (no Softmax in the head)");
    else if (!KNOWN_OPS.has(node.opType) || node.domain !== "") bad(node, `unsupported op; supported ops: ${SUPPORTED_OPS}`);
    else if (node.opType === "Conv" || node.opType === "MaxPool" || node.opType === "AveragePool") {
      const dil = ints(node, "dilations", [1, 1]);
      if (dil.some((d) => d !== 1)) bad(node, `dilation ${dil.join("×")} is not supported (dilation 1 only)`);
      const group = int(node, "group", 1), cout = Number(inits.get(node.input[1] ?? "")?.dims[0] ?? 1);
      if (node.opType !== "Conv" && group !== 1) bad(node, `group ${group} is not supported (groups=1 only)`);
      else if (!(group >= 1 && cout % group === 0)) bad(node, `group ${group} does not divide the weight's ${cout} output channels`);
      if (node.opType !== "MaxPool" && int(node, "ceil_mode", 0) !== 0) bad(node, "ceil_mode=1 is not supported (MaxPool only)");
      const autoPad = attr(node, "auto_pad");
      if (autoPad && new TextDecoder().decode(autoPad.s) !== "NOTSET") bad(node, "auto_pad is not supported (explicit pads only)");
    } else if (node.opType === "Gemm" && (int(node, "transB", 0) !== 1 || int(node, "transA", 0) !== 0 || float(node, "alpha", 1) !== 1 || float(node, "beta", 1) !== 1)) {
      bad(node, "only Gemm with transB=1, transA=0, alpha=beta=1 (nn.Linear) is supported");
    }
  }
  // Sizes before values: every tensor's dims and the model's total are checked before anything is read or allocated.
  let elements = 0;
  const tensors = [
    ...graphProto.initializer.map((t) => ({ t, what: `initializer "${t.name}"` })),
    ...graphProto.node.flatMap((n) => (n.opType === "Constant" && attr(n, "value")?.t ? [{ t: attr(n, "value")!.t!, what: `node "${n.name}" (Constant) value` }] : [])),
  ];
  for (const { t, what } of tensors) {
    try {
      elements += tensorElements(t, what);
    } catch (e) {
      if (!(e instanceof TensorError)) throw e;
      bad(null, e.message);
    }
  }
  if (elements > MAX_MODEL_ELEMENTS) bad(null, `the initializers and constants hold ${elements} elements, over the limit of ${MAX_MODEL_ELEMENTS} per model`);
  if (problems.length > 0) throw new SyncbnError(ErrorCode.BadConfig, problems.join("\n"));

  const g = new GraphBuilder(inShape);
  const rng = new Rng(0); // the layers' own init is overwritten by the initializers
  const syms = new Map<string, Sym>();
  for (const [name, t] of inits) {
    try {
      syms.set(name, { ...constOf(t, name, `initializer "${name}"`), ...(name.startsWith("onnx::") ? {} : { state: name }) });
    } catch (e) {
      if (!(e instanceof TensorError)) throw e;
      bad(null, e.message);
      syms.set(name, { k: "refused" });
    }
  }
  syms.set(realInputs[0]!.name, { k: "act", v: g.input });
  /** Every layer tensor by state_dict name, set from the constant the layer was built from: none is left at its random init. */
  const initial = new Map<string, Float32Array>();
  /** A constant's float32 values for a layer tensor, or a refusal naming it and its type. */
  const floatsOf = (node: NodeProto, c: Extract<Sym, { k: "const" }>, role: string, length: number): Float32Array | null => {
    if (!c.floats) bad(node, `${role} "${c.name}" is ${typeName(c.dataType)}; it must be ${FLOAT_TYPES}`);
    else if (c.floats.length !== length) bad(node, `${role} "${c.name}" has ${c.floats.length} values (dims [${c.dims.join(", ")}]), the layer needs ${length}`);
    else return c.floats;
    return null;
  };

  const act = (node: NodeProto, i: number): Value | null => {
    const s = syms.get(node.input[i] ?? "");
    if (s?.k === "act") return s.v;
    // A zero Pad read by anything but a Conv or pool: the border itself, built once for all its readers.
    if (s?.k === "pad") return (syms.set(node.input[i]!, { k: "act", v: padded(g, `${node.input[i]}.pad`, s.v, s.pads, 0) }).get(node.input[i]!) as { v: Value }).v;
    if (s?.k === "matmul") bad(node, "a MatMul must be followed by an Add of its bias (nn.Linear)");
    else bad(node, `input ${i} ("${node.input[i]}") is not an activation syncbn can compute; supported ops: ${SUPPORTED_OPS}`);
    return null;
  };
  const cst = (node: NodeProto, i: number): Extract<Sym, { k: "const" }> | null => {
    const s = syms.get(node.input[i] ?? "");
    if (s?.k === "const") return s;
    bad(node, `input ${i} ("${node.input[i]}") must be a constant (a shape that does not fold to a flatten is not supported); supported ops: ${SUPPORTED_OPS}`);
    return null;
  };
  const spatial = (v: Value, node: NodeProto): [number, number, number] | null => {
    if (v.shape.length === 3) return v.shape as [number, number, number];
    bad(node, `needs a (C, H, W) input, got (${v.shape.join(", ")})`);
    return null;
  };
  /** The zero padding before a pool or conv input: [top, left, bottom, right] from a folded Pad, or null for none. */
  const inputOf = (node: NodeProto): { v: Value; pads: number[] } | null => {
    const s = syms.get(node.input[0] ?? "");
    if (s?.k === "pad") return { v: s.v, pads: s.pads };
    const v = act(node, 0);
    return v ? { v, pads: [0, 0, 0, 0] } : null;
  };
  const ctx: OpContext = { g, syms, bad, act, cst, num, ints: (node, name) => attr(node, name)?.ints.map(Number),
    initial, dropout: { clock: dropoutClock, count: 0 } };

  let bnIndex = 0;
  for (const node of graphProto.node) {
    const out = node.output[0] ?? "";
    const set = (s: Sym): void => void syms.set(out, s);
    const before = problems.length;
    if (node.input.some((i) => syms.get(i)?.k === "refused")) {
      for (const o of node.output) syms.set(o, { k: "refused" });
      continue;
    }
    try {
      switch (node.opType) {
        case "Identity": {
          const s = syms.get(node.input[0] ?? "");
          if (s) set(s);
          else bad(node, `unknown input "${node.input[0]}"`);
          break;
        }
        case "Constant": {
          const t = attr(node, "value")?.t;
          if (t) set(constOf(t, out, `node "${node.name}" (Constant) value`));
          else bad(node, "only a tensor `value` is supported");
          break;
        }
        case "Relu": {
          const v = act(node, 0);
          if (v) set({ k: "act", v: g.layer(new ReLU(node.name, v.shape), v) });
          break;
        }
        case "Add": {
          const a = syms.get(node.input[0] ?? "");
          const b = syms.get(node.input[1] ?? "");
          if (a?.k === "matmul" && b?.k === "const") {
            const name = owner(b.name, ".bias");
            const bias = floatsOf(node, b, "bias", a.outF);
            if (!bias) break;
            initial.set(`${name}.bias`, bias);
            const lin = new Linear(name, a.inF, a.outF, rng);
            const wt = new Float32Array(a.inF * a.outF); // ONNX holds W as (in, out); PyTorch as (out, in)
            for (let i = 0; i < a.inF; i++) for (let o = 0; o < a.outF; o++) wt[o * a.inF + i] = a.w[i * a.outF + o]!;
            initial.set(`${name}.weight`, wt);
            set({ k: "act", v: g.layer(lin, a.v) });
          } else {
            importExtraOp(node, ctx, set);
          }
          break;
        }
        case "Conv": {
          const x = inputOf(node);
          const w = cst(node, 1);
          if (!x || !w) break;
          const sp = spatial(x.v, node);
          if (!sp) break;
          const [cin, h, wd] = sp;
          if (w.dims.length !== 4) {
            bad(node, `weight "${w.name}" has dims [${w.dims.join(", ")}]; a Conv weight is (cout, cin, k, k)`);
            break;
          }
          const k = ints(node, "kernel_shape", w.dims.slice(2));
          const strides = ints(node, "strides", [1, 1]);
          const pads = ints(node, "pads", [0, 0, 0, 0]).map((p, i) => p + x.pads[i]!);
          if (ints(node, "dilations", [1, 1]).some((d) => d !== 1)) bad(node, `dilation ${ints(node, "dilations", []).join("×")} is not supported (dilation 1 only)`);
          const groups = int(node, "group", 1);
          if (!(groups >= 1 && cin % groups === 0 && w.dims[0]! % groups === 0)) bad(node, `group ${groups} does not divide the ${cin} input and ${w.dims[0]} output channels`);
          if (k[0] !== k[1] || strides[0] !== strides[1]) bad(node, `only square kernels and equal strides are supported (kernel ${k.join("×")}, strides ${strides.join("×")})`);
          if (w.dims[1]! * groups !== cin) bad(node, `weight expects ${w.dims[1]}×${groups} (group) input channels, the input has ${cin}`);
          if (k.length !== 2 || k[0] !== w.dims[2] || k[1] !== w.dims[3]) bad(node, `kernel_shape ${k.join("×")} is not the weight's ${w.dims.slice(2).join("×")}`);
          if (attr(node, "auto_pad") && new TextDecoder().decode(attr(node, "auto_pad")!.s) !== "NOTSET") bad(node, "auto_pad is not supported");
          if (problems.length > before) break;
          const name = owner(w.name, ".weight");
          const cout = w.dims[0]!;
          // Asymmetric padding (nn.ZeroPad2d, TensorFlow's "same"): a zero border, then an unpadded conv.
          const asym = pads.some((p) => p !== pads[0]);
          const input = asym ? padded(g, `${node.name}.pad`, x.v, pads, 0) : x.v;
          const [ph, pw, pad] = asym ? [input.shape[1]!, input.shape[2]!, 0] : [h, wd, pads[0]!];
          const geo = convGeometry(name, cin, cout, k[0]!, strides[0]!, pad, ph, pw);
          // Padding can grow the output and its unrolled input past any bound: checked before the layer allocates them.
          const plane = geo.outH * geo.outW;
          const rows = (cin / groups) * k[0]! * k[0]!;
          if (Math.max(cout, rows) * plane > MAX_VALUE_ELEMENTS) {
            bad(node, `output ${cout}×${geo.outH}×${geo.outW} (unrolled input ${rows}×${plane}) is over the limit of ${MAX_VALUE_ELEMENTS} elements per sample`);
            break;
          }
          const weight = floatsOf(node, w, "weight", w.floats?.length ?? 0);
          const hasBias = node.input.length > 2 && node.input[2] !== "";
          const b = hasBias ? cst(node, 2) : null;
          const bias = b ? floatsOf(node, b, "bias", cout) : null;
          if (!weight || (hasBias && !bias)) break;
          initial.set(`${name}.weight`, weight);
          if (bias) initial.set(`${name}.bias`, bias);
          const conv = groups === 1
            ? new Conv2d(name, cin, cout, k[0]!, strides[0]!, pad, ph, pw, rng, undefined, hasBias)
            : new GroupedConv2d(name, cin, cout, groups, k[0]!, strides[0]!, pad, ph, pw, rng, undefined, hasBias);
          set({ k: "act", v: g.layer(conv, input) });
          break;
        }
        case "BatchNormalization": {
          const v = act(node, 0);
          const scale = cst(node, 1);
          if (!v || !scale) break;
          for (let i = 2; i < 5; i++) cst(node, i);
          if (problems.length > before) break;
          // BatchNorm(affine=False): the export feeds γ = 1 and β = 0 from Constant nodes, not from initializers, and
          // PyTorch has neither as a parameter: the layer is named after its running mean and keeps them fixed.
          const constantScaleAndBias = !inits.has(node.input[1]!) && !inits.has(node.input[2] ?? "") && inits.has(node.input[3] ?? "");
          const affine = !constantScaleAndBias;
          const name = affine ? owner(scale.name, ".weight") : owner(cst(node, 3)!.name, ".running_mean");
          const channels = v.shape[0]!;
          // Under the norm layer's names (PyTorch's), whatever the initializers are called.
          const stats = ([[1, ".weight"], [2, ".bias"], [3, ".running_mean"], [4, ".running_var"]] as const).map(([i, suffix]) => {
            const f = floatsOf(node, cst(node, i)!, suffix.slice(1), channels);
            if (f && (affine || i > 2)) initial.set(name + suffix, f);
            return f;
          });
          if (!affine && ((stats[0] && stats[0].some((x) => x !== 1)) || (stats[1] && stats[1].some((x) => x !== 0)))) {
            bad(node, `scale and bias are constants (a BatchNorm with affine=False) but not 1 and 0: only affine=False's fixed γ = 1, β = 0 is supported`);
          }
          const negative = stats[3]?.findIndex((x) => x < 0) ?? -1;
          if (negative >= 0) bad(node, `running_var "${node.input[4]}"[${negative}] is ${stats[3]![negative]}; a variance must be ≥ 0`);
          const eps = float(node, "epsilon", 1e-5);
          if (!(Number.isFinite(eps) && eps > 0)) bad(node, `epsilon ${eps} must be a finite number > 0`);
          // ONNX's default 0.9 is PyTorch's 0.1; torch.onnx.export writes 1 − the module's momentum.
          const momentum = float(node, "momentum", 0.9);
          if (!(momentum >= 0 && momentum <= 1)) bad(node, `momentum ${momentum} must be in [0, 1]`);
          if (problems.length > before) break;
          bnIndex++;
          set({ k: "act", v: norm(g, name, v, eps, momentum, affine) });
          break;
        }
        case "MaxPool":
        case "AveragePool": {
          const x = inputOf(node);
          if (!x) break;
          const sp = spatial(x.v, node);
          if (!sp) break;
          const k = ints(node, "kernel_shape", []);
          const strides = ints(node, "strides", k);
          const own = ints(node, "pads", [0, 0, 0, 0]); // [top, left, bottom, right], as x.pads
          if (k.length !== 2 || k[0] !== k[1] || strides[0] !== strides[1]) bad(node, `only square windows with equal strides are supported (kernel ${k.join("×")}, strides ${strides.join("×")})`);
          if (own.length !== 4 || own.some((p) => !(p >= 0 && p < k[0]!))) bad(node, `pads ${own.join(",")} must be 4 values in [0, kernel)`);
          if (ints(node, "dilations", [1, 1]).some((d) => d !== 1)) bad(node, "dilation is not supported");
          if (problems.length > before) break;
          set({ k: "act", v: pooled(g, node, x.v, x.pads, own, int(node, "count_include_pad", 0) !== 0, k[0]!, strides[0]!) });
          break;
        }
        case "Pad": {
          const v = act(node, 0);
          const p = node.input.length > 1 ? cst(node, 1) : null;
          const mode = attr(node, "mode") ? new TextDecoder().decode(attr(node, "mode")!.s) : "constant";
          const value = node.input.length > 2 && node.input[2] !== "" ? cst(node, 2) : null;
          if (!v || (node.input.length > 1 && !p)) break;
          const pads = p ? (p.data ?? []).map(Number) : ints(node, "pads", []);
          if (mode !== "constant" || (value && (value.data === null || value.data.some((d) => d !== 0)))) bad(node, "only zero padding is supported");
          // (n, C, H, W) pads: [n0, c0, h0, w0, n1, c1, h1, w1]
          if (pads.length !== 8 || pads[0] !== 0 || pads[1] !== 0 || pads[4] !== 0 || pads[5] !== 0) bad(node, `only spatial padding of a (C, H, W) value is supported, got pads ${pads.join(",")}`);
          if (problems.length > before) break;
          set({ k: "pad", v, pads: [pads[2]!, pads[3]!, pads[6]!, pads[7]!] });
          break;
        }
        case "GlobalAveragePool":
        case "ReduceMean": {
          const v = act(node, 0);
          if (!v) break;
          const sp = spatial(v, node);
          if (!sp) break;
          const keep = int(node, "keepdims", 1);
          if (node.opType === "ReduceMean") {
            const axes = node.input.length > 1 ? (cst(node, 1)?.data ?? []) : ints(node, "axes", []);
            const norm = axes.map((a) => (Number(a) < 0 ? Number(a) + 4 : Number(a))).sort();
            if (norm.join() !== "2,3") bad(node, `only the mean over the spatial axes (2, 3) is supported, got axes ${axes.join(",")}`);
          }
          if (problems.length > before) break;
          const [c, h, w] = sp;
          // (C, 1, 1) with keepdims (GlobalAveragePool always): a View of the pool's (C), no copy.
          const mean = g.layer(new GlobalAvgPool(node.name, c, h, w), v);
          set({ k: "act", v: node.opType === "GlobalAveragePool" || keep !== 0 ? g.layer(new View(`${node.name}.keepdims`, [c], [c, 1, 1]), mean) : mean });
          break;
        }
        case "Flatten":
        case "Reshape": {
          if (node.opType === "Reshape" && syms.get(node.input[0] ?? "")?.k === "const") {
            foldShape(node, syms, bad); // shape arithmetic (F.pad's pads)
            break;
          }
          const v = act(node, 0);
          if (!v) break;
          const axis = int(node, "axis", 1);
          let target: number[] | null = node.opType === "Flatten" && (axis === 1 || axis === -v.shape.length) ? [sizeOf(v.shape)] : null;
          if (node.opType === "Reshape") {
            const shape = cst(node, 1);
            if (!shape) break;
            target = int(node, "allowzero", 0) === 0 ? reshapeTarget(v.shape, shape.data ?? []) : null;
          }
          if (!target) {
            bad(node, `only a reshape that keeps the batch axis is supported (x.view(n, -1), torch.flatten(x, 1), x.view(n, C, 1, 1)); supported ops: ${SUPPORTED_OPS}`);
            break;
          }
          set({ k: "act", v: reshaped(g, node.name, v, target) });
          break;
        }
        case "Gemm": {
          const v = act(node, 0);
          const w = cst(node, 1);
          if (!v || !w) break;
          if (int(node, "transB", 0) !== 1 || int(node, "transA", 0) !== 0 || float(node, "alpha", 1) !== 1 || float(node, "beta", 1) !== 1) {
            bad(node, "only Gemm with transB=1, transA=0, alpha=beta=1 (nn.Linear) is supported");
            break;
          }
          if (v.shape.length !== 1 || w.dims.length !== 2 || w.dims[1] !== v.shape[0]) {
            bad(node, `expects (${w.dims[1]}) features per sample, got (${v.shape.join(", ")}) (weight dims [${w.dims.join(", ")}])`);
            break;
          }
          const name = owner(w.name, ".weight");
          const b = node.input.length > 2 ? cst(node, 2) : null;
          if (!b) {
            bad(node, "a Gemm without bias is not supported (nn.Linear(bias=False))");
            break;
          }
          const weight = floatsOf(node, w, "weight", w.dims[0]! * w.dims[1]!);
          const bias = floatsOf(node, b, "bias", w.dims[0]!);
          if (!weight || !bias) break;
          initial.set(`${name}.weight`, weight);
          initial.set(`${name}.bias`, bias);
          set({ k: "act", v: g.layer(new Linear(name, w.dims[1]!, w.dims[0]!, rng), v) });
          break;
        }
        case "MatMul": {
          const v = act(node, 0);
          const w = cst(node, 1);
          if (!v || !w) break;
          if (v.shape.length !== 1 || w.dims.length !== 2 || w.dims[0] !== v.shape[0]) {
            bad(node, `expects (n, ${w.dims[0]}) × (${w.dims.join(", ")}), got (n, ${v.shape.join(", ")})`);
            break;
          }
          const weight = floatsOf(node, w, "weight", w.dims[0]! * w.dims[1]!);
          if (weight) set({ k: "matmul", v, w: weight, inF: w.dims[0]!, outF: w.dims[1]!, node: node.name });
          break;
        }
        default:
          // Concat, Squeeze, Unsqueeze of constants are shape arithmetic; of activations, graph ops.
          if ((!["Concat", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split"].includes(node.opType) || node.input.some((i) => syms.get(i)?.k === "act")) && importExtraOp(node, ctx, set)) break;
          foldShape(node, syms, bad);
      }
    } catch (e) {
      bad(node, (e as Error).message.split("\n")[0]!);
    }
    if (problems.length > before) for (const o of node.output) syms.set(o, { k: "refused" });
  }
  const last = syms.get(graphProto.output[0]?.name ?? "");
  if (problems.length === 0 && last?.k !== "act") bad(null, `the output "${graphProto.output[0]?.name}" is not computed by supported ops; supported ops: ${SUPPORTED_OPS}`);
  if (problems.length > 0) throw new SyncbnError(ErrorCode.BadConfig, problems.join("\n"));
  const y = (last as Extract<Sym, { k: "act" }>).v;
  if (y.shape.length !== 1 || y.shape[0] !== classes) {
    throw new SyncbnError(ErrorCode.BadConfig, `--model ${path}: the graph computes (${y.shape.join(", ")}) per sample but the data has ${classes} classes`);
  }
  const graph = g.finish(y);
  // A module called twice shares its tensors in PyTorch; here each node would train its own copy.
  const names = graph.ops.flatMap((op) => op.params().map((p) => p.name));
  const twice = [...new Set(names.filter((n, i) => names.indexOf(n) !== i))];
  if (twice.length > 0) throw new SyncbnError(ErrorCode.BadConfig, `--model ${path}: ${twice.join(", ")} ${twice.length > 1 ? "are" : "is"} used by several nodes (a module called twice): shared weights are not supported`);
  return { graph, initial, batchNorms: bnIndex };
}
