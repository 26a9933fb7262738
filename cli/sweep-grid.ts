// The grid of a `syncbn sweep`: its flags' values, the defaults, the
// learning-rate rule, the TrainSettings of each run, and the up-front validation
// of every combination. No I/O and no processes (sweep.ts runs the grid).

import { parseNorm, statsGroupSize } from "../shared/config.js";
import { ErrorCode, SyncbnError, isSyncbnError } from "../shared/errors.js";
import { SYNTHETIC_DEFAULT_TRAIN } from "../worker/data/synthetic.js";
import { buildModel, isOnnxKind, normChannels, type ModelKind } from "../worker/nn/model.js";
import { DEFAULT_SETTINGS, conventionsOf, validateSettings, type RankGrads, type TrainSettings } from "../worker/settings.js";
import { lrScheduleText } from "../worker/nn/lr-schedule.js";
import { THREADS_BELOW_FLOPS_PER_RANK_STEP } from "./layout.js";

/** Fashion-MNIST's training split size (the standard IDX files). */
const FASHION_MNIST_TRAIN = 60000;

/** Everything that decides a sweep's results; sweep.json holds it so a resume cannot mix grids. */
export interface SweepGrid {
  workers: number;
  norms: string[];
  batches: number[];
  seeds: number[];
  model: ModelKind;
  data: string;
  epochs: number;
  /** Fixed steps per run (breaks the equal-samples rule; for quick checks), or null. */
  steps: number | null;
  /** --base-lr: the learning rate at global batch lrRefBatch; each run uses lr·globalBatch/lrRefBatch. */
  lr: number;
  lrRefBatch: number;
  /** --lr: one learning rate for every run (no scaling), or null for the scaling rule. */
  fixedLr: number | null;
  momentum: number;
  weightDecay: number;
  trainSize: number | null;
  testSize: number | null;
  /** Batch renorm warm-up as a fraction of each run's steps (runs differ in steps), or null when renormWarmupSteps is set. */
  renormWarmupFraction: number | null;
  /** Batch renorm warm-up in steps, the same in every run, or null. */
  renormWarmupSteps: number | null;
  // The BN, renorm and eval settings of every run (the flags train takes).
  bnEps: number;
  bnMomentum: number | null;
  bnMomentumStyle: TrainSettings["bnMomentumStyle"];
  unbiasedRunningVar: boolean;
  renormRMax: number;
  renormDMax: number;
  evalBatch: number;
  evalEvery: number;
  evalStats: TrainSettings["evalStats"];
  preciseBatches: number;
  checksumEvery: number;
  /** --shuffle (a folder made before the flag reads DEFAULT_GRID's "on"). */
  shuffle: "on" | "off";
  /** --rank-grads (a folder made before the flag reads DEFAULT_GRID's "exact", what it ran). */
  rankGrads: RankGrads;
  // The training recipe of every run (a folder made before these flags reads DEFAULT_GRID's, what it ran).
  /** --lr-schedule, --lr-milestones (steps, or percentages of each run's steps), --lr-gamma, --warmup. */
  lrSchedule: TrainSettings["lrSchedule"];
  lrMilestones: TrainSettings["lrMilestones"];
  lrGamma: number;
  lrWarmup: TrainSettings["lrWarmup"];
  augment: TrainSettings["augment"];
  augmentPad: number;
  labelSmoothing: number;
  nesterov: boolean;
}

/**
 * Defaults (docs/defaults.md has the measured tables): 8 workers, so per-worker
 * batch 1 is still a global batch of 8 for sync BN; the mlp (a fifth of the
 * cnn's FLOPs per sample; the effect is in its two BN layers just the same);
 * 8192 samples, one epoch per run, of Fashion-MNIST when installed (the data
 * itself is chosen in sweep-flags.ts; "synthetic" here is the fallback): there
 * sync BN reaches 81% at every batch while local BN fails at 1 sample per worker
 * and reaches 45% at 2 — 3m43s for the 20 runs on 2 shared cores with the default
 * layout (8 ranks on 2 threads). On the synthetic set sync BN reaches 36–41% and
 * local BN at 2 samples 14% (5m54s, a heavier-loaded machine); GroupNorm, which
 * normalizes each image, undoes that set's per-image gain and scores 40–44%.
 * lr 0.1 per 256 samples (Goyal et al. 2017): at global batch 64 and
 * 4096 samples it gave 32.8% against 31.2%, 26.1% and 20.8% for 2×, 8× and 32×
 * that, and kept 4-worker sync BN flat (31–33%) from global batch 4 to 64,
 * where 2× did not (26–33%).
 */
export const DEFAULT_GRID: SweepGrid = {
  workers: 8,
  norms: ["local", "sync", "groupnorm:8", "renorm"],
  batches: [1, 2, 4, 8, 16],
  seeds: [1],
  model: "mlp",
  data: "synthetic",
  epochs: 1,
  steps: null,
  lr: 0.1,
  lrRefBatch: 256,
  fixedLr: null,
  momentum: 0.9,
  weightDecay: DEFAULT_SETTINGS.weightDecay,
  trainSize: 8192,
  testSize: null,
  renormWarmupFraction: 0.25,
  renormWarmupSteps: null,
  bnEps: DEFAULT_SETTINGS.bnEps,
  bnMomentum: DEFAULT_SETTINGS.bnMomentum,
  bnMomentumStyle: DEFAULT_SETTINGS.bnMomentumStyle,
  unbiasedRunningVar: DEFAULT_SETTINGS.unbiasedRunningVar,
  renormRMax: DEFAULT_SETTINGS.renormRMax,
  renormDMax: DEFAULT_SETTINGS.renormDMax,
  evalBatch: DEFAULT_SETTINGS.evalBatch,
  evalEvery: DEFAULT_SETTINGS.evalEvery,
  evalStats: DEFAULT_SETTINGS.evalStats,
  preciseBatches: DEFAULT_SETTINGS.preciseBatches,
  checksumEvery: DEFAULT_SETTINGS.checksumEvery,
  shuffle: "on",
  rankGrads: "exact",
  lrSchedule: DEFAULT_SETTINGS.lrSchedule,
  lrMilestones: DEFAULT_SETTINGS.lrMilestones,
  lrGamma: DEFAULT_SETTINGS.lrGamma,
  lrWarmup: DEFAULT_SETTINGS.lrWarmup,
  augment: DEFAULT_SETTINGS.augment,
  augmentPad: DEFAULT_SETTINGS.augmentPad,
  labelSmoothing: DEFAULT_SETTINGS.labelSmoothing,
  nesterov: DEFAULT_SETTINGS.nesterov,
};

export function lrFor(g: SweepGrid, perWorkerBatch: number): number {
  return g.fixedLr ?? (g.lr * g.workers * perWorkerBatch) / g.lrRefBatch;
}

export function lrRuleText(g: SweepGrid): string {
  const sgd = `SGD momentum ${g.momentum}${g.nesterov ? " (Nesterov)" : ""}, weight decay ${g.weightDecay}`;
  const sched = g.lrSchedule === "constant" && "steps" in g.lrWarmup && g.lrWarmup.steps === 0 ? "" : `; per step: ${lrScheduleText({ kind: g.lrSchedule, milestones: g.lrMilestones, gamma: g.lrGamma, warmup: g.lrWarmup })}`;
  if (g.fixedLr !== null) return `fixed, lr = ${g.fixedLr} at every batch (--lr; no scaling)${sched} (${sgd})`;
  return `linear scaling, lr = ${g.lr} × global batch / ${g.lrRefBatch}${sched} (${sgd})`;
}

/** The recipe beyond SGD, for the report's header: "" when all defaults. */
export function recipeText(g: SweepGrid): string {
  const parts: string[] = [];
  if (g.augment !== "none") parts.push(`augmentation ${g.augment} (pad ${g.augmentPad})`);
  if (g.labelSmoothing > 0) parts.push(`label smoothing ${g.labelSmoothing}`);
  return parts.join(", ");
}

/** Training samples per epoch when known without loading the data. */
export function knownTrainCount(g: SweepGrid): number | null {
  if (g.trainSize !== null) return g.trainSize;
  if (g.data === "synthetic") return SYNTHETIC_DEFAULT_TRAIN;
  if (g.data === "fashion-mnist") return FASHION_MNIST_TRAIN;
  return null;
}

export function budgetText(g: SweepGrid): string {
  if (g.steps !== null) return `${g.steps} steps per run (fixed steps: runs with bigger batches see more samples)`;
  const n = knownTrainCount(g);
  const per = n === null ? "the training set" : `${n} training samples`;
  return `${g.epochs} epoch${g.epochs > 1 ? "s" : ""} of ${per} (steps = epochs × samples / global batch)`;
}

export function settingsFor(g: SweepGrid, norm: string, perWorkerBatch: number, seed: number): TrainSettings {
  return {
    ...DEFAULT_SETTINGS,
    model: g.model,
    norm,
    data: g.data,
    batch: perWorkerBatch,
    steps: g.steps,
    epochs: g.epochs,
    lr: lrFor(g, perWorkerBatch),
    momentum: g.momentum,
    weightDecay: g.weightDecay,
    seed,
    trainSize: g.trainSize,
    testSize: g.testSize,
    renormWarmup: renormWarmupFor(g, perWorkerBatch),
    bnEps: g.bnEps,
    bnMomentum: g.bnMomentum,
    bnMomentumStyle: g.bnMomentumStyle,
    unbiasedRunningVar: g.unbiasedRunningVar,
    renormRMax: g.renormRMax,
    renormDMax: g.renormDMax,
    evalBatch: g.evalBatch,
    evalEvery: g.evalEvery,
    evalStats: g.evalStats,
    preciseBatches: g.preciseBatches,
    checksumEvery: g.checksumEvery,
    shuffle: g.shuffle,
    rankGrads: g.rankGrads,
    lrSchedule: g.lrSchedule,
    lrMilestones: g.lrMilestones,
    lrGamma: g.lrGamma,
    lrWarmup: g.lrWarmup,
    augment: g.augment,
    augmentPad: g.augmentPad,
    labelSmoothing: g.labelSmoothing,
    nesterov: g.nesterov,
  };
}

/**
 * Warm-up steps of batch renorm: fixed steps, or a fixed fraction of the run, so
 * every batch gets the same schedule per sample seen. A fraction of a run whose
 * length depends on the data's size (a DIR) is resolved by runSweep once known.
 */
function renormWarmupFor(g: SweepGrid, perWorkerBatch: number): number {
  if (g.renormWarmupSteps !== null) return g.renormWarmupSteps;
  const steps = expectedSteps(g, perWorkerBatch);
  return steps === null ? DEFAULT_SETTINGS.renormWarmup : Math.round((g.renormWarmupFraction ?? 0) * steps);
}

/** Folder name of one run: "groupnorm:8" becomes "groupnorm_8" (":" is not portable in paths). */
export function runName(norm: string, perWorkerBatch: number, seed: number): string {
  return `${norm.replace(/:/g, "_")}-b${perWorkerBatch}-s${seed}`;
}

/**
 * Checks the whole grid before any run starts; all problems in one BadConfig
 * error. Batch-1 `local` (and ghost:1) is NOT an error here: it fails at its
 * first BN layer exactly as in PyTorch, and the sweep records that.
 */
export function validateGrid(g: SweepGrid): void {
  const problems: string[] = [];
  const add = (e: unknown): void => {
    const m = isSyncbnError(e) ? e.detail : e instanceof Error ? e.message : String(e);
    if (!problems.includes(m)) problems.push(m);
  };
  if (!Number.isInteger(g.workers) || g.workers < 1) problems.push(`--workers must be a positive integer, got ${g.workers}`);
  if (g.norms.length === 0) problems.push("--norms is empty");
  if (g.batches.length === 0) problems.push("--batches is empty");
  if (g.seeds.length === 0) problems.push("--seeds is empty");
  const lists: [string, readonly (string | number)[]][] = [["--norms", g.norms], ["--batches", g.batches], ["--seeds", g.seeds]];
  for (const [flag, list] of lists) {
    const dup = list.filter((v, i) => list.indexOf(v) !== i);
    if (dup.length) problems.push(`${flag} lists ${dup.join(", ")} twice`);
  }
  if (g.renormWarmupFraction !== null && !(g.renormWarmupFraction >= 0 && g.renormWarmupFraction <= 1)) problems.push(`--renorm-warmup must be in 0%..100%, got ${100 * g.renormWarmupFraction}%`);
  if (g.fixedLr !== null && !(g.fixedLr > 0 && g.fixedLr <= 100)) problems.push(`--lr must be in (0, 100], got ${g.fixedLr}`);
  if (!(g.lrRefBatch >= 1)) problems.push(`--lr-ref-batch must be ≥ 1, got ${g.lrRefBatch}`);
  if (problems.length) throw new SyncbnError(ErrorCode.BadConfig, problems.join("; "));
  const count = knownTrainCount(g);
  for (const norm of g.norms) {
    try {
      const mode = parseNorm(norm);
      statsGroupSize(mode, g.workers);
      const undivided = mode.kind === "ghost" ? g.batches.filter((b) => b % mode.ghostBatch !== 0) : [];
      if (mode.kind === "ghost" && undivided.length) {
        problems.push(`--norms ${norm} needs the ghost batch ${mode.ghostBatch} to divide every per-worker batch; it does not divide ${undivided.join(", ")}`);
        continue;
      }
      // Builds the model once per mode on this process: catches modes the model
      // builder does not support (yet) and channel-count constraints (groupnorm:G).
      // Not ghost:1: one sample per ghost batch is the ghost twin of batch-1 local
      // BN, a legitimate point of the study that fails per run (recorded as failed).
      const s = settingsFor(g, norm, g.batches[0]!, 0);
      if (!(mode.kind === "ghost" && mode.ghostBatch === 1)) buildModel({
        kind: g.model,
        inShape: [1, 28, 28],
        classes: 10,
        norm: mode,
        conventions: conventionsOf(s),
        sync: null,
        seed: 0,
        renorm: { rMax: s.renormRMax, dMax: s.renormDMax, warmup: s.renormWarmup, clock: null },
      });
      for (const b of g.batches) validateSettings(settingsFor(g, norm, b, g.seeds[0]!), g.workers);
    } catch (e) {
      add(e);
    }
  }
  if (count !== null) {
    for (const b of g.batches) {
      if (count < g.workers * b) problems.push(`the training set (${count} samples) is smaller than one global batch at --batches ${b} (${g.workers} × ${b})`);
    }
  }
  if (problems.length) throw new SyncbnError(ErrorCode.BadConfig, problems.join("; "));
}

/** The grid's axes: a sweep folder grows along them; every other field is a shared setting of all its runs. */
export const GRID_AXES = ["norms", "batches", "seeds"] as const;
type Axis = (typeof GRID_AXES)[number];
const isAxis = (k: string): k is Axis => (GRID_AXES as readonly string[]).includes(k);

/** The shared settings (everything but the axes) that differ between two grids, as "name was X, now Y". */
export function sharedSettingDiffs(was: Partial<SweepGrid>, now: SweepGrid): string[] {
  return (Object.keys(now) as (keyof SweepGrid)[])
    .filter((k) => !isAxis(k) && JSON.stringify(was[k]) !== JSON.stringify(now[k]))
    .map((k) => `${k} was ${JSON.stringify(was[k])}, now ${JSON.stringify(now[k])}`);
}

/**
 * The grid covering both: same shared settings (those of `now`), each axis the
 * union, `was`'s values first in their order, then the new ones (batches and
 * seeds sorted ascending, norms in the order given).
 */
export function unionGrid(was: SweepGrid, now: SweepGrid): SweepGrid {
  const merge = <T>(a: readonly T[], b: readonly T[]): T[] => [...a, ...b.filter((v) => !a.includes(v))];
  return {
    ...now,
    norms: merge(was.norms, now.norms),
    batches: merge(was.batches, now.batches).sort((a, b) => a - b),
    seeds: merge(was.seeds, now.seeds).sort((a, b) => a - b),
  };
}

/** What `now` adds to `was` along the axes, e.g. "seeds 2, 3; norms group:2" ("" when nothing). */
export function gridAdditions(was: SweepGrid, now: SweepGrid): string {
  return GRID_AXES.map((k) => {
    const added = (now[k] as readonly (string | number)[]).filter((v) => !(was[k] as readonly (string | number)[]).includes(v));
    return added.length ? `${k} ${added.join(", ")}` : "";
  })
    .filter(Boolean)
    .join("; ");
}

export interface Combo {
  norm: string;
  batch: number;
  seed: number;
  name: string;
}

/** Seed outermost (an interrupted multi-seed sweep still has whole grids), then mode, then batch. */
export function combosOf(g: SweepGrid): Combo[] {
  return g.seeds.flatMap((seed) => g.norms.flatMap((norm) => g.batches.map((batch) => ({ norm, batch, seed, name: runName(norm, batch, seed) }))));
}

export function expectedSteps(g: SweepGrid, batch: number): number | null {
  if (g.steps !== null) return g.steps;
  const n = knownTrainCount(g);
  return n === null ? null : g.epochs * Math.floor(n / (g.workers * batch));
}

// What a sweep run costs with the default layout (cli/layout.ts), per model family,
// on 2 cores shared with other work: start-up and the final evaluation per run, the
// fixed cost of a step (its gradient round, scheduling), each BN round of a step,
// and the training FLOPs at the rate such a step reaches (threads for small work
// per rank-step, one process per rank for big). The mlp's costs are fitted to the
// default sweep (docs/defaults.md); conv models' (cnn, resnet:N, native kernels) to
// the one-epoch resnet:3 sweep (docs/sweep-resnet3/results.csv).
interface RunCosts {
  runSeconds: number;
  stepMs: number;
  bnRoundMs: number;
  threadsFlopsPerSecond: number;
  processesFlopsPerSecond: number;
}
const MLP_COSTS: RunCosts = { runSeconds: 2, stepMs: 14, bnRoundMs: 5, threadsFlopsPerSecond: 5e9, processesFlopsPerSecond: 5e9 };
// Conv (cnn, resnet:N) on the native kernels: fitted to the 20 runs of the
// one-epoch resnet:3 sweep in docs/sweep-resnet3/results.csv (7 Dec 2026, load 2–3;
// 8192 samples per run at 1–16 per worker, threads for 1–4, processes for 8–16):
// least squares with start-up and evaluation fixed at 3 s gives 10.3 ms per step,
// 0.11 ms per BN round and 50.7 GFLOP/s, the 20 runs' total (801.5 s) exactly and
// each run within the load's swing. The study's probes on the WebAssembly-era
// kernels ran at 8.9–14.7 GFLOP/s (docs/study.md).
export const CONV_COSTS: RunCosts = { runSeconds: 3, stepMs: 10.3, bnRoundMs: 0.11, threadsFlopsPerSecond: 50.7e9, processesFlopsPerSecond: 50.7e9 };
/** cbn:K (K > 1) computes one more weight-gradient-sized GEMM per norm layer and step (docs/cbn.md#cost): a third more training FLOPs. */
const CBN_FLOPS_FACTOR = 4 / 3;

/** BN rounds one step of `norm` makes on model `kind`: sync and group:K (K > 1) two per norm layer (statistics forward, gradients backward), others none. */
export function bnRoundsPerStep(kind: ModelKind, norm: string, workers: number): number {
  const mode = parseNorm(norm);
  if (mode.kind !== "sync" && mode.kind !== "group") return 0;
  if (statsGroupSize(mode, workers) <= 1) return 0;
  // An ONNX model's norm layers are known only after import: counted as none (the estimate is low).
  return isOnnxKind(kind) ? 0 : 2 * normChannels(kind).length;
}

/**
 * Seconds a sweep's runs not `done` should take on 2 cores: per run, start-up plus its steps'
 * fixed and BN-round costs plus its training FLOPs (`stepsOf(batch)` steps of
 * W × batch samples, `trainFlopsPerSample` each) and the evaluation's.
 */
export function estimateSweepSeconds(g: SweepGrid, stepsOf: (batch: number) => number, trainFlopsPerSample: number, testSamples: number, done: (c: Combo) => boolean = () => false): number {
  const costs = g.model === "mlp" || isOnnxKind(g.model) ? MLP_COSTS : CONV_COSTS;
  let seconds = 0;
  for (const c of combosOf(g)) {
    if (done(c)) continue;
    const steps = stepsOf(c.batch);
    const stepMs = costs.stepMs + costs.bnRoundMs * bnRoundsPerStep(g.model, c.norm, g.workers);
    const mode = parseNorm(c.norm);
    const factor = mode.kind === "cbn" && mode.window > 1 ? CBN_FLOPS_FACTOR : 1;
    const flops = steps * g.workers * c.batch * trainFlopsPerSample * factor + (testSamples * trainFlopsPerSample) / 3;
    const threads = trainFlopsPerSample * c.batch < THREADS_BELOW_FLOPS_PER_RANK_STEP;
    seconds += costs.runSeconds + (steps * stepMs) / 1000 + flops / (threads ? costs.threadsFlopsPerSecond : costs.processesFlopsPerSecond);
  }
  return seconds;
}
