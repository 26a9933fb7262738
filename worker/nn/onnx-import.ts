// The ONNX importer: a PyTorch training-mode export turned into a graph of the
// runtime's existing ops via the GraphBuilder (BatchNormalization → the run's norm
// layer; initializers → starting tensors by state_dict name). An adapter: it never
// reaches into ops, and refuses what it cannot map, one line per problem. Parsed
// with onnx-buf (generated schema on @bufbuild/protobuf; `onnx-proto` fails as ESM on Node 20).

import { createHash } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema, type AttributeProto, type ModelProto, type NodeProto, type TensorProto } from "onnx-buf";
import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { MAX_MODEL_FILE_BYTES, readInputFile } from "../input-file.js";
import { Rng } from "../../shared/rng.js";
import { AvgPool2d, GlobalAvgPool } from "./avgpool.js";
import { Conv2d, convGeometry } from "./conv2d.js";
import { Flatten } from "./flatten.js";
import { Add, GraphBuilder, type Graph, type Value } from "./graph.js";
import { sizeOf } from "./layer.js";
import { foldShape } from "./onnx-fold.js";
import { FLOAT_TYPES, MAX_FOLDED_ELEMENTS, MAX_MODEL_ELEMENTS, MAX_VALUE_ELEMENTS, tensorElements, tensorFloats, tensorInts, TensorError, typeName } from "./onnx-tensor.js";
import { Linear } from "./linear.js";
import { MaxPool2d } from "./maxpool.js";
import { ReLU } from "./relu.js";

export const SUPPORTED_OPS =
  "Conv, BatchNormalization, Relu, MaxPool, AveragePool, GlobalAveragePool, ReduceMean (axes 2,3), Add, Flatten, Gemm, MatMul+Add, " +
  "Identity, Constant, Pad (zeros, before a pool or conv), and Shape/Gather/Unsqueeze/Concat/Slice/Cast/ConstantOfShape/Reshape that fold to a flatten";

/** The export line docs/models.md gives, quoted where a graph cannot have come from it. */
export const EXPORT_LINE =
  'torch.onnx.export(copy.deepcopy(model), torch.randn(2, C, H, W), "model.onnx", training=torch.onnx.TrainingMode.TRAINING, ' +
  'do_constant_folding=False, input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})';

/** A 16-hex-digit SHA-256 prefix of the file: equal iff the graphs (and initial weights) agree. */
export function onnxHash(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex").slice(0, 16);
}

const fileHashes = new Map<string, string>();
/** onnxHash of the file at path (read once per process), or "unreadable" (the import then refuses it with the reason). */
export function onnxFileHash(path: string): string {
  let h = fileHashes.get(path);
  if (h === undefined) {
    try {
      h = onnxHash(readInputFile(path, MAX_MODEL_FILE_BYTES));
    } catch {
      h = "unreadable";
    }
    fileHashes.set(path, h);
  }
  return h;
}

/** Appends the run's norm layer (index = its order among BN nodes) with the node's eps, or returns v for `none`. */
export type OnnxNormFactory = (g: GraphBuilder, name: string, v: Value, eps: number) => Value;

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
  | { k: "const"; dims: number[]; data: (number | "n")[] | null; floats: Float32Array | null; name: string; dataType: number }
  /** The output of a node already refused: whatever reads it is skipped, not refused again. */
  | { k: "refused" };

const KNOWN_OPS = new Set([
  "Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Add", "Flatten", "Gemm", "MatMul", "Identity",
  "Constant", "Pad", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Slice", "Cast", "ConstantOfShape",
]);

/** Decodes the model, or a one-line refusal for bytes that are not ONNX or are cut short. */
export function decodeOnnx(bytes: Uint8Array, path: string): ModelProto {
  let m: ModelProto;
  try {
    m = fromBinary(ModelProtoSchema, bytes);
  } catch (e) {
    const truncated = /premature|eof|out of range|index out of/i.test(String(e));
    throw new SyncbnError(ErrorCode.BadConfig, `--model ${path}: ${truncated ? "truncated ONNX file" : "not an ONNX file"} (${(e as Error).message}); export it with ${EXPORT_LINE}`);
  }
  if (!m.graph || m.graph.node.length === 0 || m.irVersion === 0n) {
    throw new SyncbnError(ErrorCode.BadConfig, `--model ${path}: not an ONNX file (no graph); export it with ${EXPORT_LINE}`);
  }
  return m;
}

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
export function importOnnx(m: ModelProto, path: string, inShape: readonly number[], classes: number, normIsNone: boolean, norm: OnnxNormFactory): OnnxModel {
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
    if (!KNOWN_OPS.has(node.opType) || node.domain !== "") bad(node, `unsupported op; supported ops: ${SUPPORTED_OPS}`);
    else if (node.opType === "Conv" || node.opType === "MaxPool" || node.opType === "AveragePool") {
      const dil = ints(node, "dilations", [1, 1]);
      if (dil.some((d) => d !== 1)) bad(node, `dilation ${dil.join("×")} is not supported (dilation 1 only)`);
      if (int(node, "group", 1) !== 1) bad(node, `group ${int(node, "group", 1)} is not supported (groups=1 only)`);
      if (int(node, "ceil_mode", 0) !== 0) bad(node, "ceil_mode=1 is not supported");
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
      syms.set(name, constOf(t, name, `initializer "${name}"`));
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
          } else if (a?.k === "act" && b?.k === "act" && a.v.shape.join() === b.v.shape.join()) {
            set({ k: "act", v: g.apply(new Add(node.name, a.v.shape), a.v, b.v) });
          } else {
            bad(node, "only the sum of two activations of the same shape (a residual join), or MatMul + bias, is supported");
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
          if (int(node, "group", 1) !== 1) bad(node, `group ${int(node, "group", 1)} is not supported (groups=1 only)`);
          if (k[0] !== k[1] || strides[0] !== strides[1] || pads.some((p) => p !== pads[0])) bad(node, `only square kernels, equal strides and symmetric padding are supported (kernel ${k.join("×")}, strides ${strides.join("×")}, pads ${pads.join(",")})`);
          if (w.dims[1] !== cin) bad(node, `weight expects ${w.dims[1]} input channels, the input has ${cin}`);
          if (k.length !== 2 || k[0] !== w.dims[2] || k[1] !== w.dims[3]) bad(node, `kernel_shape ${k.join("×")} is not the weight's ${w.dims.slice(2).join("×")}`);
          if (attr(node, "auto_pad") && new TextDecoder().decode(attr(node, "auto_pad")!.s) !== "NOTSET") bad(node, "auto_pad is not supported");
          if (problems.length > before) break;
          const name = owner(w.name, ".weight");
          const cout = w.dims[0]!;
          const geo = convGeometry(name, cin, cout, k[0]!, strides[0]!, pads[0]!, h, wd);
          // Padding can grow the output and its unrolled input past any bound: checked before the layer allocates them.
          const plane = geo.outH * geo.outW;
          if (Math.max(cout, cin * k[0]! * k[0]!) * plane > MAX_VALUE_ELEMENTS) {
            bad(node, `output ${cout}×${geo.outH}×${geo.outW} (unrolled input ${cin * k[0]! * k[0]!}×${plane}) is over the limit of ${MAX_VALUE_ELEMENTS} elements per sample`);
            break;
          }
          const weight = floatsOf(node, w, "weight", w.floats?.length ?? 0);
          const hasBias = node.input.length > 2 && node.input[2] !== "";
          const b = hasBias ? cst(node, 2) : null;
          const bias = b ? floatsOf(node, b, "bias", cout) : null;
          if (!weight || (hasBias && !bias)) break;
          initial.set(`${name}.weight`, weight);
          if (bias) initial.set(`${name}.bias`, bias);
          const conv = new Conv2d(name, cin, cout, k[0]!, strides[0]!, pads[0]!, h, wd, rng, undefined, hasBias);
          set({ k: "act", v: g.layer(conv, x.v) });
          break;
        }
        case "BatchNormalization": {
          const v = act(node, 0);
          const scale = cst(node, 1);
          if (!v || !scale) break;
          for (let i = 2; i < 5; i++) cst(node, i);
          if (problems.length > before) break;
          const name = owner(scale.name, ".weight");
          const channels = v.shape[0]!;
          // Under the norm layer's names (PyTorch's), whatever the initializers are called.
          const stats = ([[1, ".weight"], [2, ".bias"], [3, ".running_mean"], [4, ".running_var"]] as const).map(([i, suffix]) => {
            const f = floatsOf(node, cst(node, i)!, suffix.slice(1), channels);
            if (f) initial.set(name + suffix, f);
            return f;
          });
          const negative = stats[3]?.findIndex((x) => x < 0) ?? -1;
          if (negative >= 0) bad(node, `running_var "${node.input[4]}"[${negative}] is ${stats[3]![negative]}; a variance must be ≥ 0`);
          const eps = float(node, "epsilon", 1e-5);
          if (!(Number.isFinite(eps) && eps > 0)) bad(node, `epsilon ${eps} must be a finite number > 0`);
          if (problems.length > before) break;
          bnIndex++;
          set({ k: "act", v: norm(g, name, v, eps) });
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
          const pads = ints(node, "pads", [0, 0, 0, 0]).map((p, i) => p + x.pads[i]!);
          if (k.length !== 2 || k[0] !== k[1] || strides[0] !== strides[1]) bad(node, `only square windows with equal strides are supported (kernel ${k.join("×")}, strides ${strides.join("×")})`);
          if (pads.some((p) => p !== 0)) bad(node, `padding ${pads.join(",")} is not supported for pooling (no padding only)`);
          if (int(node, "ceil_mode", 0) !== 0) bad(node, "ceil_mode=1 is not supported");
          if (ints(node, "dilations", [1, 1]).some((d) => d !== 1)) bad(node, "dilation is not supported");
          if (problems.length > before) break;
          const [c, h, w] = sp;
          const layer = node.opType === "MaxPool" ? new MaxPool2d(node.name, c, h, w, k[0]!, strides[0]!) : new AvgPool2d(node.name, c, h, w, k[0]!, strides[0]!);
          set({ k: "act", v: g.layer(layer, x.v) });
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
          // keepdims (C, 1, 1) holds the same numbers as (C): kept as (C), the Flatten/Reshape after it folds to nothing.
          void keep;
          set({ k: "act", v: g.layer(new GlobalAvgPool(node.name, c, h, w), v) });
          break;
        }
        case "Flatten":
        case "Reshape": {
          const v = act(node, 0);
          if (!v) break;
          let ok = node.opType === "Flatten" ? int(node, "axis", 1) === 1 : false;
          if (node.opType === "Reshape") {
            const shape = cst(node, 1);
            if (!shape) break;
            const d = shape.data ?? [];
            const size = sizeOf(v.shape);
            ok = d.length === 2 && (d[0] === "n" || d[0] === -1 || d[0] === 0) && (d[1] === -1 || d[1] === size) && !(d[0] === -1 && d[1] === -1);
          }
          if (!ok) {
            bad(node, `only a flatten to (n, features) is supported (x.view(n, -1), torch.flatten(x, 1)); supported ops: ${SUPPORTED_OPS}`);
            break;
          }
          set({ k: "act", v: pooledFlat(g, node.name, v) });
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
  return { graph: g.finish(y), initial, batchNorms: bnIndex };
}

/** A Flatten layer, or the value itself when it already is one feature vector per sample. */
function pooledFlat(g: GraphBuilder, name: string, v: Value): Value {
  if (v.shape.length === 1) return v;
  return g.layer(new Flatten(name, v.shape), v);
}
