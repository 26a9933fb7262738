// The reference models of DESIGN.md §7 (mlp, cnn) as a sequence of layers with a
// normalization layer of the chosen mode wherever the design puts BN, plus the
// flat views the data-parallel step needs (all grads as one vector, a checksum).

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import type { BnConventions, NormMode } from "../../shared/config.js";
import { Rng } from "../../shared/rng.js";
import { BatchNorm, isRunningStatsLayer, type BnSync, type RunningStatsLayer } from "./batchnorm.js";
import { Conv2d } from "./conv2d.js";
import { Flatten } from "./flatten.js";
import { GhostBatchNorm } from "./ghost.js";
import { GroupNorm } from "./groupnorm.js";
import { sizeOf, type Layer, type Param } from "./layer.js";
import { Linear } from "./linear.js";
import { MaxPool2d } from "./maxpool.js";
import { ReLU } from "./relu.js";
import { BatchRenorm, type RenormOptions } from "./renorm.js";

export type ModelKind = "mlp" | "cnn";
export const MODEL_KINDS: readonly ModelKind[] = ["mlp", "cnn"];

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
}

export class Model {
  readonly params: Param[];
  /**
   * The norm layers with running statistics (BN, ghost BN, renorm; not GroupNorm),
   * in forward order: what checkpoints, the rank-0 broadcast and PreciseBN handle.
   */
  readonly bnLayers: RunningStatsLayer[];
  readonly gradSize: number;

  constructor(
    readonly kind: ModelKind,
    readonly layers: Layer[],
  ) {
    this.params = layers.flatMap((l) => l.params());
    this.bnLayers = layers.filter(isRunningStatsLayer);
    this.gradSize = this.params.reduce((a, p) => a + p.grad.length, 0);
  }

  /** x: (n, ...inShape) → logits (n, classes). Awaits only where a layer is async. */
  async forward(x: Float32Array, n: number, train: boolean): Promise<Float32Array> {
    let h = x;
    for (const layer of this.layers) {
      const out = layer.forward(h, n, train);
      h = out instanceof Promise ? await out : out;
    }
    return h;
  }

  /** dlogits: (n, classes); fills every param's grad with this worker's share. */
  async backward(dlogits: Float32Array, n: number): Promise<void> {
    let g = dlogits;
    for (let i = this.layers.length - 1; i >= 0; i--) {
      const out = this.layers[i]!.backward(g, n);
      g = out instanceof Promise ? await out : out;
    }
  }

  /** Copies every param's grad into flat (gradSize), params order. */
  packGrads(flat: Float32Array): void {
    let off = 0;
    for (const p of this.params) {
      flat.set(p.grad, off);
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

export function buildModel(o: ModelOptions): Model {
  const rng = new Rng(o.seed);
  let bnIndex = 0;
  const layers: Layer[] = [];
  /** Append the norm layer of the run's mode for a (C) or (C, H, W) activation. */
  const norm = (name: string, shape: number[]): void => {
    const l = makeNorm(name, bnIndex, shape, o);
    if (l) {
      layers.push(l);
      bnIndex++;
    }
  };
  if (o.kind === "mlp") {
    const inF = sizeOf(o.inShape);
    layers.push(new Flatten("flatten", o.inShape));
    layers.push(new Linear("fc1", inF, 256, rng));
    norm("bn1", [256]);
    layers.push(new ReLU("relu1", [256]));
    layers.push(new Linear("fc2", 256, 128, rng));
    norm("bn2", [128]);
    layers.push(new ReLU("relu2", [128]));
    layers.push(new Linear("fc3", 128, o.classes, rng));
    return new Model("mlp", layers);
  }
  if (o.kind === "cnn") {
    const [cin, h, w] = o.inShape as [number, number, number];
    if (o.inShape.length !== 3 || h % 4 !== 0 || w % 4 !== 0) {
      throw new SyncbnError(ErrorCode.BadConfig, `cnn needs (C, H, W) input with H, W divisible by 4, got ${o.inShape.join("×")}`);
    }
    layers.push(new Conv2d("conv1", cin, 16, 3, 1, 1, h, w, rng));
    norm("bn1", [16, h, w]);
    layers.push(new ReLU("relu1", [16, h, w]));
    layers.push(new MaxPool2d("pool1", 16, h, w, 2, 2));
    const h2 = h / 2, w2 = w / 2;
    layers.push(new Conv2d("conv2", 16, 32, 3, 1, 1, h2, w2, rng));
    norm("bn2", [32, h2, w2]);
    layers.push(new ReLU("relu2", [32, h2, w2]));
    layers.push(new MaxPool2d("pool2", 32, h2, w2, 2, 2));
    const flat = 32 * (h2 / 2) * (w2 / 2);
    layers.push(new Flatten("flatten", [32, h2 / 2, w2 / 2]));
    layers.push(new Linear("fc1", flat, 64, rng));
    norm("bn3", [64]);
    layers.push(new ReLU("relu3", [64]));
    layers.push(new Linear("fc2", 64, o.classes, rng));
    return new Model("cnn", layers);
  }
  throw new SyncbnError(ErrorCode.BadConfig, `unknown --model "${String(o.kind)}"; use mlp or cnn`);
}

/**
 * The norm layer of the run's mode (DESIGN.md §4) for a (C) or (C, H, W)
 * activation, or null for `none`. bnIndex is the layer id of its rounds.
 */
function makeNorm(name: string, bnIndex: number, shape: number[], o: ModelOptions): Layer | null {
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
  }
}
