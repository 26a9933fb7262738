// One definition of every flag `train`, `worker`, `coordinator` and `sweep` share:
// name, documented range, default and help, and the parsers that refuse a value
// outside its range with one line naming the flag. Also the run settings those
// flags resolve to. Flag definitions only: no actions, no I/O.

import { InvalidArgumentError, Option, type Command } from "commander";
import { WIRES, type Wire } from "../coordinator/server.js";
import { parseModelKind, type ModelKind } from "../worker/nn/model.js";
import { AUGMENTS, BN_STYLE_DEFAULTS, DEFAULT_SETTINGS, MAX_AUGMENT_PAD, MAX_BATCH, MAX_SYNTHETIC_SAMPLES, MAX_WORKERS, RANK_GRADS, type Augment, type RankGrads, type TrainSettings } from "../worker/settings.js";
import { LR_SCHEDULES, type LrScheduleKind, type StepsOrPercent } from "../worker/nn/lr-schedule.js";
import type { MomentumStyle } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { PIN_MODES, type PinMode } from "./affinity.js";
import { RANKS_PER_PROC_HELP, parseRanksPerProc, type RanksPerProc } from "./blocks.js";
import { MAX_THREADS } from "./env.js";
import { kernelsOption } from "./kernels.js";
import type { KernelBackend } from "../worker/nn/kernels/backend.js";

import { MAX_TIMER_MS } from "../shared/protocol.js";
export { MAX_TIMER_MS };
export const MAX_EPOCHS = 10_000;
/** Steps and step counts (--steps, --eval-every, …): far beyond any run, below float precision trouble. */
export const MAX_STEPS = 100_000_000;
/** --train-size/--test-size as parsed; a data set bounds them further (worker/settings.ts, cli/preflight.ts). */
export const MAX_SAMPLES = 10_000_000;
export { MAX_BATCH, MAX_WORKERS };
export const MAX_SEED = 2 ** 32 - 1;
export const MAX_LR = 100;
export const MAX_PRECISE_BATCHES = 10_000;
export const MAX_RENORM_CLIP = 1000;
export const MIN_TIMEOUT_MS = 100;

/** An integer flag in [min, max]; anything else is refused naming the flag and the range. */
export function intArg(flag: string, min: number, max: number) {
  return (v: string): number => {
    const n = v.trim() === "" ? NaN : Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${flag} must be an integer in ${min}..${max}, got "${v}"`);
    return n;
  };
}

export interface NumRange {
  /** Lower bound; excluded when lowOpen. */
  min: number;
  max: number;
  lowOpen?: boolean;
  highOpen?: boolean;
}

export function rangeText(r: NumRange): string {
  return `${r.lowOpen ? "(" : "["}${r.min}, ${r.max}${r.highOpen ? ")" : "]"}`;
}

/** A finite number flag in a range such as (0, 100]. */
export function numArg(flag: string, r: NumRange) {
  return (v: string): number => {
    const n = v.trim() === "" ? NaN : Number(v);
    const ok = Number.isFinite(n) && (r.lowOpen ? n > r.min : n >= r.min) && (r.highOpen ? n < r.max : n <= r.max);
    if (!ok) throw new InvalidArgumentError(`${flag} must be a number in ${rangeText(r)}, got "${v}"`);
    return n;
  };
}

export const LR_RANGE: NumRange = { min: 0, max: MAX_LR, lowOpen: true };

/** --renorm-warmup: N steps, or P% of the run's steps (train and sweep alike). */
export type Warmup = { steps: number } | { percent: number };

/** N steps or P% of the run's steps, or null when v is neither (or out of range). */
function stepsOrPercent(v: string): Warmup | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(v);
  if (m) {
    const percent = Number(m[1]);
    if (percent <= 100) return { percent };
  } else if (/^\s*\d+\s*$/.test(v) && Number(v) <= MAX_STEPS) {
    return { steps: Number(v) };
  }
  return null;
}

/** A commander parser of a steps-or-percentage flag (--renorm-warmup, --warmup). */
export function stepsOrPercentArg(flag: string) {
  return (v: string): Warmup => {
    const w = stepsOrPercent(v);
    if (w === null) throw new InvalidArgumentError(`${flag} must be steps in 0..${MAX_STEPS} or a percentage of the run's steps in 0%..100%, got "${v}"`);
    return w;
  };
}

export const warmupArg = stepsOrPercentArg("--renorm-warmup");

/** --lr-milestones: a comma-separated list of steps or percentages of the run, increasing (checked with the run's length). */
export function milestonesArg(v: string): StepsOrPercent[] {
  const parts = v.split(",").map((p) => p.trim());
  const out = parts.map(stepsOrPercent);
  if (parts.length === 0 || out.some((m) => m === null)) {
    throw new InvalidArgumentError(`--lr-milestones must be a comma-separated list of steps in 0..${MAX_STEPS} or percentages in 0%..100%, e.g. 50%,75% or 3000,4000, got "${v}"`);
  }
  return out as StepsOrPercent[];
}

export function warmupText(w: Warmup): string {
  return "steps" in w ? `${w.steps}` : `${w.percent}%`;
}

/** Warm-up steps of a run of totalSteps steps. */
export function warmupSteps(w: Warmup, totalSteps: number): number {
  return "steps" in w ? w.steps : Math.round((w.percent / 100) * totalSteps);
}

/** "null" stays a string: commander turns a parser's null into "". */
function bnMomentumArg(v: string): number | "null" {
  if (v.trim() === "null") return "null";
  return numArg("--bn-momentum", { min: 0, max: 1 })(v);
}

/** --workers (train, sweep) and --world (worker, coordinator) are one flag: either name works everywhere. */
export function workersOption(description: string, dflt?: number): Option {
  const o = new Option("--world, --workers <n>", `${description} (1..${MAX_WORKERS}; --world and --workers are one flag)`).argParser(intArg("--workers", 1, MAX_WORKERS));
  return dflt === undefined ? o : o.default(dflt);
}

export function roundTimeoutOption(): Option {
  return new Option("--round-timeout <ms>", `deadline of every sync round (${MIN_TIMEOUT_MS}..${MAX_TIMER_MS})`).argParser(intArg("--round-timeout", MIN_TIMEOUT_MS, MAX_TIMER_MS)).default(60_000);
}

/** A worker's own round deadline: the coordinator's plus 5 s (the coordinator names the culprit first), within Node's timer range. */
export function workerRoundTimeout(roundTimeoutMs: number): number {
  return Math.min(roundTimeoutMs + 5_000, MAX_TIMER_MS);
}

/** --wire: how worker processes and the coordinator talk (coordinator/server.ts). */
export function wireOption(what = "how workers and the coordinator talk"): Option {
  return new Option("--wire <kind>", `${what}: ws (WebSocket) or tcp (raw TCP, the same messages with less work per message; same results, bit for bit)`)
    .choices([...WIRES])
    .default("ws");
}

const D = DEFAULT_SETTINGS;

const RANK_GRADS_HELP =
  "with several ranks per process: exact computes each rank's weight gradients as that rank alone would and sums them in float64, bit-identical to one rank per process; fused computes those of the process's samples in one GEMM per layer (float32: faster, differs by float32 rounding)";
const K = BN_STYLE_DEFAULTS;

/** The defaults of the run flags that differ between train and sweep. */
export interface RunFlagDefaults {
  model: ModelKind;
  renormWarmup: Warmup;
  /** How the --train-size default reads in the help. */
  trainSize: string;
  /** How the --data default reads in the help (absent: its value). */
  data?: string;
}

const TRAIN_DEFAULTS: RunFlagDefaults = { model: D.model, renormWarmup: { steps: D.renormWarmup }, trainSize: "all" };

/** --model: mlp, cnn, resnet:N or PATH.onnx; the model's own parser words the refusal. */
function modelArg(v: string): ModelKind {
  try {
    return parseModelKind(v);
  } catch (e) {
    throw new InvalidArgumentError(e instanceof SyncbnError ? e.detail : String(e));
  }
}

/**
 * The run-setting flags of train, worker and sweep (everything that decides a
 * result except the norm mode, batch, learning rate and seed, which sweep takes as
 * lists or a rule). Defaults shown are train's; sweep overrides a few.
 */
export function addRunFlags(cmd: Command, d: RunFlagDefaults = TRAIN_DEFAULTS): Command {
  return cmd
    .option("--model <kind>", "mlp | cnn | resnet:N (resnet:3 = ResNet-20) | PATH.onnx (your own model exported from PyTorch)", modelArg, d.model)
    .addOption(new Option("--data <spec>", "synthetic | fashion-mnist | DIR (folder of IDX files)").default(D.data, d.data))
    .addOption(new Option("--shuffle <on|off>", "off: no shuffling, rank k's t-th batch holds samples k + W·(t·B + j), as PyTorch's DistributedSampler(shuffle=False)").choices(["on", "off"]).default(D.shuffle))
    .addOption(new Option("--rank-grads <exact|fused>", RANK_GRADS_HELP).choices([...RANK_GRADS]).default(D.rankGrads))
    .option("--epochs <n>", `epochs to train (1..${MAX_EPOCHS}; ignored with --steps)`, intArg("--epochs", 1, MAX_EPOCHS), D.epochs)
    .option("--steps <n>", `total training steps (1..${MAX_STEPS}; overrides --epochs)`, intArg("--steps", 1, MAX_STEPS))
    .option("--momentum <x>", "SGD momentum, in [0, 1)", numArg("--momentum", { min: 0, max: 1, highOpen: true }), D.momentum)
    .option("--weight-decay <x>", "L2 weight decay, in [0, 1] (PyTorch's SGD default is 0)", numArg("--weight-decay", { min: 0, max: 1 }), D.weightDecay)
    .option("--bn-eps <x>", `BN epsilon, in (0, 1] (default ${K.torch.eps}; ${K.keras.eps} with --bn-momentum-style keras)`, numArg("--bn-eps", { min: 0, max: 1, lowOpen: true }))
    .option("--bn-momentum <x>", `BN running-stat momentum in [0, 1], or "null" for a cumulative average (default ${K.torch.momentum}; ${K.keras.momentum} with --bn-momentum-style keras)`, bnMomentumArg)
    .addOption(new Option("--bn-momentum-style <style>", "torch: r ← (1−m)r + m·batch; keras: r ← m·r + (1−m)·batch").choices(["torch", "keras"]).default(D.bnMomentumStyle))
    .option("--biased-running-var", "running var from M2/n (Keras/Flax) instead of M2/(n−1) (PyTorch)")
    .option("--train-size <n>", `use only the first N training samples (default: ${d.trainSize}; synthetic: ≤ ${MAX_SYNTHETIC_SAMPLES}; real data: ≤ its size)`, intArg("--train-size", 1, MAX_SAMPLES))
    .option("--test-size <n>", "use only the first N test samples (same bounds)", intArg("--test-size", 1, MAX_SAMPLES))
    .option("--eval-batch <n>", `samples per eval forward (1..${MAX_BATCH})`, intArg("--eval-batch", 1, MAX_BATCH), D.evalBatch)
    .option("--eval-every <n>", `also evaluate every N steps (0..${MAX_STEPS}; 0: at epoch ends only)`, intArg("--eval-every", 0, MAX_STEPS), D.evalEvery)
    .addOption(new Option("--eval-stats <kind>", "BN statistics for eval: ema (running averages) or precise (PreciseBN)").choices(["ema", "precise"]).default(D.evalStats))
    .option("--precise-batches <n>", `training batches PreciseBN recomputes statistics over (1..${MAX_PRECISE_BATCHES})`, intArg("--precise-batches", 1, MAX_PRECISE_BATCHES), D.preciseBatches)
    .option("--renorm-rmax <x>", `batch renorm r clip after warm-up, in [1, ${MAX_RENORM_CLIP}]`, numArg("--renorm-rmax", { min: 1, max: MAX_RENORM_CLIP }), D.renormRMax)
    .option("--renorm-dmax <x>", `batch renorm d clip after warm-up, in [0, ${MAX_RENORM_CLIP}]`, numArg("--renorm-dmax", { min: 0, max: MAX_RENORM_CLIP }), D.renormDMax)
    .addOption(
      new Option("--renorm-warmup <n|p%>", "steps (or a percentage of the run's steps, e.g. 25%) over which renorm clips relax from (1, 0) to (rmax, dmax)")
        .argParser(warmupArg)
        .default(d.renormWarmup, warmupText(d.renormWarmup)),
    )
    .addOption(new Option("--lr-schedule <kind>", "learning rate per iteration: constant, step (MultiStepLR: ×--lr-gamma at each of --lr-milestones) or cosine (CosineAnnealingLR, T_max = the run's steps, eta_min 0)").choices([...LR_SCHEDULES]).default(D.lrSchedule))
    .option("--lr-milestones <list>", "with --lr-schedule step: steps (or percentages of the run's steps) at which lr is multiplied by --lr-gamma, e.g. 50%,75%", milestonesArg)
    .option("--lr-gamma <x>", "with --lr-schedule step: the factor at each milestone, in (0, 1]", numArg("--lr-gamma", { min: 0, max: 1, lowOpen: true }), D.lrGamma)
    .addOption(
      new Option("--warmup <n|p%>", "linear learning-rate warm-up over N steps (or P% of the run's steps): step t uses lr·min(1, (t+1)/N) times the schedule")
        .argParser(stepsOrPercentArg("--warmup"))
        .default(D.lrWarmup, warmupText(D.lrWarmup)),
    )
    .addOption(new Option("--augment <kind>", "training augmentation: none, or crop-flip (random crop after zero padding of --augment-pad, horizontal flip), drawn from --seed per (epoch, sample)").choices([...AUGMENTS]).default(D.augment))
    .option("--augment-pad <n>", `crop-flip: zero padding on each side before the random crop (0..${MAX_AUGMENT_PAD})`, intArg("--augment-pad", 0, MAX_AUGMENT_PAD), D.augmentPad)
    .option("--label-smoothing <x>", "cross-entropy label smoothing, in [0, 1) (F.cross_entropy(label_smoothing=x))", numArg("--label-smoothing", { min: 0, max: 1, highOpen: true }), D.labelSmoothing)
    .option("--nesterov", "Nesterov momentum (torch.optim.SGD(nesterov=True)); needs --momentum > 0")
    .option("--checksum-every <n>", `compare replicas' parameter checksums every K steps (0..${MAX_STEPS}; 0: never)`, intArg("--checksum-every", 0, MAX_STEPS), D.checksumEvery)
    .addOption(roundTimeoutOption());
}

/** Flags of the commands that start workers on this machine (train, sweep); they never change a result. */
export function addLaunchFlags(cmd: Command): Command {
  return cmd
    .addOption(
      new Option("--transport <kind>", "process: worker processes over the --wire; thread: worker_threads in one process over MessagePorts (same results, bit for bit)")
        .choices(["process", "thread"])
        .default(undefined, "auto: thread when a rank's step is under 16 GFLOP (model FLOPs × batch), else process; the start line's layout: says which and why"),
    )
    .addOption(wireOption())
    .addOption(
      new Option("--pin-cpus <mode>", "pin worker processes to CPUs round-robin (Linux, taskset): auto pins when it keeps the cores balanced (W ≤ CPUs or a multiple of them)")
        .choices([...PIN_MODES])
        .default("auto"),
    )
    .addOption(new Option("--ranks-per-proc <R|auto>", RANKS_PER_PROC_HELP).argParser(parseRanksPerProc))
    .addOption(
      new Option("--threads <n|auto>", `compute threads per worker (convolutions split over them; same results, bit for bit): 1..${MAX_THREADS}, or auto = CPUs ÷ workers, at least 1`)
        .argParser(parseThreads)
        .default("auto"),
    )
    .addOption(kernelsOption());
}

/** commander argParser of --threads. */
export function parseThreads(v: string): Threads {
  if (v === "auto") return "auto";
  return intArg("--threads", 1, MAX_THREADS)(v);
}

export type Threads = number | "auto";

export interface RunFlags {
  model: ModelKind;
  data: string;
  shuffle: "on" | "off";
  rankGrads: RankGrads;
  epochs: number;
  steps?: number;
  momentum: number;
  weightDecay: number;
  bnEps?: number;
  bnMomentum?: number | "null";
  bnMomentumStyle: MomentumStyle;
  biasedRunningVar?: boolean;
  trainSize?: number;
  testSize?: number;
  evalBatch: number;
  evalEvery: number;
  evalStats: "ema" | "precise";
  preciseBatches: number;
  renormRmax: number;
  renormDmax: number;
  renormWarmup: Warmup;
  checksumEvery: number;
  roundTimeout: number;
  lrSchedule: LrScheduleKind;
  lrMilestones?: StepsOrPercent[];
  lrGamma: number;
  warmup: Warmup;
  augment: Augment;
  augmentPad: number;
  labelSmoothing: number;
  nesterov?: boolean;
}

export interface LaunchFlags {
  /** Absent: chosen by cli/layout.ts from the work of a rank's step. */
  transport?: "process" | "thread";
  wire: Wire;
  pinCpus: PinMode;
  /** Absent: chosen by cli/layout.ts (packed to the cores for small steps; else 1 up to 8 ranks, auto above). */
  ranksPerProc?: RanksPerProc;
  threads: Threads;
  /** --kernels (cli/kernels.ts); absent: SYNCBN_KERNELS, then the automatic choice. */
  kernels?: KernelBackend;
}

/** The launch flags that do not go together. */
export function checkLaunchFlags(f: LaunchFlags): void {
  if (f.transport === "thread" && f.wire !== "ws") {
    throw new SyncbnError(ErrorCode.BadConfig, "--wire applies to worker processes; --transport thread talks over MessagePorts (drop --wire, or use --transport process)");
  }
  if (f.transport === "thread" && f.pinCpus === "on") {
    throw new SyncbnError(ErrorCode.BadConfig, "--pin-cpus pins worker processes; --transport thread runs threads in one process (drop --pin-cpus, or use --transport process)");
  }
}

/** The settings the run flags give, the per-run ones (norm, batch, lr, seed, warm-up) left as defaults. */
export function runSettingsFromFlags(f: RunFlags): TrainSettings {
  const style = K[f.bnMomentumStyle];
  return {
    ...DEFAULT_SETTINGS,
    model: f.model,
    data: f.data,
    shuffle: f.shuffle,
    rankGrads: f.rankGrads,
    steps: f.steps ?? null,
    epochs: f.epochs,
    momentum: f.momentum,
    weightDecay: f.weightDecay,
    // Each style brings its own defaults: Keras's momentum 0.99 means what torch's 0.01 does.
    bnEps: f.bnEps ?? style.eps,
    bnMomentum: f.bnMomentum === undefined ? style.momentum : f.bnMomentum === "null" ? null : f.bnMomentum,
    bnMomentumStyle: f.bnMomentumStyle,
    unbiasedRunningVar: !f.biasedRunningVar,
    trainSize: f.trainSize ?? null,
    testSize: f.testSize ?? null,
    evalBatch: f.evalBatch,
    evalEvery: f.evalEvery,
    evalStats: f.evalStats,
    preciseBatches: f.preciseBatches,
    renormRMax: f.renormRmax,
    renormDMax: f.renormDmax,
    renormWarmup: "steps" in f.renormWarmup ? f.renormWarmup.steps : DEFAULT_SETTINGS.renormWarmup,
    checksumEvery: f.checksumEvery,
    lrSchedule: f.lrSchedule,
    lrMilestones: f.lrMilestones ?? [],
    lrGamma: f.lrGamma,
    lrWarmup: f.warmup,
    augment: f.augment,
    augmentPad: f.augmentPad,
    labelSmoothing: f.labelSmoothing,
    nesterov: f.nesterov === true,
  };
}
