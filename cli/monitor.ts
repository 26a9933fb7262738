// Watches a run through the coordinator's completed rounds (gradient rounds carry
// loss/accuracy/timing sums, eval rounds the test metrics): progress display,
// metrics.jsonl, and the final summary. Used by `train` and `coordinator`;
// it never talks to workers.

import { appendFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Coordinator, RoundEvent } from "../coordinator/coordinator.js";
import { GradExtra, SumRound } from "../shared/protocol.js";
import { parseNorm } from "../shared/config.js";
import { describeEvalStatistics } from "../worker/evaluate.js";

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
  syncWaitMsPerStep: number | null;
  samplesPerSecond: number | null;
  wallSeconds: number;
  finalTrainLoss: number | null;
  evalStatistics: string;
  evals: { step: number; epoch: number; testAccuracy: number; testLoss: number }[];
  /** Elastic mode: workers dropped during the run, and at which step the others went on without them. */
  workersLost: { rank: number; step: number; reason: string }[];
  workersAtEnd: number;
}

export interface MonitorOptions {
  worldSize: number;
  perWorkerBatch: number;
  norm: string;
  model: string;
  data: string;
  outDir: string | null;
  evalStats?: "ema" | "precise";
  preciseBatches?: number;
  /** Total steps and steps per epoch, when known up front (for the progress bar). */
  totalSteps: number | null;
  stepsPerEpoch: number | null;
  /** First step (non-zero on resume). */
  startStep: number;
  tty: boolean;
  print(line: string): void;
  /** Rewrite the current terminal line (TTY only). */
  status(line: string): void;
}

export function median(values: readonly number[]): number | null {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export class RunMonitor {
  private readonly started = performance.now();
  private lastStepAt: number | null = null;
  private readonly stepMs: number[] = [];
  private readonly waitMs: number[] = [];
  private readonly evals: RunSummary["evals"] = [];
  private stepsDone = 0;
  private lastLoss: number | null = null;
  private lastPrinted = -1;
  private lastPrintAt = 0;
  private readonly metricsPath: string | null;
  private readonly recentLoss: number[] = [];
  private lastGlobalBatch = 0;
  private readonly lost: RunSummary["workersLost"] = [];

  private readonly o: MonitorOptions;

  constructor(opts: MonitorOptions) {
    const o = { ...opts };
    this.o = o;
    if (o.outDir) {
      mkdirSync(o.outDir, { recursive: true });
      this.metricsPath = join(o.outDir, "metrics.jsonl");
      writeFileSync(this.metricsPath, "");
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
      for (const rank of ranks) this.lost.push({ rank, step, reason });
      this.write({ type: "worker-lost", ranks, step, reason });
      if (this.o.tty) this.o.status("");
      this.o.print(`worker rank(s) ${ranks.join(", ")} ${reason}; continuing from step ${step + 1} with ${this.o.worldSize - this.lost.length} workers (--on-worker-loss continue)`);
    };
  }

  /** One more line of metrics.jsonl from another view of the run (e.g. `{"type":"bn"}`, cli/live.ts). */
  record(obj: object): void {
    this.write(obj);
  }

  private write(obj: object): void {
    if (this.metricsPath) appendFileSync(this.metricsPath, `${JSON.stringify(obj)}\n`);
  }

  private epochOf(step: number): number {
    return this.o.stepsPerEpoch ? Math.floor(step / this.o.stepsPerEpoch) : 0;
  }

  onRound(ev: RoundEvent): void {
    if (ev.phase === "grad" && ev.extra) this.onStep(ev.step, ev.extra);
    else if (ev.phase === "sum" && ev.layer === SumRound.Eval) this.onEval(ev.step, ev.data as Float64Array);
  }

  private onStep(step: number, extra: Float64Array): void {
    const now = performance.now();
    // Workers contributing to this step (fewer than W after an elastic loss).
    const W = extra[GradExtra.count]! / this.o.perWorkerBatch;
    this.o.totalSteps ??= extra[GradExtra.totalSteps]! / W;
    this.o.stepsPerEpoch ??= extra[GradExtra.stepsPerEpoch]! / W;
    const count = extra[GradExtra.count]!;
    const loss = extra[GradExtra.lossSum]! / count;
    const acc = extra[GradExtra.correct]! / count;
    // Workers report the previous step's wait and compute time.
    const wait = extra[GradExtra.syncWaitMs]! / W;
    const ms = this.lastStepAt === null ? null : now - this.lastStepAt;
    this.lastStepAt = now;
    this.stepsDone++;
    this.lastLoss = loss;
    this.recentLoss.push(loss);
    if (this.recentLoss.length > 20) this.recentLoss.shift();
    // The first 5 steps warm up (JIT, buffers, connections): not in the medians.
    if (this.stepsDone > 5) {
      if (ms !== null) this.stepMs.push(ms);
      this.waitMs.push(wait);
    }
    const samplesPerSec = ms ? (count / ms) * 1000 : null;
    this.lastGlobalBatch = count;
    this.write({ type: "step", step, epoch: this.epochOf(step), loss, trainAccuracy: acc, msPerStep: ms, syncWaitMs: step > this.o.startStep ? wait : null, samplesPerSecond: samplesPerSec });
    this.progress(step);
  }

  private progress(step: number): void {
    const total = this.o.totalSteps;
    const smooth = this.recentLoss.reduce((a, b) => a + b, 0) / this.recentLoss.length;
    const med = median(this.stepMs.slice(-50));
    const sps = med ? (this.lastGlobalBatch / med) * 1000 : null;
    const epochs = total && this.o.stepsPerEpoch ? Math.ceil(total / this.o.stepsPerEpoch) : null;
    const text =
      `step ${step + 1}${total ? `/${total}` : ""}` +
      ` epoch ${this.epochOf(step) + 1}${epochs ? `/${epochs}` : ""}` +
      ` loss ${smooth.toFixed(4)}` +
      (sps ? ` ${Math.round(sps)} samples/s` : "");
    if (this.o.tty) {
      const width = 24;
      const frac = total ? (step + 1) / total : 0;
      const filled = Math.round(frac * width);
      this.o.status(`[${"#".repeat(filled)}${".".repeat(width - filled)}] ${text}`);
    } else {
      // Plain logs: about 20 lines per run, and at least one every 10 s.
      const every = total ? Math.max(1, Math.round(total / 20)) : 50;
      const now = performance.now();
      if (step === this.o.startStep || (step + 1) % every === 0 || (total && step + 1 === total) || now - this.lastPrintAt > 10_000) {
        if (step !== this.lastPrinted) this.o.print(text);
        this.lastPrinted = step;
        this.lastPrintAt = now;
      }
    }
  }

  private onEval(step: number, data: Float64Array): void {
    const [lossSum, correct, count] = [data[0]!, data[1]!, data[2]!];
    const e = { step: step + 1, epoch: this.epochOf(step) + 1, testAccuracy: correct / count, testLoss: lossSum / count };
    this.evals.push(e);
    this.write({ type: "eval", ...e, testSamples: count });
    if (this.o.tty) this.o.status("");
    this.o.print(`eval after step ${e.step} (epoch ${e.epoch}): test accuracy ${(100 * e.testAccuracy).toFixed(2)}%, test loss ${e.testLoss.toFixed(4)} (${count} samples)`);
  }

  summary(): RunSummary {
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
      samplesPerSecond: ms ? (globalBatch / ms) * 1000 : null,
      wallSeconds: (performance.now() - this.started) / 1000,
      finalTrainLoss: this.lastLoss,
      evalStatistics: describeEvalStatistics(parseNorm(this.o.norm), this.o.evalStats ?? "ema", this.o.preciseBatches ?? 0, this.o.perWorkerBatch),
      evals: this.evals,
      workersLost: this.lost,
      workersAtEnd: this.o.worldSize - this.lost.length,
    };
  }

  writeSummary(s: RunSummary): void {
    if (this.o.outDir) writeFileSync(join(this.o.outDir, "summary.json"), `${JSON.stringify(s, null, 2)}\n`);
  }
}

export function formatSummary(s: RunSummary): string[] {
  const pct = (v: number | null): string => (v === null ? "n/a" : `${(100 * v).toFixed(2)}%`);
  const num = (v: number | null, d = 1): string => (v === null ? "n/a" : v.toFixed(d));
  return [
    `done: ${s.model}, --norm ${s.norm}, ${s.workers} workers × ${s.perWorkerBatch} samples (global batch ${s.globalBatch}), ${s.steps} steps (${num(s.epochs, 2)} epochs) on ${s.data}`,
    `  test accuracy ${pct(s.testAccuracy)}, test loss ${num(s.testLoss, 4)}, final train loss ${num(s.finalTrainLoss, 4)}`,
    `  ${num(s.msPerStep)} ms/step (median), of which waiting in sync rounds ${num(s.syncWaitMsPerStep, 2)} ms; ${num(s.samplesPerSecond, 0)} samples/s; wall ${num(s.wallSeconds)} s`,
    `  eval statistics: ${s.evalStatistics}`,
    ...(s.workersLost.length ? [`  workers lost: ${s.workersLost.map((l) => `rank ${l.rank} at step ${l.step + 1} (${l.reason})`).join("; ")}; finished with ${s.workersAtEnd}`] : []),
  ];
}
