// Training settings every worker of a run must share, their defaults and
// validation, and their canonical JSON (sent in the hello so the coordinator can
// refuse a worker started with different flags). No I/O, except reading an ONNX
// --model once to put the hash of its bytes, not its path, in the canonical JSON.

import { parseNorm, statsGroupSize, validateConventions, type MomentumStyle, type RunConventions } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { isOnnxKind, normChannels, parseModelKind, type ModelKind } from "./nn/model.js";
import { onnxFileHash } from "./nn/onnx-import.js";

/** Largest worker count: the coordinator keeps per-rank state, and a local run starts W processes. */
export const MAX_WORKERS = 1024;
/** Samples per worker per forward (train or eval): the cnn keeps ~160 KB of activations per sample. */
export const MAX_BATCH = 4096;
/** Synthetic samples per split: every worker generates and holds its own copy (3.1 KB per sample). */
export const MAX_SYNTHETIC_SAMPLES = 100_000;

/** How a process hosting several ranks computes their weight gradients (TrainSettings.rankGrads). */
export const RANK_GRADS = ["exact", "fused"] as const;
export type RankGrads = (typeof RANK_GRADS)[number];

export interface TrainSettings {
  model: ModelKind;
  norm: string;
  data: string;
  /** Samples per worker per step. */
  batch: number;
  /** Total steps; null = epochs × steps per epoch. */
  steps: number | null;
  epochs: number;
  lr: number;
  momentum: number;
  weightDecay: number;
  seed: number;
  bnEps: number;
  bnMomentum: number | null;
  bnMomentumStyle: MomentumStyle;
  unbiasedRunningVar: boolean;
  /** Use only the first N training / test samples (null = all). */
  trainSize: number | null;
  testSize: number | null;
  evalBatch: number;
  /** Compare replicas' parameter checksums every K steps (0 = never). */
  checksumEvery: number;
  /** Evaluate every N steps as well as at every epoch end (0 = epoch ends only). */
  evalEvery: number;
  /** Statistics eval mode uses: running averages, or PreciseBN population statistics. */
  evalStats: "ema" | "precise";
  /** Training batches PreciseBN averages over (per worker). */
  preciseBatches: number;
  /** Batch renorm: clip r to [1/rMax, rMax] and d to [−dMax, dMax] after warm-up. */
  renormRMax: number;
  renormDMax: number;
  /** Batch renorm: steps over which the clips relax linearly from (1, 0) to (rMax, dMax). */
  renormWarmup: number;
  /** on: a fresh permutation per epoch; off: file order, as DistributedSampler(shuffle=False) (data/order.ts). */
  shuffle: "on" | "off";
  /**
   * A process hosting R > 1 ranks (--ranks-per-proc): exact computes each rank's
   * weight gradients as that rank alone would and sums them in float64, bit-identical
   * to one rank per process; fused computes those of its R·B samples in one GEMM per
   * layer (float32, as one rank of R·B would; faster). Statistics are per rank either
   * way. No effect with R = 1.
   */
  rankGrads: RankGrads;
}

export const DEFAULT_SETTINGS: TrainSettings = {
  model: "cnn",
  norm: "sync",
  data: "synthetic",
  batch: 8,
  steps: null,
  epochs: 1,
  lr: 0.05,
  momentum: 0.9,
  weightDecay: 5e-4,
  seed: 1,
  bnEps: 1e-5,
  bnMomentum: 0.1,
  bnMomentumStyle: "torch",
  unbiasedRunningVar: true,
  trainSize: null,
  testSize: null,
  evalBatch: 250,
  checksumEvery: 50,
  evalEvery: 0,
  evalStats: "ema",
  preciseBatches: 20,
  renormRMax: 3,
  renormDMax: 5,
  renormWarmup: 500,
  shuffle: "on",
  rankGrads: "exact",
};

/**
 * The BN defaults each --bn-momentum-style brings when --bn-momentum/--bn-eps are
 * not given: PyTorch's BatchNorm (momentum 0.1 = weight of the new batch, eps 1e-5)
 * and Keras's BatchNormalization (momentum 0.99 = weight of the old value, eps 1e-3).
 */
export const BN_STYLE_DEFAULTS: Record<MomentumStyle, { momentum: number; eps: number }> = {
  torch: { momentum: 0.1, eps: 1e-5 },
  keras: { momentum: 0.99, eps: 1e-3 },
};

function divisorsOfAll(values: number[]): number[] {
  const out: number[] = [];
  for (let d = 1; d <= Math.min(...values); d++) if (values.every((v) => v % d === 0)) out.push(d);
  return out;
}

/** Throws a one-line BadConfig error naming the flag and what to do. */
export function validateSettings(s: TrainSettings, worldSize: number): void {
  const bad = (msg: string): never => {
    throw new SyncbnError(ErrorCode.BadConfig, msg);
  };
  parseModelKind(s.model);
  const mode = parseNorm(s.norm);
  statsGroupSize(mode, worldSize);
  if (mode.kind === "ghost" && s.batch % mode.ghostBatch !== 0) {
    bad(`--norm ghost:${mode.ghostBatch} needs G to divide the per-worker batch ${s.batch}`);
  }
  if (mode.kind === "groupnorm") {
    const channels = [...new Set(normChannels(s.model))];
    const ok = channels.filter((c) => c % mode.groups === 0).length === channels.length;
    if (!ok) {
      const common = channels.length ? divisorsOfAll(channels) : [];
      bad(`--norm groupnorm:${mode.groups} needs G to divide every norm layer's channel count of --model ${s.model} (${channels.join(", ")}); try G in {${common.join(", ")}}`);
    }
  }
  const posInt = (v: number, flag: string): void => {
    if (!Number.isInteger(v) || v < 1) bad(`${flag} must be a positive integer, got ${v}`);
  };
  posInt(s.batch, "--batch");
  if (!Number.isInteger(worldSize) || worldSize < 1 || worldSize > MAX_WORKERS) bad(`--workers must be an integer in 1..${MAX_WORKERS}, got ${worldSize}`);
  if (s.batch > MAX_BATCH) bad(`--batch must be at most ${MAX_BATCH} samples per worker, got ${s.batch}; use more workers or a smaller batch`);
  if (s.evalBatch > MAX_BATCH) bad(`--eval-batch must be at most ${MAX_BATCH}, got ${s.evalBatch}`);
  if (s.data === "synthetic") {
    for (const [flag, v] of [["--train-size", s.trainSize], ["--test-size", s.testSize]] as const) {
      if (v !== null && v > MAX_SYNTHETIC_SAMPLES) bad(`${flag} ${v} is more than synthetic data allows (${MAX_SYNTHETIC_SAMPLES}; every worker holds its own copy); use a smaller ${flag}`);
    }
  }
  posInt(s.epochs, "--epochs");
  posInt(s.evalBatch, "--eval-batch");
  if (s.steps !== null) posInt(s.steps, "--steps");
  if (s.trainSize !== null) posInt(s.trainSize, "--train-size");
  if (s.testSize !== null) posInt(s.testSize, "--test-size");
  if (!(s.lr > 0) || !(s.lr <= 100)) bad(`--lr must be a number in (0, 100], got ${s.lr}`);
  if (!(s.momentum >= 0 && s.momentum < 1)) bad(`--momentum must be in [0, 1), got ${s.momentum}`);
  if (!(s.weightDecay >= 0) || !Number.isFinite(s.weightDecay)) bad(`--weight-decay must be ≥ 0, got ${s.weightDecay}`);
  if (!Number.isInteger(s.seed) || s.seed < 0) bad(`--seed must be a non-negative integer, got ${s.seed}`);
  if (!Number.isInteger(s.checksumEvery) || s.checksumEvery < 0) bad(`--checksum-every must be an integer ≥ 0`);
  if (!Number.isInteger(s.evalEvery) || s.evalEvery < 0) bad(`--eval-every must be an integer ≥ 0`);
  if (s.evalStats !== "ema" && s.evalStats !== "precise") bad(`--eval-stats must be ema or precise, got "${String(s.evalStats)}"`);
  posInt(s.preciseBatches, "--precise-batches");
  if (!(s.renormRMax >= 1)) bad(`--renorm-rmax must be ≥ 1, got ${s.renormRMax}`);
  if (!(s.renormDMax >= 0)) bad(`--renorm-dmax must be ≥ 0, got ${s.renormDMax}`);
  if (!Number.isInteger(s.renormWarmup) || s.renormWarmup < 0) bad(`--renorm-warmup must be an integer ≥ 0, got ${s.renormWarmup}`);
  if (s.shuffle !== "on" && s.shuffle !== "off") bad(`--shuffle must be on or off, got "${String(s.shuffle)}"`);
  if (!RANK_GRADS.includes(s.rankGrads)) bad(`--rank-grads must be ${RANK_GRADS.join(" or ")}, got "${String(s.rankGrads)}"`);
  validateConventions(conventionsOf(s));
}

export function conventionsOf(s: TrainSettings): RunConventions {
  const { norm, bnEps, bnMomentum, bnMomentumStyle, unbiasedRunningVar, ...rest } = s;
  // Workers on other hosts name their copy of the model by their own path: the bytes must agree, not the paths.
  if (isOnnxKind(rest.model)) rest.model = `onnx sha256:${onnxFileHash(rest.model)}.onnx`;
  // Sorted keys: the same settings always give the same string.
  const training = JSON.stringify(Object.fromEntries(Object.entries(rest).sort(([a], [b]) => a.localeCompare(b))));
  return { eps: bnEps, momentum: bnMomentum, momentumStyle: bnMomentumStyle, unbiasedRunningVar, norm, training };
}

/** Steps per epoch: every worker takes `batch` samples of each global batch; the remainder is dropped. */
export function stepsPerEpoch(trainCount: number, worldSize: number, batch: number): number {
  const spe = Math.floor(trainCount / (worldSize * batch));
  if (spe < 1) {
    throw new SyncbnError(
      ErrorCode.BadConfig,
      `the training set (${trainCount} samples) is smaller than one global batch (${worldSize} workers × ${batch}); lower --batch or --workers`,
    );
  }
  return spe;
}
