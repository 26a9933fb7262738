// Training-step benchmark (issue 5 §3): the reference cnn, 4 workers × 8 samples,
// ms/step with --norm sync and --norm local through the real launcher, with
// worker processes (ws) and with worker threads; overhead = sync / local. Runs
// alternate sync and local so drifting machine load hits both alike. Not a test.

import { pathToFileURL } from "node:url";
import { fmt, loadLine, machineLine, percentile, spread, table, verdict, type Spread } from "./stats.js";
import { trainOnce } from "./train-run.js";

/** Worker processes over ws (the default) or the tcp wire, or worker threads. */
export type StepTransport = "process" | "process-tcp" | "thread";

export interface StepCell {
  transport: StepTransport;
  workers: number;
  /** --pin-cpus (default auto, as the CLI). */
  pinCpus?: "auto" | "off";
}

export interface StepOptions {
  /** The configuration: 4 workers × 8, on both transports. */
  workers: number;
  batch: number;
  steps: number;
  trainSize: number;
  testSize: number;
  /** Runs per (transport, norm); sync and local alternate. */
  repeats: number;
  transports: readonly StepTransport[];
  /**
   * Extra diagnostic cells, e.g. 2 worker processes (one per core): sync vs
   * local without our own oversubscription of the cores.
   */
  diagnostics: readonly StepCell[];
  log(line: string): void;
}

export const DEFAULT_STEP: Omit<StepOptions, "log"> = {
  workers: 4,
  batch: 8,
  steps: 150,
  trainSize: 4000,
  testSize: 200,
  // A run's median moves by up to ±10% with the machine's state: several runs per cell, pooled.
  repeats: 4,
  transports: ["process", "process-tcp", "thread"],
  diagnostics: [
    { transport: "process", workers: 4, pinCpus: "off" },
    { transport: "process", workers: 2 },
  ],
};

/** Target of issue 5: sync ≤ 1.2 × local at 4 workers × 8. */
export const STEP_TARGET = 1.2;

export interface StepRow {
  transport: StepTransport;
  pinCpus: "auto" | "off";
  workers: number;
  /** Not the configuration: shown to explain it. */
  diagnostic: boolean;
  sync: Spread;
  local: Spread;
  /** Median over steps of the mean per-worker wait in rounds (sync runs). */
  syncWait: number;
  localWait: number;
  /** Per-run medians, to show run-to-run spread. */
  syncRuns: number[];
  localRuns: number[];
  overhead: number;
  load: string;
}

export async function runStepBench(o: StepOptions): Promise<StepRow[]> {
  const rows: StepRow[] = [];
  const cells: (StepCell & { diagnostic: boolean })[] = [
    ...o.transports.map((t) => ({ transport: t, workers: o.workers, diagnostic: false })),
    ...o.diagnostics.map((c) => ({ ...c, diagnostic: true })),
  ];
  for (const { transport, workers, diagnostic, pinCpus = "auto" } of cells) {
    const acc = { sync: { ms: [] as number[], wait: [] as number[], runs: [] as number[] }, local: { ms: [] as number[], wait: [] as number[], runs: [] as number[] } };
    for (let i = 0; i < o.repeats; i++) {
      for (const norm of i % 2 === 0 ? (["sync", "local"] as const) : (["local", "sync"] as const)) {
        const r = await trainOnce({
          settings: { model: "cnn", norm, data: "synthetic", batch: o.batch, steps: o.steps, trainSize: o.trainSize, testSize: o.testSize, seed: 1 },
          workers,
          transport: transport === "thread" ? "thread" : "process",
          wire: transport === "process-tcp" ? "tcp" : "ws",
          pinCpus,
        });
        acc[norm].ms.push(...r.stepMs);
        acc[norm].wait.push(...r.waitMs);
        acc[norm].runs.push(percentile(r.stepMs, 0.5));
        o.log(`step ${transport}${pinCpus === "off" ? " unpinned" : ""} W=${workers} ${norm} run ${i + 1}: ${fmt(percentile(r.stepMs, 0.5), 1)} ms/step median, ${fmt(percentile(r.waitMs, 0.5), 2)} ms waiting in rounds (load ${loadLine()})`);
      }
    }
    const sync = spread(acc.sync.ms);
    const local = spread(acc.local.ms);
    rows.push({
      transport,
      pinCpus,
      workers,
      diagnostic,
      sync,
      local,
      syncWait: percentile(acc.sync.wait, 0.5),
      localWait: percentile(acc.local.wait, 0.5),
      syncRuns: acc.sync.runs,
      localRuns: acc.local.runs,
      overhead: sync.median / local.median,
      load: loadLine(),
    });
  }
  return rows;
}

export const TRANSPORT_LABEL: Record<StepTransport, string> = { process: "process (ws)", "process-tcp": "process (tcp wire)", thread: "thread (MessagePort)" };

export function stepMarkdown(rows: readonly StepRow[], o: Omit<StepOptions, "log">): string[] {
  return [
    `Reference \`cnn\`, ${o.workers} workers × ${o.batch} samples, synthetic data (--train-size ${o.trainSize} --test-size ${o.testSize}), ${o.steps} steps per run, ` +
      `${o.repeats} runs per cell, sync and local alternating. ms/step = time between consecutive gradient rounds at the coordinator, ` +
      `median and p90 over all steps of all runs after each run's 5 warm-up steps; "wait" = mean per-worker time blocked in rounds per step (median). Worker processes run with the CLI's default \`--pin-cpus auto\` (4 workers on 2 cores: rank r on CPU r mod 2) unless marked. Target: sync ≤ ${STEP_TARGET} × local.`,
    "",
    ...table(
      ["transport", "workers × batch", "sync median / p90 ms", "local median / p90 ms", "sync / local", `target ≤ ${STEP_TARGET}`, "wait sync / local ms", "per-run medians (sync; local)", "load (1/5/15 min)"],
      rows.map((r) => [
        `${TRANSPORT_LABEL[r.transport]}${r.pinCpus === "off" ? ", --pin-cpus off" : ""}`,
        `${r.workers} × ${o.batch}${r.diagnostic ? " (diagnostic)" : ""}`,
        `${fmt(r.sync.median, 1)} / ${fmt(r.sync.p90, 1)}`,
        `${fmt(r.local.median, 1)} / ${fmt(r.local.p90, 1)}`,
        fmt(r.overhead, 2),
        r.diagnostic ? "—" : verdict(r.overhead <= STEP_TARGET),
        `${fmt(r.syncWait, 2)} / ${fmt(r.localWait, 2)}`,
        `${r.syncRuns.map((v) => fmt(v, 1)).join(", ")}; ${r.localRuns.map((v) => fmt(v, 1)).join(", ")}`,
        r.load,
      ]),
    ),
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const log = (l: string): void => console.log(l);
  log(machineLine());
  const args = process.argv.slice(2);
  const o: StepOptions = { ...DEFAULT_STEP, log };
  if (args.includes("--quick")) Object.assign(o, { steps: 60, repeats: 1, diagnostics: [] });
  const t = args.indexOf("--transports");
  if (t >= 0) o.transports = args[t + 1]!.split(",") as StepOptions["transports"];
  const rows = await runStepBench(o);
  for (const l of stepMarkdown(rows, o)) log(l);
}
