// `syncbn sweep`: every (norm mode × per-worker batch × seed) combination, one
// `runTrain` after another (this is a 2-core-machine tool: runs never overlap),
// under one overall progress bar; resumable and extensible (more modes, batches,
// seeds in the same folder reuse the runs done); writes results.csv, results.md
// and report.html (rendered by report.ts). Not a scheduler: no parallel runs, no
// retries of a run that failed for a reason that would fail again.

import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, platform, release } from "node:os";
import { join } from "node:path";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { SYNTHETIC_DEFAULT_TEST, SYNTHETIC_DEFAULT_TRAIN } from "../worker/data/synthetic.js";
import { recipeProblems } from "../worker/settings.js";
import { checkRunData } from "./preflight.js";
import { prepareOutDir } from "./out-dir.js";
import type { RunSummary } from "./monitor.js";
import { renderCsv, renderMarkdown, renderReportHtml, type SweepReportInfo, type SweepRunResult } from "./report.js";
import {
  DEFAULT_GRID,
  budgetText,
  combosOf,
  estimateSweepSeconds,
  expectedSteps,
  lrFor,
  lrRuleText,
  recipeText,
  runName,
  settingsFor,
  validateGrid,
  type SweepGrid,
} from "./sweep-grid.js";
import { checkFinishedRuns, claimOutDir, commandLine, planOutDir, readJson, syncbnVersion, type SweepFile } from "./sweep-folder.js";
import { runTrain, type TrainOptions } from "./train.js";
import { BnSpreadAccumulator, type BnLayerSpread } from "./report-bn.js";
import { presetText, type PresetRecord } from "./study-preset.js";

/** Fixed, so that running the same `syncbn sweep` command again resumes. */
export const DEFAULT_SWEEP_OUT = "runs/sweep";

interface FailureFile {
  reason: string;
  /** True when re-running would fail the same way (e.g. one value per BN channel); resume skips these. */
  deterministic: boolean;
}

/** The one line of a failed run's report that says why: the worker's own error, else the first line. */
export function failureReason(lines: readonly string[]): string {
  const own = lines.map((l) => l.trim()).find((l) => /SYNCBN_ERR_/.test(l) && !/SYNCBN_ERR_(ABORTED|WORKER_LOST|COORDINATOR_LOST)/.test(l));
  const line = own ?? lines.map((l) => l.trim()).find((l) => l) ?? "unknown failure";
  return line.replace(/^rank \d+: /, "").replace(/^syncbn: /, "");
}

const DETERMINISTIC = /SYNCBN_ERR_(SINGLE_VALUE|BAD_CONFIG)/;


/** Training loss per step, mean time in sync rounds per step (steps that report it) and the BN spread, from a run's metrics.jsonl. */
function readMetrics(dir: string): { loss: number[]; waitMsPerStep: number | null; bn: BnLayerSpread[] } {
  let text = "";
  try {
    text = readFileSync(join(dir, "metrics.jsonl"), "utf8");
  } catch {
    return { loss: [], waitMsPerStep: null, bn: [] };
  }
  const bn = new BnSpreadAccumulator();
  const loss: number[] = [];
  let waitSum = 0;
  let waitCount = 0;
  for (const line of text.split("\n")) {
    if (!line) continue;
    let m: { type?: string; loss?: number; syncWaitMs?: number | null };
    try {
      m = JSON.parse(line) as typeof m;
    } catch {
      continue; // a line cut by an interruption
    }
    bn.add(m);
    if (m.type !== "step") continue;
    if (typeof m.loss === "number") loss.push(m.loss);
    if (typeof m.syncWaitMs === "number") {
      waitSum += m.syncWaitMs;
      waitCount++;
    }
  }
  return { loss, waitMsPerStep: waitCount ? waitSum / waitCount : null, bn: bn.result() };
}

/** One run's result from its folder, or null if it has neither summary.json nor failure.json. */
function readRun(outDir: string, g: SweepGrid, norm: string, b: number, seed: number): SweepRunResult | null {
  const dir = join(outDir, "runs", runName(norm, b, seed));
  const base = { norm, perWorkerBatch: b, globalBatch: b * g.workers, seed };
  const s = readJson<RunSummary>(join(dir, "summary.json"));
  if (s) {
    const m = readMetrics(dir);
    // The last step has no time in sync rounds (workers report it with the next step): mean over the others × steps.
    const waitMs = m.waitMsPerStep ?? s.syncWaitMsPerStep;
    return {
      ...base,
      testAccuracy: s.testAccuracy,
      testLoss: s.testLoss,
      trainSeconds: s.wallSeconds,
      syncWaitSeconds: waitMs === null ? null : (waitMs * s.steps) / 1000,
      steps: s.steps,
      failure: s.testAccuracy === null ? "finished without a test evaluation" : null,
      trainLoss: m.loss,
      bn: m.bn,
    };
  }
  const f = readJson<FailureFile>(join(dir, "failure.json"));
  if (f) return { ...base, testAccuracy: null, testLoss: null, trainSeconds: null, syncWaitSeconds: null, steps: null, failure: f.reason, trainLoss: [] };
  return null;
}

export interface SweepOptions {
  grid: SweepGrid;
  /** The command as typed, for sweep.json and the report (default: this process's argv). */
  command?: string;
  /** Why the sweep uses the data it does when --data was not given (printed before the runs), or undefined. */
  dataNote?: string;
  /** The preset that set parts of the grid (cli/study-preset.ts), or null/undefined: recorded in sweep.json and the report. */
  preset?: PresetRecord | null;
  /** Where "fashion-mnist" is read from (the workers get the same environment). */
  fashionMnistDir?: string;
  outDir: string;
  roundTimeoutMs: number;
  /** How every run's workers are started (never changes a result). */
  launch?: Pick<TrainOptions, "transport" | "wire" | "pinCpus" | "ranksPerProc" | "threads" | "kernels">;
  tty: boolean;
  print(line: string): void;
  /** Rewrite the current terminal line (TTY only). */
  status(line: string): void;
  /** Print the grid and the estimate, then stop: no folder is made, no run started (--dry-run). */
  dryRun?: boolean;
  /** Serve each run's live dashboard there in turn (cli/live.ts); null: none. */
  dashboard?: { host: string; port: number } | null;
  /** The user's run token (needed for a dashboard off loopback). */
  token?: string;
}

export interface SweepResult {
  complete: boolean;
  rows: SweepRunResult[];
  markdown: string;
}

export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/**
 * Remaining-time estimate: run time ≈ a + b·steps fitted (least squares) to the
 * runs finished in this session; with fewer than two distinct step counts, the
 * mean run time. Runs of a sweep see the same samples, so the steps term carries
 * the per-step overhead that makes small batches slow.
 */
class Eta {
  private readonly done: { steps: number; seconds: number }[] = [];
  add(steps: number, seconds: number): void {
    this.done.push({ steps, seconds });
  }
  predict(steps: number | null): number | null {
    const n = this.done.length;
    if (n === 0) return null;
    const mean = this.done.reduce((a, d) => a + d.seconds, 0) / n;
    if (steps === null) return mean;
    const ms = this.done.reduce((a, d) => a + d.steps, 0) / n;
    const sxx = this.done.reduce((a, d) => a + (d.steps - ms) ** 2, 0);
    if (sxx === 0) return mean;
    const b = this.done.reduce((a, d) => a + (d.steps - ms) * (d.seconds - mean), 0) / sxx;
    const a = mean - b * ms;
    const minSeen = Math.min(...this.done.map((d) => d.seconds));
    return Math.max(minSeen / 2, a + Math.max(0, b) * steps);
  }
}

export function reportInfo(g: SweepGrid, missingRuns: number, commands: readonly string[] = [], preset: PresetRecord | null = null): SweepReportInfo {
  const cpu = cpus();
  return {
    workers: g.workers,
    model: g.model,
    data: g.data,
    norms: g.norms,
    batches: g.batches,
    seeds: g.seeds,
    budget: budgetText(g),
    lrRule: lrRuleText(g),
    settings: [
      ["training / test samples", `${g.trainSize ?? (g.data === "synthetic" ? `${SYNTHETIC_DEFAULT_TRAIN} (all)` : "all")} / ${g.testSize ?? (g.data === "synthetic" ? `${SYNTHETIC_DEFAULT_TEST} (all)` : "all")}`],
      ["BN", `eps ${g.bnEps}, running-stat momentum ${g.bnMomentum ?? "null (cumulative)"} (${g.bnMomentumStyle} style), eval with ${g.evalStats} statistics (rank 0's in local, group:K, ghost:G, renorm and cbn:K modes)`],
      ["training recipe", recipeText(g) || "no augmentation, no label smoothing"],
      ["batch renorm", `r_max ${g.renormRMax}, d_max ${g.renormDMax}, clips relaxed over ${g.renormWarmupSteps !== null ? `the first ${g.renormWarmupSteps} steps` : `the first ${Math.round(100 * (g.renormWarmupFraction ?? 0))}% of each run's steps`}`],
    ],
    date: new Date().toISOString().replace("T", " ").slice(0, 16) + " UTC",
    machine: `${cpu[0]?.model ?? "unknown CPU"} × ${cpu.length} cores, ${platform()} ${release()}`,
    node: process.version,
    version: syncbnVersion(),
    commands: [...commands],
    missingRuns,
    ...(preset ? { preset: presetText(preset) } : {}),
  };
}

/** Reads every run folder and writes results.csv, results.md and report.html. */
export function writeSweepOutputs(outDir: string, g: SweepGrid): { rows: SweepRunResult[]; missing: number; markdown: string } {
  const combos = combosOf(g);
  const rows: SweepRunResult[] = [];
  for (const c of combos) {
    const r = readRun(outDir, g, c.norm, c.batch, c.seed);
    if (r) rows.push(r);
  }
  // CSV and tables in grid order (norm, batch, seed), whatever order the runs went in.
  const key = (r: SweepRunResult): number[] => [g.norms.indexOf(r.norm), g.batches.indexOf(r.perWorkerBatch), g.seeds.indexOf(r.seed)];
  rows.sort((a, b) => {
    const ka = key(a), kb = key(b);
    return ka[0]! - kb[0]! || ka[1]! - kb[1]! || ka[2]! - kb[2]!;
  });
  const file = readJson<Partial<SweepFile>>(join(outDir, "sweep.json"));
  const info = reportInfo(g, combos.length - rows.length, file?.commands ?? [], file?.preset ?? null);
  const markdown = renderMarkdown(rows, info);
  writeFileSync(join(outDir, "results.csv"), renderCsv(rows));
  writeFileSync(join(outDir, "results.md"), markdown);
  writeFileSync(join(outDir, "report.html"), renderReportHtml(rows, info));
  return { rows, missing: combos.length - rows.length, markdown };
}

export async function runSweep(o: SweepOptions): Promise<SweepResult> {
  validateGrid(o.grid);
  // An existing folder may widen the grid (the union of its axes and ours): checked before anything runs.
  const plan = planOutDir(o.outDir, o.grid);
  const g = plan.grid;
  if (plan.additions) validateGrid(g);
  // A data problem would fail every run the same way: say so once, before anything starts.
  const stepsByBatch = new Map<number, number>();
  let flopsPerSample = 0;
  let testSamples = 0;
  for (const b of g.batches) {
    const s = settingsFor(g, g.norms[0]!, b, g.seeds[0]!);
    const plan = await checkRunData(s, g.workers, o.fashionMnistDir);
    stepsByBatch.set(b, plan.totalSteps);
    flopsPerSample = plan.trainFlopsPerSample;
    testSamples = plan.test;
    // Percentage milestones fall on steps only per run: two may meet in a short run.
    const recipe = recipeProblems(s, plan.totalSteps);
    if (recipe.length) throw new SyncbnError(ErrorCode.BadConfig, `--batches ${b}: ${recipe.join("; ")}`, {}, { beforeStart: true });
  }
  checkFinishedRuns(o.outDir, g);
  // The check `train` makes of its --out (a file there, a read-only disk: one line, exit 2); last, as it creates the folder.
  if (!o.dryRun) prepareOutDir(o.outDir);
  const combos = combosOf(g);
  const N = combos.length;
  const count = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;
  o.print(
    `syncbn sweep: ${count(N, "run")} = ${count(g.norms.length, "norm mode")} (${g.norms.join(", ")}) × ${count(g.batches.length, "per-worker batch", "per-worker batches")}` +
      ` (${g.batches.join(", ")}) × ${count(g.seeds.length, "seed")} (${g.seeds.join(", ")}); ${g.workers} workers, --model ${g.model}, --data ${g.data}`,
  );
  if (o.preset) o.print(`  preset: ${presetText(o.preset)}`);
  o.print(`  learning rate: ${lrRuleText(g)}: ${g.batches.map((b) => `batch ${b}/worker → lr ${Number(lrFor(g, b).toPrecision(3))}`).join(", ")}`);
  o.print(`  budget per run: ${budgetText(g)}; output in ${o.outDir}`);
  if (recipeText(g)) o.print(`  recipe: ${recipeText(g)}`);
  if (o.dataNote) o.print(`  data: ${o.dataNote}`);
  const done = (c: { name: string }): boolean => existsSync(join(o.outDir, "runs", c.name, "summary.json"));
  const estimate = estimateSweepSeconds(g, (b) => stepsByBatch.get(b)!, flopsPerSample, testSamples, done);
  o.print(`  estimated time: ${formatDuration(estimate)} on 2 cores shared with other work (costs per run, step and FLOP measured on ${g.model === "cnn" || g.model.startsWith("resnet:") ? "the resnet:3 sweep of docs/sweep-resnet3" : "the default sweep"}; the ETA corrects it after the first run)`);
  if (g.norms.some((n) => n === "local" || n === "renorm" || n.startsWith("group:") || n.startsWith("ghost:") || n.startsWith("cbn:"))) {
    o.print("  eval in local, group:K, ghost:G, renorm and cbn:K modes uses rank 0's running statistics (they differ per worker), as PyTorch DDP does");
  }
  if (o.dryRun) {
    o.print(`dry run: nothing started, ${o.outDir} untouched (the same command without --dry-run runs it)`);
    return { complete: false, rows: [], markdown: "" };
  }
  claimOutDir(o.outDir, plan, o.command ?? commandLine(process.argv), o.print, o.preset ?? null);

  let interrupted = false;
  const onSigint = (): void => {
    interrupted = true;
  };
  process.on("SIGINT", onSigint);
  process.on("SIGTERM", onSigint);
  const eta = new Eta();
  const started = performance.now();
  let lastDraw = 0;
  let lastDashboard = "";
  let lastLayout = "";
  try {
    for (let i = 0; i < N && !interrupted; i++) {
      const c = combos[i]!;
      const dir = join(o.outDir, "runs", c.name);
      const label = `${c.norm} b${c.batch} s${c.seed}`;
      if (existsSync(join(dir, "summary.json"))) {
        o.print(`run ${i + 1}/${N} ${label}: skipping, already done (${join(dir, "summary.json")})`);
        continue;
      }
      const before = readJson<FailureFile>(join(dir, "failure.json"));
      if (before?.deterministic) {
        o.print(`run ${i + 1}/${N} ${label}: skipping, failed before and would fail again (${before.reason})`);
        continue;
      }
      if (before) {
        o.print(`run ${i + 1}/${N} ${label}: retrying (failed before: ${before.reason})`);
        rmSync(join(dir, "failure.json"));
      }
      // Remaining time: this run's unfinished part plus every later run not done yet.
      const later = combos.slice(i + 1).filter((l) => !existsSync(join(o.outDir, "runs", l.name, "summary.json")));
      const t0 = performance.now();
      const remaining = (stepsDone: number, steps: number | null): string => {
        const fraction = steps ? stepsDone / steps : 0;
        const here = eta.predict(steps ?? expectedSteps(g, c.batch));
        if (here !== null) {
          const rest = later.reduce((a, l) => a + (eta.predict(expectedSteps(g, l.batch)) ?? 0), 0);
          return `ETA ${formatDuration(here * (1 - fraction) + rest)}`;
        }
        // No run finished yet in this session: extrapolate this run's time per step.
        if (!steps || stepsDone < 20) return "ETA after the first run";
        const perStep = (performance.now() - t0) / 1000 / stepsDone;
        const rest = later.reduce((a, l) => a + (expectedSteps(g, l.batch) ?? steps) * perStep, 0);
        return `ETA ~${formatDuration((steps - stepsDone) * perStep + rest)}`;
      };
      const bar = (stepsDone: number, steps: number | null): string => {
        const width = 24;
        const filled = Math.round(((i + (steps ? stepsDone / steps : 0)) / N) * width);
        const where = steps ? ` step ${stepsDone}/${steps}` : "";
        return `[${"#".repeat(filled)}${".".repeat(width - filled)}] run ${i + 1}/${N} ${label}${where} · ${formatDuration((performance.now() - started) / 1000)} elapsed · ${remaining(stepsDone, steps)}`;
      };
      if (o.tty) o.status(bar(0, null));
      else o.print(`run ${i + 1}/${N} ${label}: starting (${g.workers} × ${c.batch} = global batch ${g.workers * c.batch}, lr ${Number(lrFor(g, c.batch).toPrecision(3))}) · ${remaining(0, null)}`);
      const settings = settingsFor(g, c.norm, c.batch, c.seed);
      if (g.renormWarmupFraction !== null && expectedSteps(g, c.batch) === null) {
        // A folder of IDX files: the run's length is known from the data read up front.
        settings.renormWarmup = Math.round(g.renormWarmupFraction * (await checkRunData(settings, g.workers, o.fashionMnistDir)).totalSteps);
      }
      const r = await runTrain({
        ...o.launch,
        settings,
        workers: g.workers,
        outDir: dir,
        checkpointEvery: 0,
        resume: null,
        roundTimeoutMs: o.roundTimeoutMs,
        dashboard: o.dashboard ?? null,
        token: o.token,
        onDashboard: (url) => {
          if (url !== lastDashboard) o.print(`dashboard of the run in progress: ${url}`);
          lastDashboard = url;
        },
        // tty: the run reports every step through status(), which feeds our bar.
        tty: true,
        // The run's own lines stay quiet but its layout, printed when its shape differs from the last one printed (it follows the batch).
        print: (line) => {
          const shape = line.split(" (")[0]!;
          if (!line.startsWith("layout: ") || shape === lastLayout) return;
          lastLayout = shape;
          if (o.tty) o.status("");
          o.print(`  ${line}`);
        },
        status: (line) => {
          const m = /step (\d+)\/(\d+)/.exec(line);
          const now = performance.now();
          if (!m || !o.tty || now - lastDraw < 250) return;
          lastDraw = now;
          o.status(bar(Number(m[1]), Number(m[2])));
        },
      });
      const seconds = (performance.now() - t0) / 1000;
      // A Ctrl-C reaches the workers too: let our handler run before judging the failure.
      await new Promise((res) => setTimeout(res, 20));
      if (interrupted) break;
      let line: string;
      if (r.ok && r.summary) {
        eta.add(r.summary.steps, seconds);
        const acc = r.summary.testAccuracy;
        line = `run ${i + 1}/${N} ${label}: test accuracy ${acc === null ? "n/a" : `${(100 * acc).toFixed(2)}%`} (${r.summary.steps} steps, ${seconds.toFixed(1)} s)`;
      } else {
        const reason = failureReason(r.failure);
        const f: FailureFile = { reason, deterministic: DETERMINISTIC.test(reason) };
        mkdirSync(dir, { recursive: true });
        writeFileSync(join(dir, "failure.json"), `${JSON.stringify(f, null, 2)}\n`);
        line = `run ${i + 1}/${N} ${label}: FAILED, recorded and continuing: ${reason}`;
      }
      if (o.tty) o.status("");
      o.print(line);
    }
  } finally {
    process.off("SIGINT", onSigint);
    process.off("SIGTERM", onSigint);
    if (o.tty) o.status("");
  }
  const out = writeSweepOutputs(o.outDir, g);
  const took = formatDuration((performance.now() - started) / 1000);
  if (interrupted) {
    o.print(`interrupted after ${took}: ${N - out.missing} of ${N} runs have results; re-run the same command to resume`);
    throw new SyncbnError(ErrorCode.Aborted, `sweep interrupted; ${out.missing} run(s) left (re-run the same command to resume)`);
  }
  o.print("");
  for (const l of out.markdown.trimEnd().split("\n")) o.print(l);
  o.print("");
  o.print(`sweep done in ${took}: ${join(o.outDir, "results.csv")}, ${join(o.outDir, "results.md")}, ${join(o.outDir, "report.html")}`);
  return { complete: out.missing === 0, rows: out.rows, markdown: out.markdown };
}
