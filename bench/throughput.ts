// Throughput benchmark (issue 5 §4): samples/s of `syncbn train` on Fashion-MNIST
// (the reference cnn, --norm sync, 32 samples per worker) for W = 1, 2, 4 worker
// processes, through the real launcher. samples/s = global batch / median step time.

import { existsSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { fmt, loadLine, machineLine, percentile, spread, table, type Spread } from "./stats.js";
import { trainOnce } from "./train-run.js";

export interface ThroughputOptions {
  worlds: readonly number[];
  batch: number;
  steps: number;
  testSize: number;
  repeats: number;
  log(line: string): void;
}

export const DEFAULT_THROUGHPUT: Omit<ThroughputOptions, "log"> = { worlds: [1, 2, 4], batch: 32, steps: 150, testSize: 1000, repeats: 1 };

/** Where Debian's dataset-fashion-mnist puts the files (the launcher finds it by itself too). */
export const FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist";

export interface ThroughputRow {
  world: number;
  /** samples/s per run (global batch / that run's median step). */
  samplesPerSecond: number[];
  step: Spread;
  /** samples/s at the median and at the p90 step time. */
  atMedian: number;
  atP90: number;
  waitMs: number;
  load: string;
}

export async function runThroughputBench(o: ThroughputOptions): Promise<ThroughputRow[] | null> {
  if (!existsSync(FASHION_MNIST_DIR)) {
    o.log(`throughput: ${FASHION_MNIST_DIR} not found (apt-get install dataset-fashion-mnist); skipped`);
    return null;
  }
  const rows: ThroughputRow[] = [];
  for (const w of o.worlds) {
    const steps: number[] = [];
    const waits: number[] = [];
    const sps: number[] = [];
    for (let i = 0; i < o.repeats; i++) {
      const r = await trainOnce({
        settings: { model: "cnn", norm: "sync", data: "fashion-mnist", batch: o.batch, steps: o.steps, testSize: o.testSize, seed: 1 },
        workers: w,
        transport: "process",
      });
      steps.push(...r.stepMs);
      waits.push(...r.waitMs);
      sps.push(((w * o.batch) / percentile(r.stepMs, 0.5)) * 1000);
    }
    const s = spread(steps);
    const row: ThroughputRow = {
      world: w,
      samplesPerSecond: sps,
      step: s,
      atMedian: ((w * o.batch) / s.median) * 1000,
      atP90: ((w * o.batch) / s.p90) * 1000,
      waitMs: percentile(waits, 0.5),
      load: loadLine(),
    };
    o.log(`throughput W=${w}: ${fmt(row.atMedian, 0)} samples/s (step ${fmt(s.median, 1)} / ${fmt(s.p90, 1)} ms, wait ${fmt(row.waitMs, 2)} ms; load ${row.load})`);
    rows.push(row);
  }
  return rows;
}

export function throughputMarkdown(rows: readonly ThroughputRow[] | null, o: Omit<ThroughputOptions, "log">): string[] {
  if (!rows) return [`Skipped: Fashion-MNIST not found at ${FASHION_MNIST_DIR}.`];
  const base = rows.find((r) => r.world === 1)?.atMedian ?? null;
  return [
    `\`syncbn train --data fashion-mnist --model cnn --norm sync --batch ${o.batch}\` (per worker), worker processes, ${o.steps} steps per run, ${o.repeats} run(s) per W; ` +
      `samples/s = W·${o.batch} / step time (median and p90 over steps after 5 warm-up steps). Two cores: beyond W = 2 the workers share cores.`,
    "",
    ...table(
      ["W", "global batch", "samples/s (median step)", "samples/s (p90 step)", "step median / p90 ms", "wait in rounds ms", "speed-up vs W=1", "load (1/5/15 min)"],
      rows.map((r) => [
        String(r.world),
        String(r.world * o.batch),
        fmt(r.atMedian, 0),
        fmt(r.atP90, 0),
        `${fmt(r.step.median, 1)} / ${fmt(r.step.p90, 1)}`,
        fmt(r.waitMs, 2),
        base ? fmt(r.atMedian / base, 2) : "n/a",
        r.load,
      ]),
    ),
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const log = (l: string): void => console.log(l);
  log(machineLine());
  const o: ThroughputOptions = { ...DEFAULT_THROUGHPUT, log };
  if (process.argv.includes("--quick")) Object.assign(o, { steps: 60 });
  const rows = await runThroughputBench(o);
  for (const l of throughputMarkdown(rows, o)) log(l);
}
