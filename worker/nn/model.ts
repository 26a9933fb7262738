// The models a run trains, as graphs (graph.ts): the reference mlp and cnn of
// DESIGN.md §7 and the CIFAR-style ResNet (resnet.ts), with the norm layer of the
// chosen mode wherever the design puts BN; plus the flat views the data-parallel
// step needs (all grads as one vector, a checksum) and the tensors by their
// PyTorch state_dict names. Not a model zoo: the three families of docs/models.md.

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { MAX_MODEL_FILE_BYTES, readInputFile } from "../input-file.js";
import type { BnConventions, NormMode } from "../../shared/config.js";
import { Rng } from "../../shared/rng.js";
import { BatchNorm, isRunningStatsLayer, type BnSync, type RunningStatsLayer } from "./batchnorm.js";
import { CrossIterationBatchNorm } from "./cbn.js";
import { statsProducer } from "./cbn-taylor.js";
import { Conv2d } from "./conv2d.js";
import { Flatten } from "./flatten.js";
import { GhostBatchNorm } from "./ghost.js";
import { GraphBuilder, LayerOp, type Graph, type Op, type Value } from "./graph.js";
import { GroupNorm } from "./groupnorm.js";
import { sizeOf, type Layer, type Param } from "./layer.js";
import { Linear } from "./linear.js";
import { MaxPool2d } from "./maxpool.js";
import { decodeOnnx, importOnnx } from "./onnx-import.js";
import { ReLU } from "./relu.js";
import { BatchRenorm, type RenormOptions } from "./renorm.js";
import { buildResnet, RESNET_MAX_BLOCKS, resnetNormChannels } from "./resnet.js";
import { SegmentedNorm } from "./segmented.js";
import type { RunningStatsNorm } from "./norm-base.js";

/** `mlp`, `cnn`, `resnet:N` (N BasicBlocks per stage), or the path of an ONNX export (onnx-import.ts). */
export type ModelKind = "mlp" | "cnn" | `resnet:${number}` | `${string}.onnx`;
/** The kinds without a parameter; `resnet:N` is the third family. */
export const MODEL_KINDS: readonly ModelKind[] = ["mlp", "cnn"];
export const MODEL_KINDS_HELP = "mlp, cnn, resnet:N or PATH.onnx";

/** Whether the kind is an ONNX file the workers import. */
export function isOnnxKind(kind: ModelKind): kind is `${string}.onnx` {
  return kind.endsWith(".onnx");
}

/** The kind named by a --model value, or a one-line BadConfig error saying what is accepted. */
export function parseModelKind(s: string): ModelKind {
  if (s === "mlp" || s === "cnn") return s;
  if (s.endsWith(".onnx")) return s as `${string}.onnx`;
  const m = /^resnet:(\d+)$/.exec(s);
  const n = m ? Number(m[1]) : NaN;
  if (Number.isInteger(n) && n >= 1 && n <= RESNET_MAX_BLOCKS) return `resnet:${n}`;
  throw new SyncbnError(ErrorCode.BadConfig, `--model must be mlp, cnn or resnet:N with N in 1..${RESNET_MAX_BLOCKS} (resnet:3 is ResNet-20), or a PyTorch export PATH.onnx, got "${s}"`);
}

/** Channel counts of every norm layer of a model kind, in forward order (for --norm groupnorm:G checks; none known for ONNX before import). */
export function normChannels(kind: ModelKind): number[] {
  if (isOnnxKind(kind)) return [];
  if (kind === "mlp") return [256, 128];
  if (kind === "cnn") return [16, 32, 64];
  return resnetNormChannels(Number(kind.slice("resnet:".length)));
}

export interface ModelOptions {
  kind: ModelKind;
  inShape: readonly number[]; // per sample, e.g. [1, 28, 28]
  classes: number;
  norm: NormMode;
  conventions: BnConventions;
  /** The collective for sync/group BN; null runs every BN locally. */
  sync: BnSync | null;
  /** Where the worker is (rank, step), for error messages of layers without a collective. */
  where?: { readonly rank: number; readonly step: number };
  seed: number;
  /** Batch renorm clips, warm-up and step clock; required for --norm renorm. */
  renorm?: RenormOptions;
  /**
   * A process hosting R > 1 consecutive ranks: every norm layer with running
   * statistics becomes a SegmentedNorm of R copies, copy k with syncs[k] (rank
   * first+k's collective; null entries for modes without rounds). Absent: R = 1.
   */
  block?: {
    first: number;
    syncs: readonly (BnSync | null)[];
    /** Per-rank weight gradients summed in float64 (--rank-grads exact); else one GEMM over the block's samples. */
    exactGrads?: boolean;
  };
}

/** One tensor of the model under its PyTorch state_dict name, in state_dict order. */
export type NamedTensor =
  | { readonly kind: "param"; readonly name: string; readonly shape: readonly number[]; readonly param: Param }
  | { readonly kind: "running_mean" | "running_var"; readonly name: string; readonly shape: readonly number[]; readonly value: Float64Array; readonly layer: RunningStatsLayer }
  /** An int64 scalar in PyTorch; read and set `layer.tracked`. */
  | { readonly kind: "num_batches_tracked"; readonly name: string; readonly shape: readonly number[]; readonly layer: RunningStatsLayer };

export class Model {
  readonly params: Param[];
  /** Every one-input layer of the graph, in execution order (Add joins are not layers). */
  readonly layers: Layer[];
  /**
   * The norm layers with running statistics (BN, ghost BN, renorm; not GroupNorm),
   * in forward order: what checkpoints, the rank-0 broadcast and PreciseBN handle.
   */
  readonly bnLayers: RunningStatsLayer[];
  readonly gradSize: number;

  constructor(
    readonly kind: ModelKind,
    readonly graph: Graph,
  ) {
    const ops = graph.ops;
    this.params = ops.flatMap((op) => op.params());
    this.layers = ops.flatMap((op) => (op instanceof LayerOp ? [op.layer] : []));
    this.bnLayers = this.layers.filter(isRunningStatsLayer);
    this.gradSize = this.params.reduce((a, p) => a + p.grad.length, 0);
  }

  /** x: (n, ...inShape) → logits (n, classes). Awaits only where an op is async. */
  forward(x: Float32Array, n: number, train: boolean): Promise<Float32Array> {
    return this.graph.forward(x, n, train);
  }

  /** dlogits: (n, classes); fills every param's grad with this worker's share. */
  backward(dlogits: Float32Array, n: number): Promise<void> {
    return this.graph.backward(dlogits, n);
  }

  /** Eval-mode forward of x (n, ...inShape) up to `layer`: its input (n, ...layer.inShape), a view the graph owns. */
  inputOf(layer: Layer, x: Float32Array, n: number): Promise<Float32Array> {
    const op = this.graph.ops.find((o) => o instanceof LayerOp && o.layer === layer);
    if (!op) throw new RangeError(`model: ${layer.name} is not a layer of this model`);
    return this.graph.forward(x, n, false, op);
  }

  /**
   * Parameters and running-stat buffers by state_dict name, in state_dict order
   * (module registration order = graph order; per module its params, then
   * running_mean, running_var, num_batches_tracked).
   */
  namedTensors(): NamedTensor[] {
    const out: NamedTensor[] = [];
    for (const layer of this.layers) {
      for (const p of layer.params()) out.push({ kind: "param", name: p.name, shape: p.shape ?? [p.value.length], param: p });
      if (isRunningStatsLayer(layer)) {
        const c = [layer.channels];
        out.push({ kind: "running_mean", name: `${layer.name}.running_mean`, shape: c, value: layer.runningMean, layer });
        out.push({ kind: "running_var", name: `${layer.name}.running_var`, shape: c, value: layer.runningVar, layer });
        out.push({ kind: "num_batches_tracked", name: `${layer.name}.num_batches_tracked`, shape: [], layer });
      }
    }
    return out;
  }

  /**
   * Every rank's copy of every running-stats layer: the layers themselves, or the
   * R copies of each SegmentedNorm (a process hosting R ranks). For saving and
   * restoring each rank's own statistics (elastic redo of a step).
   */
  statsCopies(): RunningStatsLayer[] {
    return this.bnLayers.flatMap((l) => (l instanceof SegmentedNorm ? [...l.copies] : [l]));
  }

  /** After the layers' (rank r0's) running statistics were set for every rank: copy them to the other ranks of the block. */
  spreadRank0Stats(): void {
    for (const l of this.bnLayers) if (l instanceof SegmentedNorm) l.spreadRank0Stats();
  }

  /**
   * A process hosting R > 1 ranks with --rank-grads exact (buildModel): every layer
   * with params computes their grads per rank segment of the batch and sums them in
   * float64 (Param.grad64), so the block's gradient contribution is the one R
   * processes would send, summed. Without it (fused) a block's grads are those of
   * one batch of R·B samples.
   */
  setRankSegments(r: number): void {
    for (const l of this.layers) l.setRankSegments?.(r);
    const missing = this.params.filter((p) => p.grad64 === undefined).map((p) => p.name);
    if (missing.length > 0) throw new RangeError(`model: no per-rank gradients for ${missing.join(", ")}`);
  }

  /** Copies every param's grad into flat (gradSize), params order; a Float64Array takes the per-rank sums (grad64) of a rank block. */
  packGrads(flat: Float32Array | Float64Array): void {
    const wide = flat instanceof Float64Array;
    let off = 0;
    for (const p of this.params) {
      flat.set(wide ? p.grad64 ?? p.grad : p.grad, off);
      off += p.grad.length;
    }
  }

  /** Copies the summed gradients back into the params' grad buffers. */
  unpackGrads(flat: Float32Array): void {
    let off = 0;
    for (const p of this.params) {
      p.grad.set(flat.subarray(off, off + p.grad.length));
      off += p.grad.length;
    }
  }

  /** A 32-bit FNV-style hash of every parameter's bits: equal iff replicas agree (w.h.p.). */
  checksum(): number {
    let h = 0x811c9dc5;
    for (const p of this.params) {
      const bits = new Int32Array(p.value.buffer, p.value.byteOffset, p.value.length);
      for (let i = 0; i < bits.length; i++) h = Math.imul(h ^ bits[i]!, 0x01000193);
    }
    return h >>> 0;
  }
}

/** Appends the run's norm layer for a (C) or (C, H, W) value, or returns the value for `none`. */
export type NormFactory = (g: GraphBuilder, name: string, v: Value) => Value;

export function buildModel(o: ModelOptions): Model {
  const model = isOnnxKind(o.kind) ? buildOnnxModel(o.kind, o) : buildBuiltIn(o);
  const r = o.block?.syncs.length ?? 1;
  if (r > 1 && o.block?.exactGrads === true) model.setRankSegments(r);
  return model;
}

/** mlp, cnn or resnet:N. */
function buildBuiltIn(o: ModelOptions): Model {
  const rng = new Rng(o.seed);
  let bnIndex = 0;
  const norm: NormFactory = (g, name, v) => {
    const l = makeNorm(name, bnIndex, [...v.shape], o, g.producerOf(v));
    if (!l) return v;
    bnIndex++;
    return g.layer(l, v);
  };
  const g = new GraphBuilder(o.inShape);
  if (o.kind === "mlp") {
    const inF = sizeOf(o.inShape);
    let h = g.layer(new Flatten("flatten", o.inShape), g.input);
    h = g.layer(new Linear("fc1", inF, 256, rng), h);
    h = g.layer(new ReLU("relu1", [256]), norm(g, "bn1", h));
    h = g.layer(new Linear("fc2", 256, 128, rng), h);
    h = g.layer(new ReLU("relu2", [128]), norm(g, "bn2", h));
    h = g.layer(new Linear("fc3", 128, o.classes, rng), h);
    return new Model("mlp", g.finish(h));
  }
  if (o.kind === "cnn") {
    const [cin, h, w] = o.inShape as [number, number, number];
    if (o.inShape.length !== 3 || !(h >= 4 && w >= 4)) {
      throw new SyncbnError(ErrorCode.BadConfig, `--model cnn needs images of at least 4×4 pixels (two 2×2 poolings), got ${o.inShape.join("×")}`);
    }
    let v = g.layer(new Conv2d("conv1", cin, 16, 3, 1, 1, h, w, rng), g.input);
    v = g.layer(new ReLU("relu1", [16, h, w]), norm(g, "bn1", v));
    v = g.layer(new MaxPool2d("pool1", 16, h, w, 2, 2), v);
    const [, h2, w2] = v.shape as [number, number, number];
    v = g.layer(new Conv2d("conv2", 16, 32, 3, 1, 1, h2, w2, rng), v);
    v = g.layer(new ReLU("relu2", [32, h2, w2]), norm(g, "bn2", v));
    v = g.layer(new MaxPool2d("pool2", 32, h2, w2, 2, 2), v);
    const flat = sizeOf(v.shape);
    v = g.layer(new Flatten("flatten", v.shape), v);
    v = g.layer(new Linear("fc1", flat, 64, rng), v);
    v = g.layer(new ReLU("relu3", [64]), norm(g, "bn3", v));
    v = g.layer(new Linear("fc2", 64, o.classes, rng), v);
    return new Model("cnn", g.finish(v));
  }
  const blocks = Number(String(o.kind).slice("resnet:".length));
  if (!String(o.kind).startsWith("resnet:") || !Number.isInteger(blocks) || blocks < 1) {
    throw new SyncbnError(ErrorCode.BadConfig, `unknown --model "${String(o.kind)}"; use ${MODEL_KINDS_HELP}`);
  }
  return new Model(o.kind, buildResnet(g, blocks, o.classes, rng, norm));
}

/**
 * PyTorch's momentum of an ONNX BatchNormalization node's `momentum` m (a float32,
 * 1 − PyTorch's): 1 − m taken on the shortest decimal that rounds to m, so a
 * module's 0.01 (written as 0.99f) comes back as 0.01, not 1 − 0.99000001.
 */
export function torchMomentumOf(onnxMomentum: number): number {
  const m = Math.fround(onnxMomentum);
  for (let digits = 1; digits <= 9; digits++) {
    const d = Number(m.toPrecision(digits));
    if (Math.fround(d) !== m) continue;
    let places = 0;
    while (places < 12 && Number(d.toFixed(places)) !== d) places++;
    if (Number(d.toFixed(places)) !== d) break;
    const scale = 10 ** places;
    return Number(`${scale - Math.round(d * scale)}e-${places}`);
  }
  return 1 - m;
}

/** ONNX's default BatchNormalization momentum, and what torch.onnx.export writes for a module's default 0.1. */
const ONNX_DEFAULT_MOMENTUM = Math.fround(0.9);

/**
 * A BN node's conventions: the run's, with the node's eps unless it is the float32
 * rounding of the run's (then the run's, bit for bit as the built-in models). Its
 * momentum: the run's (`--bn-momentum`) when the node has the default (a module's
 * 0.1) or agrees with the run's in float32; else the node's, a module's own
 * (BatchNorm2d(momentum=0.01)), unless the run asks for the cumulative average
 * (`--bn-momentum null`); a node's 0 is a momentum=None module's (the cumulative
 * average). affine = false: a BatchNorm(affine=False) (γ = 1, β = 0 fixed).
 */
export function onnxNodeConventions(run: BnConventions, eps: number, onnxMomentum: number, affine = true): BnConventions {
  const out = { ...run, eps: Math.fround(run.eps) === Math.fround(eps) ? run.eps : eps, ...(affine ? {} : { affine: false }) };
  if (run.momentum === null || Math.fround(onnxMomentum) === ONNX_DEFAULT_MOMENTUM) return out;
  // 0 (PyTorch's 1: the running statistics replaced by each batch's) is what a momentum=None module exports
  // before its first update, its factor 1/(num_batches_tracked + 1) taken at the export's one forward pass.
  if (Math.fround(onnxMomentum) === 0) return { ...out, momentum: null, momentumStyle: "torch" };
  const runTorch = run.momentumStyle === "keras" ? 1 - run.momentum : run.momentum;
  if (Math.fround(1 - runTorch) === Math.fround(onnxMomentum)) return out;
  return { ...out, momentum: torchMomentumOf(onnxMomentum), momentumStyle: "torch" };
}

/**
 * The model of an ONNX file (onnx-import.ts), its tensors set to the file's
 * initializers (state_dict names); each BN layer's eps and momentum from its node
 * (onnxNodeConventions).
 */
function buildOnnxModel(path: `${string}.onnx`, o: ModelOptions): Model {
  let bytes: Uint8Array;
  try {
    bytes = readInputFile(path, MAX_MODEL_FILE_BYTES);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new SyncbnError(ErrorCode.BadConfig, `--model ${path}: cannot read it (${err.code ?? err.message ?? String(e)}); give the path of a torch.onnx.export file`);
  }
  let bnIndex = 0;
  const imported = importOnnx(decodeOnnx(bytes, path), path, o.inShape, o.classes, o.norm.kind === "none", (g, name, v, eps, momentum, affine) => {
    const l = makeNorm(name, bnIndex, [...v.shape], { ...o, conventions: onnxNodeConventions(o.conventions, eps, momentum, affine) }, g.producerOf(v));
    if (!l) return v;
    bnIndex++;
    return g.layer(l, v);
  }, {
    // Dropout masks: a function of (seed, rank, step); a block's batch is its ranks' segments in rank order.
    seed: o.seed,
    // Read at every draw: an elastic run renumbers a worker's rank.
    get firstRank() {
      return o.block?.first ?? o.where?.rank ?? 0;
    },
    ranks: o.block?.syncs.length ?? 1,
    step: () => o.where?.step ?? 0,
  });
  const model = new Model(path, imported.graph);
  for (const t of model.namedTensors()) {
    if (t.kind === "num_batches_tracked") continue;
    const init = imported.initial.get(t.name);
    // The importer sets every tensor from its constant; a gap would train from random values the file never had.
    if (!init) throw new SyncbnError(ErrorCode.BadConfig, `--model ${path}: no initializer holds ${t.name}`);
    const dst = t.kind === "param" ? t.param.value : t.value;
    if (init.length !== dst.length) throw new SyncbnError(ErrorCode.BadConfig, `--model ${path}: initializer ${t.name} has ${init.length} values, the layer needs ${dst.length}`);
    dst.set(init);
  }
  return model;
}

/**
 * The norm layer of the run's mode (DESIGN.md §4) for a (C) or (C, H, W)
 * activation, or null for `none`. bnIndex is the layer id of its rounds.
 */
function makeNorm(name: string, bnIndex: number, shape: number[], o: ModelOptions, producer: Op | null): Layer | null {
  const block = o.block;
  if (!block || block.syncs.length < 2 || o.norm.kind === "none" || o.norm.kind === "groupnorm") return makeRankNorm(name, bnIndex, shape, o, producer, 0);
  // One copy per rank of the block, each with that rank's collective and place in error messages.
  const copies = block.syncs.map((sync, k) => {
    const where = { rank: block.first + k, get step() { return o.where?.step ?? 0; } };
    return makeRankNorm(name, bnIndex, shape, { ...o, sync, where }, producer, k) as RunningStatsNorm;
  });
  return new SegmentedNorm(copies);
}

/** The norm layer of one rank; `segment`: its index in a rank block (0 alone), `producer`: the op before it. */
function makeRankNorm(name: string, bnIndex: number, shape: number[], o: ModelOptions, producer: Op | null, segment: number): Layer | null {
  const mode = o.norm;
  switch (mode.kind) {
    case "none":
      return null;
    case "sync":
    case "group":
      // The coordinator groups the rounds (all workers, or K); one worker per group runs with sync = null.
      return new BatchNorm(name, bnIndex, shape, o.conventions, o.sync, o.where ?? null);
    case "local":
      return new BatchNorm(name, bnIndex, shape, o.conventions, null, o.where ?? null);
    case "ghost":
      return new GhostBatchNorm(name, bnIndex, shape, o.conventions, mode.ghostBatch);
    case "renorm":
      if (!o.renorm) throw new SyncbnError(ErrorCode.BadConfig, "--norm renorm: the model needs renorm options (rMax, dMax, warmup)");
      return new BatchRenorm(name, bnIndex, shape, o.conventions, o.renorm);
    case "groupnorm":
      return new GroupNorm(name, shape, mode.groups, o.conventions.eps);
    case "cbn":
      return new CrossIterationBatchNorm(name, bnIndex, shape, o.conventions, statsProducer(name, producer, mode.window), { window: mode.window, burnin: mode.burnin, segment }, o.where ?? null);
  }
}
