// Watches a run through the coordinator's completed rounds (gradient rounds carry
// loss/accuracy/timing sums, eval rounds the test metrics): progress display,
// metrics.jsonl, and the final summary. Used by `train` and `coordinator`;
// it never talks to workers. Numbering everywhere: `step` = steps completed
// (the first step is 1), `epoch` = the 1-based epoch that step belongs to.

import { appendFileSync, closeSync, constants, fstatSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Coordinator, RoundEvent } from "../coordinator/coordinator.js";
import { GradExtra, SumRound } from "../shared/protocol.js";
import { parseNorm } from "../shared/config.js";
import { describeEvalStatistics } from "../worker/evaluate.js";
import { reasonOf, writeFileAtomic } from "../worker/atomic-file.js";
import { checkFolderStill, type FolderIdentity } from "../worker/out-folder.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import type { RunRecord } from "./run-record.js";
import { evalProgressText, fitProgressLine, logThisStep, plural, progressBar, type ProgressField } from "./progress-line.js";

export interface RunSummary {
  testAccuracy: number | null;
  testLoss: number | null;
  steps: number;
  epochs: number;
  workers: number;
  perWorkerBatch: number;
  globalBatch: number;
  norm: string;
  model: string;
  data: string;
  msPerStep: number | null;
  /** Median time a worker spent in sync rounds per step (send to result), ms; the two parts below. */
  syncWaitMsPerStep: number | null;
  /** …of which waiting for the round's last contribution (other ranks, including their CPU time when workers share cores). */
  waitOtherRanksMsPerStep: number | null;
  /** …of which the rest: wire both ways, the coordinator's reduction, and waiting to be scheduled. */
  roundTripMsPerStep: number | null;
  samplesPerSecond: number | null;
  /** From the monitor's start (in `train`: the coordinator up) to the first completed round: processes, data, connections. */
  startupSeconds: number | null;
  wallSeconds: number;
  /** Training loss of the last step's global batch (not smoothed). */
  finalTrainLoss: number | null;
  evalStatistics: string;
  evals: { step: number; epoch: number; testAccuracy: number; testLoss: number }[];
  /** Elastic mode: workers dropped during the run, and the step (counted from 1, as the log prints it) during which each was lost; the others redid it without them. */
  workersLost: { rank: number; step: number; reason: string }[];
  workersAtEnd: number;
  /** Ranks (= workers), the worker processes hosting them, and ranks per process (--ranks-per-proc). */
  ranks: number;
  processes: number;
  ranksPerProcess: number;
  /** Every setting, the command line and the versions (cli/run-record.ts), when the monitor was given them. */
  settings?: RunRecord["settings"];
  command?: string;
  versions?: RunRecord["versions"];
}

export interface MonitorOptions {
  worldSize: number;
  /** Ranks per worker process (default 1). */
  ranksPerProc?: number;
  perWorkerBatch: number;
  norm: string;
  model: string;
  data: string;
  outDir: string | null;
  /** outDir as the run prepared it: every write first checks it is still that folder (not deleted or replaced). */
  outFolder?: FolderIdentity | null;
  evalStats?: "ema" | "precise";
  preciseBatches?: number;
  /** Total steps and steps per epoch, when known up front (for the progress bar). */
  totalSteps: number | null;
  stepsPerEpoch: number | null;
  /** First step (non-zero on resume). */
  startStep: number;
  /** The checkpoint resumed from (recorded in metrics.jsonl). */
  resumedFrom?: string | null;
  /** metrics.jsonl could not be written (disk full, …): the run should stop; later lines are dropped. */
  onFailure?(err: SyncbnError): void;
  tty: boolean;
  print(line: string): void;
  /** Rewrite the current terminal line (TTY only). */
  status(line: string): void;
  /** The run's settings, command line and versions: in the start line and the summary. */
  run?: RunRecord;
  /** The terminal's width, read at every update (it can be resized); undefined: do not fit. */
  columns?(): number | undefined;
}

export function median(values: readonly number[]): number | null {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** One step line of metrics.jsonl (see docs/formats.md). */
/** One metrics.jsonl line: its type and the step it belongs to, then its fields. */
type MetricsLine = { readonly type: string; readonly step: number };

interface StepLine {
  type: "step";
  step: number;
  epoch: number;
  loss: number;
  trainAccuracy: number;
  msPerStep: number | null;
  syncWaitMs: number | null;
  waitOtherRanksMs: number | null;
  roundTripMs: number | null;
  samplesPerSecond: number | null;
  /** The learning rate the step used (the schedule's, with warm-up). */
  lr: number;
}

/** Plain logs: the least time between two eval progress lines. */
const EVAL_LOG_EVERY_MS = 5_000;

/** Steps whose loss the progress line averages. */
const PROGRESS_LOSS_STEPS = 20;

/** Seconds as m:ss (h:mm:ss past an hour), for the progress line. */
export function clock(seconds: number): string {
  const t = Math.max(0, Math.round(seconds));
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), sec = String(t % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

export class RunMonitor {
  private readonly started = performance.now();
  /** performance.now() at the first completed round: start-up ends, training timing begins. */
  private trainingFrom: number | null = null;
  private startupSeconds: number | null = null;
  private lastStepAt: number | null = null;
  private readonly stepMs: number[] = [];
  private readonly waitMs: number[] = [];
  private readonly otherRanksMs: number[] = [];
  private readonly roundTripMs: number[] = [];
  /**
   * Workers report a step's time in sync rounds with the next step's gradient
   * round, so a step's line waits for it (or for flush()); lines written
   * meanwhile (evals, lost workers) queue behind it to keep the file in order.
   */
  private pendingStep: StepLine | null = null;
  private readonly queued: MetricsLine[] = [];
  private readonly evals: RunSummary["evals"] = [];
  private stepsDone = 0;
  private lastLoss: number | null = null;
  private lastPrinted = -1;
  private lastPrintAt = 0;
  private readonly metricsPath: string | null;
  private readonly recentLoss: number[] = [];
  private lastGlobalBatch = 0;
  private readonly lost: RunSummary["workersLost"] = [];
  /** metrics.jsonl is replaced (fresh run) or trimmed to the resumed step at the first line, not before: a run refused at start leaves it alone. */
  private metricsStarted = false;
  private metricsFailure: SyncbnError | null = null;
  /** The metrics.jsonl this run began (device, inode): appends go to it or fail, never to a file begun anew. */
  private metricsFile: { dev: bigint; ino: bigint } | null = null;

  private readonly o: MonitorOptions;

  constructor(opts: MonitorOptions) {
    const o = { ...opts };
    this.o = o;
    if (o.outDir) {
      this.metricsPath = join(o.outDir, "metrics.jsonl");
    } else {
      this.metricsPath = null;
    }
  }

  attach(c: Coordinator): void {
    const prev = c.events.onRound;
    c.events.onRound = (ev) => {
      prev?.(ev);
      this.onRound(ev);
    };
    const prevLost = c.events.onWorkersLost;
    c.events.onWorkersLost = (ranks, step, reason) => {
      prevLost?.(ranks, step, reason);
      // step: the one being redone without them, counted from 1 as the progress line and this log print it.
      for (const rank of ranks) this.lost.push({ rank, step: step + 1, reason });
      this.writeInOrder({ type: "worker-lost", ranks, step, reason });
      if (this.o.tty) this.o.status("");
      this.o.print(`worker rank(s) ${ranks.join(", ")} ${reason}; continuing from step ${step + 1} with ${plural(this.o.worldSize - this.lost.length, "worker")} (--on-worker-loss continue)`);
    };
  }

  /** One more line of metrics.jsonl from another view of the run (e.g. `{"type":"bn"}`, cli/live.ts). */
  record<T extends MetricsLine>(obj: T): void {
    this.write(obj);
  }

  private write<T extends MetricsLine>(obj: T): void {
    const path = this.metricsPath;
    if (!path || this.metricsFailure) return;
    const line = `${JSON.stringify(obj)}\n`;
    try {
      if (this.o.outFolder) checkFolderStill(this.o.outFolder);
      if (this.metricsStarted && this.metricsFile) {
        appendToSame(path, line, this.metricsFile);
      } else {
        // `syncbn coordinator` is not told of a resume: its first step says it.
        const from = this.o.startStep > 0 ? this.o.startStep : obj.type === "start" ? obj.step : obj.type === "step" ? obj.step - 1 : 0;
        const kept = from > 0 ? linesBefore(path, from) : "";
        const resumed = from > 0 ? `${JSON.stringify({ type: "resume", step: from, checkpoint: this.o.resumedFrom ?? null })}\n` : "";
        replaceFile(path, kept + resumed + line);
        const st = statSync(path, { bigint: true });
        this.metricsFile = { dev: st.dev, ino: st.ino };
        this.metricsStarted = true;
      }
    } catch (e) {
      this.metricsFailure =
        e instanceof SyncbnError
          ? e
          : new SyncbnError(
              ErrorCode.Output,
              `cannot write ${path} (${reasonOf(e)}); the lines written before are kept; free some space or choose another --out, then resume from the last checkpoint`,
            );
      this.o.onFailure?.(this.metricsFailure);
    }
  }

  /** The 1-based epoch of the step with 0-based index `step`. */
  private epochOf(step: number): number {
    return this.o.stepsPerEpoch ? Math.floor(step / this.o.stepsPerEpoch) + 1 : 1;
  }

  /** Writes now, or behind the step line still waiting for its timing. */
  private writeInOrder<T extends MetricsLine>(obj: T): void {
    if (this.pendingStep) this.queued.push(obj);
    else this.write(obj);
  }

  /** Writes the step line still waiting for its workers' timing (without it) and what queued behind it. */
  flush(): void {
    if (this.pendingStep) this.write(this.pendingStep);
    this.pendingStep = null;
    for (const obj of this.queued.splice(0)) this.write(obj);
  }

  onRound(ev: RoundEvent): void {
    if (this.trainingFrom === null) {
      // The first completed round: every worker is up, has its data and is connected.
      this.trainingFrom = performance.now();
      this.startupSeconds = (this.trainingFrom - this.started) / 1000;
      // ev.step counts the steps completed before this round: the checkpoint's step on a resume, also for `syncbn coordinator`, which is not told.
      this.write({ type: "start", step: this.o.startStep > 0 ? this.o.startStep : ev.step, workers: this.o.worldSize, ...this.layout(), startupSeconds: this.startupSeconds, ...this.o.run });
    }
    if (ev.phase === "grad" && ev.extra) this.onStep(ev.step, ev.extra, ev.waitOtherRanksMs ?? null);
    else if (ev.phase === "sum" && ev.layer === SumRound.Eval) this.onEval(ev.step, ev.data as Float64Array);
  }

  private onStep(step: number, extra: Float64Array, otherRanksSum: number | null): void {
    const now = performance.now();
    // Workers contributing to this step (fewer than W after an elastic loss).
    const W = extra[GradExtra.count]! / this.o.perWorkerBatch;
    this.o.totalSteps ??= extra[GradExtra.totalSteps]! / W;
    this.o.stepsPerEpoch ??= extra[GradExtra.stepsPerEpoch]! / W;
    const count = extra[GradExtra.count]!;
    const loss = extra[GradExtra.lossSum]! / count;
    const acc = extra[GradExtra.correct]! / count;
    // This gradient round carries the workers' time in sync rounds during the previous step.
    if (this.pendingStep) this.completeStep(this.pendingStep, extra[GradExtra.syncWaitMs]! / W);
    const ms = this.lastStepAt === null ? null : now - this.lastStepAt;
    this.lastStepAt = now;
    this.stepsDone++;
    this.lastLoss = loss;
    this.recentLoss.push(loss);
    if (this.recentLoss.length > PROGRESS_LOSS_STEPS) this.recentLoss.shift();
    // The first 5 steps warm up (JIT, buffers, connections): not in the medians.
    if (this.stepsDone > 5 && ms !== null) this.stepMs.push(ms);
    this.lastGlobalBatch = count;
    this.pendingStep = {
      type: "step",
      step: step + 1,
      epoch: this.epochOf(step),
      loss,
      trainAccuracy: acc,
      msPerStep: ms,
      syncWaitMs: null,
      waitOtherRanksMs: otherRanksSum === null ? null : otherRanksSum / W,
      roundTripMs: null,
      samplesPerSecond: ms ? (count / ms) * 1000 : null,
      lr: extra[GradExtra.lr]!,
    };
    this.progress(step);
  }

  /** Fills in a step's time in sync rounds (reported one step late) and writes its line. */
  private completeStep(line: StepLine, syncWaitMs: number): void {
    line.syncWaitMs = syncWaitMs;
    // Both measure the same rounds, the worker from send to result, the coordinator from arrival to the last arrival.
    if (line.waitOtherRanksMs !== null) line.roundTripMs = Math.max(0, syncWaitMs - line.waitOtherRanksMs);
    if (line.step - this.o.startStep > 5) {
      this.waitMs.push(syncWaitMs);
      if (line.waitOtherRanksMs !== null) this.otherRanksMs.push(line.waitOtherRanksMs);
      if (line.roundTripMs !== null) this.roundTripMs.push(line.roundTripMs);
    }
    this.flush();
  }

  private progress(step: number): void {
    const total = this.o.totalSteps;
    const smooth = this.recentLoss.reduce((a, b) => a + b, 0) / this.recentLoss.length;
    const med = median(this.stepMs.slice(-50));
    const sps = med ? (this.lastGlobalBatch / med) * 1000 : null;
    const epochs = total && this.o.stepsPerEpoch ? Math.ceil(total / this.o.stepsPerEpoch) : null;
    const wait = median(this.waitMs.slice(-50));
    const others = median(this.otherRanksMs.slice(-50));
    const now = performance.now();
    const elapsed = (now - this.started) / 1000;
    // ETA from this run's pace since start-up (steps and evaluations alike).
    const done = step + 1 - this.o.startStep;
    const eta = total && this.trainingFrom !== null && done > 0 ? (((now - this.trainingFrom) / 1000) * (total - step - 1)) / done : null;
    if (this.stepsDone === 1) {
      this.o.print(
        `progress: loss = mean training loss of the last ${PROGRESS_LOSS_STEPS} steps; sync = ms per step a worker spends in sync rounds, ` +
          "of which waiting for other ranks (their compute, and CPU time when workers share cores); the rest is the round trip",
      );
    }
    const fields: ProgressField[] = [
      ...(this.o.tty ? [{ text: progressBar(total ? (step + 1) / total : 0), keep: 6 }] : []),
      { text: `step ${step + 1}${total ? `/${total}` : ""} epoch ${this.epochOf(step)}${epochs ? `/${epochs}` : ""}`, short: `step ${step + 1}${total ? `/${total}` : ""}`, keep: 0, glue: " " },
      { text: `loss (avg ${plural(this.recentLoss.length, "step")}) ${smooth.toFixed(4)}`, short: `loss ${smooth.toFixed(4)}`, keep: 1 },
      ...(sps ? [{ text: `${Math.round(sps)} samples/s`, keep: 3 }] : []),
      ...(wait !== null ? [{ text: `sync ${wait.toFixed(1)} ms${others !== null ? ` (${Math.min(others, wait).toFixed(1)} other ranks)` : ""}`, short: `sync ${wait.toFixed(1)} ms`, keep: 5 }] : []),
      { text: `${clock(elapsed)} elapsed${eta !== null ? `, ETA ${clock(eta)}` : ""}`, ...(eta !== null ? { short: `ETA ${clock(eta)}` } : {}), keep: 2 },
    ];
    if (this.o.tty) {
      this.o.status(fitProgressLine(fields, this.o.columns?.()));
    } else {
      // Plain logs: about 20 lines per run (the last step always), and at least one every 10 s.
      const now = performance.now();
      if (logThisStep(step + 1, total, this.o.startStep + 1) || now - this.lastPrintAt > 10_000) {
        if (step !== this.lastPrinted) this.o.print(fitProgressLine(fields, undefined));
        this.lastPrinted = step;
        this.lastPrintAt = now;
      }
    }
  }

  /**
   * Evaluation under way after step `step`: `done` of `total` test samples (the
   * lowest rank's pace). In place on a TTY; in a plain log at most one line per
   * 5 s, so a long evaluation shows it is alive and a short one adds nothing.
   */
  evalProgress(step: number, done: number, total: number): void {
    const text = evalProgressText(step, done, total);
    if (this.o.tty) {
      this.o.status(fitProgressLine([{ text, keep: 0 }], this.o.columns?.()));
    } else if (performance.now() - this.lastPrintAt > EVAL_LOG_EVERY_MS) {
      this.o.print(text);
      this.lastPrintAt = performance.now();
    }
  }

  private onEval(step: number, data: Float64Array): void {
    const [lossSum, correct, count] = [data[0]!, data[1]!, data[2]!];
    const e = { step: step + 1, epoch: this.epochOf(step), testAccuracy: correct / count, testLoss: lossSum / count };
    this.evals.push(e);
    this.writeInOrder({ type: "eval", ...e, testSamples: count });
    if (this.o.tty) this.o.status("");
    this.o.print(`eval after step ${e.step} (epoch ${e.epoch}): test accuracy ${(100 * e.testAccuracy).toFixed(2)}%, test loss ${e.testLoss.toFixed(4)} (${plural(count, "sample")})`);
  }

  summary(): RunSummary {
    this.flush();
    const last = this.evals[this.evals.length - 1];
    const ms = median(this.stepMs);
    const globalBatch = (this.o.worldSize - this.lost.length) * this.o.perWorkerBatch;
    return {
      testAccuracy: last?.testAccuracy ?? null,
      testLoss: last?.testLoss ?? null,
      steps: this.o.startStep + this.stepsDone,
      epochs: this.o.stepsPerEpoch ? (this.o.startStep + this.stepsDone) / this.o.stepsPerEpoch : 0,
      workers: this.o.worldSize,
      perWorkerBatch: this.o.perWorkerBatch,
      globalBatch,
      norm: this.o.norm,
      model: this.o.model,
      data: this.o.data,
      msPerStep: ms,
      syncWaitMsPerStep: median(this.waitMs),
      waitOtherRanksMsPerStep: median(this.otherRanksMs),
      roundTripMsPerStep: median(this.roundTripMs),
      samplesPerSecond: ms ? (globalBatch / ms) * 1000 : null,
      startupSeconds: this.startupSeconds,
      wallSeconds: (performance.now() - this.started) / 1000,
      finalTrainLoss: this.lastLoss,
      evalStatistics: describeEvalStatistics(parseNorm(this.o.norm), this.o.evalStats ?? "ema", this.o.preciseBatches ?? 0, this.o.perWorkerBatch),
      evals: this.evals,
      workersLost: this.lost,
      workersAtEnd: this.o.worldSize - this.lost.length,
      ...this.layout(),
      ...this.o.run,
    };
  }

  /** Ranks, processes and ranks per process, for the start line and the summary. */
  private layout(): { ranks: number; processes: number; ranksPerProcess: number } {
    const r = this.o.ranksPerProc ?? 1;
    return { ranks: this.o.worldSize, processes: Math.ceil(this.o.worldSize / r), ranksPerProcess: r };
  }

  /** Replaces summary.json atomically; on failure (disk full, …) the previous one stays and a SyncbnError says why. */
  writeSummary(s: RunSummary): void {
    if (!this.o.outDir) return;
    const path = join(this.o.outDir, "summary.json");
    if (this.o.outFolder) checkFolderStill(this.o.outFolder);
    try {
      replaceFile(path, `${JSON.stringify(s, null, 2)}\n`);
    } catch (e) {
      throw new SyncbnError(ErrorCode.Output, `cannot write ${path} (${reasonOf(e)}); the previous summary.json there, if any, is untouched`);
    }
  }
}

/** Writes a temp file and renames it over `path`: a failed write leaves the old file whole. */
function replaceFile(path: string, text: string): void {
  writeFileAtomic(path, Buffer.from(text, "utf8"));
}

/**
 * Appends `line` to the metrics.jsonl the run began, never creating one: a file
 * deleted mid-run (rm -rf racing the run) is not begun again at a later step,
 * and one replaced by another file is not written into.
 */
function appendToSame(path: string, line: string, began: { dev: bigint; ino: bigint }): void {
  const gone = (what: string): SyncbnError =>
    new SyncbnError(ErrorCode.Output, `cannot write ${path}: it was ${what} during the run (is the output folder ${dirname(path)} being deleted?); nothing more is written there and the run stops`);
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_APPEND);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw gone("deleted");
    throw e;
  }
  try {
    const st = fstatSync(fd, { bigint: true });
    if (st.dev !== began.dev || st.ino !== began.ino) throw gone("replaced by another file");
    appendFileSync(fd, line);
  } finally {
    closeSync(fd);
  }
}

/**
 * The lines of an earlier metrics.jsonl that a run resumed at `step` keeps: every
 * line of a step up to it (all lines count completed steps), lines without a step;
 * a line cut short is dropped, a missing file keeps nothing.
 */
function linesBefore(path: string, step: number): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return "";
  }
  const keep = text.split("\n").filter((l) => {
    if (!l.trim()) return false;
    try {
      const o = JSON.parse(l) as { type?: unknown; step?: unknown };
      if (typeof o.step !== "number") return true;
      // Every line counts steps completed: the checkpoint's step and those before it stay.
      return o.step <= step;
    } catch {
      return false; // a line cut short by a full disk
    }
  });
  return keep.map((l) => `${l}\n`).join("");
}

export function formatSummary(s: RunSummary): string[] {
  const pct = (v: number | null): string => (v === null ? "n/a" : `${(100 * v).toFixed(2)}%`);
  const num = (v: number | null, d = 1): string => (v === null ? "n/a" : v.toFixed(d));
  return [
    `done: ${s.model}, --norm ${s.norm}, ${s.ranksPerProcess > 1 ? `${plural(s.workers, "rank")} on ${s.settings?.transport === "thread" ? plural(s.processes, "thread") : plural(s.processes, "process", "processes")}` : plural(s.workers, "worker")} × ${plural(s.perWorkerBatch, "sample")} (global batch ${s.globalBatch}), ${plural(s.steps, "step")} (${num(s.epochs, 2)} epochs) on ${s.data}`,
    `  test accuracy ${pct(s.testAccuracy)}, test loss ${num(s.testLoss, 4)}, last-batch train loss ${num(s.finalTrainLoss, 4)} (step ${s.steps}, not smoothed)`,
    `  ${num(s.msPerStep)} ms/step (median); ${num(s.samplesPerSecond, 0)} samples/s; start-up ${num(s.startupSeconds)} s (processes, data, connections); wall ${num(s.wallSeconds)} s`,
    `  in sync rounds ${num(s.syncWaitMsPerStep, 2)} ms/step: waiting for other ranks ${num(s.waitOtherRanksMsPerStep, 2)} ms (the slowest rank's compute; includes CPU contention when workers share cores), round trip ${num(s.roundTripMsPerStep, 2)} ms (wire, coordinator, scheduling)`,
    `  eval statistics: ${s.evalStatistics}`,
    ...(s.workersLost.length ? [`  workers lost: ${s.workersLost.map((l) => `rank ${l.rank} at step ${l.step} (${l.reason})`).join("; ")}; finished with ${s.workersAtEnd}`] : []),
  ];
}
