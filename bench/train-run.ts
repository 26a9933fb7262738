// One `syncbn train` run for the benchmarks, through the real launcher (runTrain:
// coordinator in this process, workers as processes or threads), with its
// per-step timings read back from metrics.jsonl. Bench-only helper.

import "../cli/gc.js"; // the CLI's garbage-collector settings (its coordinator runs in this process)
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runTrain } from "../cli/train.js";
import type { RanksPerProc } from "../cli/blocks.js";
import type { Threads } from "../cli/flags.js";
import type { RunSummary } from "../cli/monitor.js";
import { DEFAULT_SETTINGS, type TrainSettings } from "../worker/settings.js";

export interface TrainRunOptions {
  settings: Partial<TrainSettings>;
  workers: number;
  /** Omitted: the default layout the CLI would choose (cli/layout.ts). */
  transport?: "process" | "thread";
  /** Wire of worker processes (default ws; given, it asks for worker processes as --wire does). */
  wire?: "ws" | "tcp";
  /** --pin-cpus of worker processes (default auto, as the CLI). */
  pinCpus?: "auto" | "on" | "off";
  /** Extra environment for worker processes (e.g. SYNCBN_FASHION_MNIST_DIR). */
  workerEnv?: NodeJS.ProcessEnv;
  /** --ranks-per-proc (default: the CLI's). */
  ranksPerProc?: RanksPerProc;
  /** --threads (default auto, as the CLI). */
  threads?: Threads;
  /** Serve the live dashboard (loopback, free port) and call back with its URL. */
  dashboard?: (url: string) => void;
  /** Steps not counted in stepMs and waitMs (default 5). */
  warmupSteps?: number;
}

export interface TrainRun {
  summary: RunSummary;
  /** ms between consecutive gradient rounds, warm-up steps (the first 5 unless warmupSteps says) excluded. */
  stepMs: number[];
  /** Mean per-worker time waiting in rounds, per step, same steps. */
  waitMs: number[];
  /** ms per step of every step but the first (which has no step before it), warm-up included. */
  allStepMs: number[];
}

const WARMUP_STEPS = 5;

export async function trainOnce(o: TrainRunOptions): Promise<TrainRun> {
  const out = mkdtempSync(join(tmpdir(), "syncbn-bench-"));
  try {
    const r = await runTrain({
      settings: { ...DEFAULT_SETTINGS, ...o.settings },
      workers: o.workers,
      outDir: out,
      checkpointEvery: 0,
      resume: null,
      roundTimeoutMs: 60_000,
      ...(o.transport !== undefined ? { transport: o.transport } : {}),
      ...(o.wire !== undefined || o.transport === "process" ? { wire: o.wire ?? "ws" } : {}),
      pinCpus: o.pinCpus ?? "auto",
      threads: o.threads ?? "auto",
      workerEnv: o.workerEnv,
      ...(o.ranksPerProc !== undefined ? { ranksPerProc: o.ranksPerProc } : {}),
      ...(o.dashboard ? { dashboard: { host: "127.0.0.1", port: 0 }, onDashboard: o.dashboard } : {}),
      tty: false,
      print: () => {},
      status: () => {},
    });
    if (!r.ok || !r.summary) throw new Error(`bench training run failed: ${r.failure.join("; ")}`);
    const steps = readFileSync(join(out, "metrics.jsonl"), "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { type: string; msPerStep?: number | null; syncWaitMs?: number | null })
      .filter((m) => m.type === "step");
    const counted = steps.slice((o.warmupSteps ?? WARMUP_STEPS) + 1);
    const ms = (list: typeof steps): number[] => list.map((m) => m.msPerStep).filter((v): v is number => typeof v === "number");
    return {
      summary: r.summary,
      stepMs: ms(counted),
      waitMs: counted.map((m) => m.syncWaitMs).filter((v): v is number => typeof v === "number"),
      allStepMs: ms(steps.slice(1)),
    };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}
