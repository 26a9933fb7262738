// The flags of `syncbn sweep`: its grid (lists of modes, batches and seeds), the
// learning-rate rule, and the run and launch flags it shares with `train`
// (cli/flags.ts), turned into a SweepGrid for runSweep. Flag parsing only.

import { resolveRanksPerProc } from "./blocks.js";
import { Command, InvalidArgumentError, Option } from "commander";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { checkDashboardBind, parseDashboardSpec } from "../coordinator/dashboard.js";
import { readEnv } from "./env.js";
import { join } from "node:path";
import { readJson, type SweepFile } from "./sweep-folder.js";
import { DEFAULT_FASHION_MNIST_DIR, probeDataset } from "../worker/data/dataset.js";
import {
  LR_RANGE,
  MAX_BATCH,
  MAX_SEED,
  addLaunchFlags,
  addRunFlags,
  checkLaunchFlags,
  intArg,
  numArg,
  rangeText,
  runSettingsFromFlags,
  workersOption,
  type LaunchFlags,
  type RunFlags,
} from "./flags.js";
import { DEFAULT_GRID, type SweepGrid } from "./sweep-grid.js";
import { DEFAULT_SWEEP_OUT, runSweep } from "./sweep.js";
import { chooseKernels } from "./kernels.js";
import { applyStudyPreset } from "./study-preset.js";

function listArg<T>(flag: string, item: (s: string) => T) {
  return (v: string): T[] => {
    const parts = v.split(",").map((s) => s.trim()).filter((s) => s !== "");
    if (parts.length === 0) throw new InvalidArgumentError(`${flag} needs a comma-separated list, got "${v}"`);
    return parts.map(item);
  };
}

const intItem = (flag: string, min: number, max: number) => (s: string): number => {
  const n = s.trim() === "" ? NaN : Number(s);
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${flag}: "${s}" is not an integer in ${min}..${max}`);
  return n;
};

interface SweepFlags extends RunFlags, LaunchFlags {
  workers: number;
  batches: number[];
  norms: string[];
  seeds: number[];
  baseLr: number;
  lrRefBatch: number;
  lr?: number;
  allData?: boolean;
  dryRun?: boolean;
  out: string;
}

/** The grid the flags describe (the run flags are the ones train takes, with the sweep's own defaults where they differ). */
export function gridFromFlags(f: SweepFlags): SweepGrid {
  const D = DEFAULT_GRID;
  const run = runSettingsFromFlags(f);
  return {
    workers: f.workers,
    norms: f.norms,
    batches: f.batches,
    seeds: f.seeds,
    model: run.model,
    data: run.data,
    epochs: run.epochs,
    steps: run.steps,
    lr: f.baseLr,
    lrRefBatch: f.lrRefBatch,
    fixedLr: f.lr ?? null,
    momentum: run.momentum,
    weightDecay: run.weightDecay,
    trainSize: f.trainSize ?? (f.allData ? null : D.trainSize),
    testSize: f.testSize ?? D.testSize,
    renormWarmupFraction: "percent" in f.renormWarmup ? f.renormWarmup.percent / 100 : null,
    renormWarmupSteps: "steps" in f.renormWarmup ? f.renormWarmup.steps : null,
    bnEps: run.bnEps,
    bnMomentum: run.bnMomentum,
    bnMomentumStyle: run.bnMomentumStyle,
    unbiasedRunningVar: run.unbiasedRunningVar,
    renormRMax: run.renormRMax,
    renormDMax: run.renormDMax,
    evalBatch: run.evalBatch,
    evalEvery: run.evalEvery,
    evalStats: run.evalStats,
    preciseBatches: run.preciseBatches,
    checksumEvery: run.checksumEvery,
    shuffle: run.shuffle,
    rankGrads: run.rankGrads,
    lrSchedule: run.lrSchedule,
    lrMilestones: run.lrMilestones,
    lrGamma: run.lrGamma,
    lrWarmup: run.lrWarmup,
    augment: run.augment,
    augmentPad: run.augmentPad,
    labelSmoothing: run.labelSmoothing,
    nesterov: run.nesterov,
  };
}

/**
 * Sets grid.data to the default sweep's data: the data of the sweep folder `outDir`
 * already holds (a re-run resumes it), else "fashion-mnist" when its files are in
 * place (the checks --data fashion-mnist makes), else "synthetic". A folder that is
 * there but too small for --train-size/--test-size is refused as with --data
 * fashion-mnist. Returns the line that says which and why.
 */
export async function chooseDefaultData(grid: SweepGrid, fashionMnistDir: string | undefined, outDir: string): Promise<string> {
  const before = readJson<Partial<SweepFile>>(join(outDir, "sweep.json"))?.grid?.data;
  if (typeof before === "string") {
    grid.data = before;
    return `${before}, as the sweep in ${outDir} has it (--data to choose)`;
  }
  try {
    await probeDataset("fashion-mnist", { seed: grid.seeds[0]!, trainSize: grid.trainSize ?? undefined, testSize: grid.testSize ?? undefined, fashionMnistDir });
    grid.data = "fashion-mnist";
    return `fashion-mnist, found in ${fashionMnistDir ?? DEFAULT_FASHION_MNIST_DIR} (the default when installed; --data synthetic for the embedded set)`;
  } catch (e) {
    if (!(e instanceof SyncbnError && e.code === ErrorCode.Data)) throw e;
    grid.data = "synthetic";
    return `synthetic, as Fashion-MNIST is not usable here (${e.detail.split(". ")[0]}); apt-get install dataset-fashion-mnist makes it the default (on the synthetic set local BN still falls behind sync at 1–2 samples per worker, but its images' varied contrast favours GroupNorm: the study's picture needs real images)`;
  }
}

/** Largest --lr-ref-batch: a global batch of MAX_WORKERS × MAX_BATCH samples. */
const MAX_LR_REF_BATCH = 1024 * 4096;

export function registerSweepCommand(program: Command): void {
  const D = DEFAULT_GRID;
  const cmd = program
    .command("sweep")
    .description("train every (norm mode × per-worker batch × seed) combination and write results.csv, results.md and report.html")
    .addOption(workersOption("workers (ranks) of every run", D.workers))
    .addOption(new Option("--batches <list>", `per-worker batches (each 1..${MAX_BATCH})`).argParser(listArg("--batches", intItem("--batches", 1, MAX_BATCH))).default(D.batches, D.batches.join(",")))
    .addOption(new Option("--norms <list>", "norm modes: sync, local, group:K (K ranks per sync group), ghost:G, renorm, groupnorm:G (G channel groups), cbn:K, none").argParser(listArg("--norms", (s) => s)).default(D.norms, D.norms.join(",")))
    .addOption(new Option("--seeds <list>", `seeds, e.g. 1,2,3 (each 0..${MAX_SEED})`).argParser(listArg("--seeds", intItem("--seeds", 0, MAX_SEED))).default(D.seeds, D.seeds.join(",")))
    .option("--base-lr <x>", `learning rate at global batch --lr-ref-batch; each run gets base-lr × global batch / lr-ref-batch (in ${rangeText(LR_RANGE)})`, numArg("--base-lr", LR_RANGE), D.lr)
    .option("--lr-ref-batch <n>", `reference global batch of the linear scaling rule (1..${MAX_LR_REF_BATCH})`, intArg("--lr-ref-batch", 1, MAX_LR_REF_BATCH), D.lrRefBatch)
    .option("--lr <x>", "one learning rate for every run instead (no scaling; not with --base-lr)", numArg("--lr", LR_RANGE))
    .option("--all-data", "train on the whole training set (instead of the default --train-size)")
    .option("--out <dir>", "sweep folder; re-running with the same folder and grid resumes", DEFAULT_SWEEP_OUT)
    .option("--dry-run", "print the grid, the learning rates, the budget and the estimated time, then stop (nothing is run or written)")
    .option("--dashboard <[host:]port>", "serve the live dashboard of the run in progress at [HOST:]PORT (each run in turn; off loopback it needs SYNCBN_TOKEN)", parseDashboardSpec);
  // The sweep's own defaults where they differ from train's (DEFAULT_GRID says why).
  addLaunchFlags(
    addRunFlags(cmd, {
      model: D.model,
      renormWarmup: { percent: 100 * (D.renormWarmupFraction ?? 0) },
      trainSize: `${D.trainSize}, or all with --all-data`,
      data: "fashion-mnist when installed, else synthetic",
    }),
  );
  cmd.action(async (f: SweepFlags & { dashboard?: { host: string; port: number } }) => {
    if (f.lr !== undefined && cmd.getOptionValueSource("baseLr") === "cli") {
      throw new SyncbnError(ErrorCode.BadConfig, "--lr (one rate for every run) and --base-lr (scaled with the global batch) exclude each other; give one");
    }
    checkLaunchFlags(f);
    const env = readEnv();
    // An explicit native without the addon is refused before the first run.
    chooseKernels(f.kernels, env.kernels);
    if (f.dashboard) checkDashboardBind(f.dashboard.host, env.token ?? "");
    const tty = Boolean(process.stdout.isTTY) && !env.isCI;
    const grid = gridFromFlags(f);
    // No --data: Fashion-MNIST where it is installed (real images, where local BN at 1–2 samples per worker
    // falls far behind sync BN within one short epoch), else the embedded synthetic set.
    const dataNote = cmd.getOptionValueSource("data") === "cli" ? undefined : await chooseDefaultData(grid, env.fashionMnistDir, f.out);
    // resnet:3 on Fashion-MNIST: the default study (cli/study-preset.ts) for every part no flag was given for.
    const preset = applyStudyPreset(grid, (attribute) => cmd.getOptionValueSource(attribute) === "cli");
    // An explicit --ranks-per-proc that splits a group of some --norms mode is refused before the first run.
    if (f.ranksPerProc !== undefined) for (const norm of grid.norms) resolveRanksPerProc(f.ranksPerProc, grid.workers, norm);
    await runSweep({
      grid,
      fashionMnistDir: env.fashionMnistDir,
      dataNote,
      preset,
      dryRun: f.dryRun === true,
      outDir: f.out,
      roundTimeoutMs: f.roundTimeout,
      launch: { transport: f.transport, wire: cmd.getOptionValueSource("wire") === "cli" ? f.wire : undefined, pinCpus: f.pinCpus, ranksPerProc: f.ranksPerProc, threads: f.threads, kernels: f.kernels },
      dashboard: f.dashboard ?? null,
      token: env.token,
      tty,
      print: (l) => console.log(l),
      status: (l) => process.stdout.write(`\r\x1b[2K${l}`),
    });
  });
}
