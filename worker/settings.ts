// Training settings every worker of a run must share, their defaults and
// validation, and their canonical JSON (sent in the hello so the coordinator can
// refuse a worker started with different flags). No I/O, except reading an ONNX
// --model once to put the hash of its bytes, not its path, in the canonical JSON.

import { parseNorm, statsGroupSize, validateConventions, type MomentumStyle, type RunConventions } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { isOnnxKind, normChannels, parseModelKind, type ModelKind } from "./nn/model.js";
import { onnxFileHash } from "./nn/onnx-import.js";
import { LR_SCHEDULES, resolveSteps, type LrSchedule, type LrScheduleKind, type StepsOrPercent } from "./nn/lr-schedule.js";

/** Largest worker count: the coordinator keeps per-rank state, and a local run starts W processes. */
export const MAX_WORKERS = 1024;
/** Samples per worker per forward (train or eval): the cnn keeps ~160 KB of activations per sample. */
export const MAX_BATCH = 4096;
/** Synthetic samples per split: every worker generates and holds its own copy (3.1 KB per sample). */
export const MAX_SYNTHETIC_SAMPLES = 100_000;

/** How a process hosting several ranks computes their weight gradients (TrainSettings.rankGrads). */
export const RANK_GRADS = ["exact", "fused"] as const;
/** --augment: none, or random crop (zero padding) and horizontal flip (data/augment.ts). */
export const AUGMENTS = ["none", "crop-flip"] as const;
export type Augment = (typeof AUGMENTS)[number];
/** --augment-pad: beyond a quarter of a 32-pixel side a crop is mostly padding; 64 is a generous cap. */
export const MAX_AUGMENT_PAD = 64;
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
  /** Learning-rate schedule over iterations (nn/lr-schedule.ts); constant by default. */
  lrSchedule: LrScheduleKind;
  /** step: MultiStepLR milestones, in steps or percentages of the run's steps, increasing. */
  lrMilestones: StepsOrPercent[];
  /** step: factor applied at each milestone (MultiStepLR's gamma). */
  lrGamma: number;
  /** Linear warm-up of the learning rate (Goyal et al. 2017): steps, or a percentage of the run's steps. */
  lrWarmup: StepsOrPercent;
  /** Training-time augmentation, drawn from seed, epoch and sample index (data/augment.ts). */
  augment: Augment;
  /** crop-flip: zero padding on each side before the random crop. */
  augmentPad: number;
  /** Cross-entropy label smoothing ε in [0, 1), as F.cross_entropy(label_smoothing=ε). */
  labelSmoothing: number;
  /** Nesterov momentum, as torch.optim.SGD(nesterov=True); needs momentum > 0. */
  nesterov: boolean;
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
  lrSchedule: "constant",
  lrMilestones: [],
  lrGamma: 0.1,
  lrWarmup: { steps: 0 },
  augment: "none",
  augmentPad: 4,
  labelSmoothing: 0,
  nesterov: false,
};

/** The learning-rate schedule of a run's settings. */
export function lrScheduleOf(s: TrainSettings): LrSchedule {
  return { kind: s.lrSchedule, milestones: s.lrMilestones, gamma: s.lrGamma, warmup: s.lrWarmup };
}

/**
 * The recipe settings' own checks (schedule, warm-up, augmentation, label
 * smoothing, Nesterov), one message per problem; totalSteps, when known, also
 * checks milestones and warm-up against the run's length.
 */
export function recipeProblems(s: TrainSettings, totalSteps: number | null = null): string[] {
  const out: string[] = [];
  const stepsOk = (v: StepsOrPercent): boolean =>
    "steps" in v ? Number.isInteger(v.steps) && v.steps >= 0 && v.steps <= 100_000_000 : v.percent >= 0 && v.percent <= 100;
  if (!LR_SCHEDULES.includes(s.lrSchedule)) out.push(`--lr-schedule must be ${LR_SCHEDULES.join(", ")}, got "${String(s.lrSchedule)}"`);
  if (!stepsOk(s.lrWarmup)) out.push(`--warmup must be steps in 0..100000000 or a percentage in 0%..100%`);
  if (s.lrSchedule === "step") {
    if (s.lrMilestones.length === 0) out.push("--lr-schedule step needs --lr-milestones (steps or percentages of the run, e.g. 50%,75%)");
    if (!s.lrMilestones.every(stepsOk)) out.push("--lr-milestones items must be steps in 0..100000000 or percentages in 0%..100%");
  } else if (s.lrMilestones.length > 0) {
    out.push(`--lr-milestones applies to --lr-schedule step, not ${s.lrSchedule}`);
  }
  if (!(s.lrGamma > 0 && s.lrGamma <= 1)) out.push(`--lr-gamma must be a number in (0, 1], got ${s.lrGamma}`);
  if (s.lrSchedule === "step") {
    // Without the run's length only neighbours of one kind (steps, or percentages) compare.
    const at = s.lrMilestones.map((m) => (totalSteps !== null ? resolveSteps(m, totalSteps) : "steps" in m ? m.steps : NaN));
    const pct = s.lrMilestones.map((m) => ("percent" in m ? m.percent : NaN));
    if (totalSteps === null && pct.some((p, i) => i > 0 && p <= pct[i - 1]!)) out.push(`--lr-milestones must increase, got ${pct.join("%, ")}%`);
    if (at.some((m, i) => i > 0 && m <= at[i - 1]!)) {
      out.push(totalSteps === null ? `--lr-milestones must increase, got ${at.join(", ")}` : `--lr-milestones must increase; they fall at steps ${at.join(", ")} of this run's ${totalSteps}`);
    }
  }
  if (!AUGMENTS.includes(s.augment)) out.push(`--augment must be ${AUGMENTS.join(" or ")}, got "${String(s.augment)}"`);
  if (!Number.isInteger(s.augmentPad) || s.augmentPad < 0 || s.augmentPad > MAX_AUGMENT_PAD) out.push(`--augment-pad must be an integer in 0..${MAX_AUGMENT_PAD}, got ${s.augmentPad}`);
  if (!(s.labelSmoothing >= 0 && s.labelSmoothing < 1)) out.push(`--label-smoothing must be a number in [0, 1), got ${s.labelSmoothing}`);
  if (typeof s.nesterov !== "boolean") out.push(`nesterov must be true or false`);
  if (s.nesterov && !(s.momentum > 0)) out.push(`--nesterov needs --momentum > 0 (PyTorch's SGD refuses it too), got --momentum ${s.momentum}`);
  return out;
}

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
  const recipe = recipeProblems(s);
  if (recipe.length) bad(recipe.join("; "));
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
