// Cost of the live dashboard (issue 15): the reference cnn, 4 worker processes ×
// 8, --norm sync, through the real launcher, with --dashboard on (and a page's
// event stream open on it) and off, alternating so drifting load hits both
// alike. The BN-spread sampling (every 10 steps) runs in both. Not a test.

import { get, type ClientRequest } from "node:http";
import { pathToFileURL } from "node:url";
import { fmt, loadLine, machineLine, percentile, spread, table } from "./stats.js";
import { trainOnce } from "./train-run.js";

export interface DashboardBenchOptions {
  workers: number;
  batch: number;
  steps: number;
  repeats: number;
  log(line: string): void;
}

export const DEFAULT_DASHBOARD_BENCH: Omit<DashboardBenchOptions, "log"> = { workers: 4, batch: 8, steps: 150, repeats: 4 };

/** Goal of issue 15: the dashboard costs at most 2 % of a step (within noise). */
export const DASHBOARD_TARGET = 1.02;

export async function runDashboardBench(o: DashboardBenchOptions = { ...DEFAULT_DASHBOARD_BENCH, log: (l) => console.log(l) }): Promise<string> {
  const acc = { on: [] as number[], off: [] as number[], onRuns: [] as number[], offRuns: [] as number[] };
  let events = 0;
  for (let i = 0; i < o.repeats; i++) {
    for (const mode of i % 2 === 0 ? (["off", "on"] as const) : (["on", "off"] as const)) {
      let stream: ClientRequest | null = null;
      const r = await trainOnce({
        settings: { model: "cnn", norm: "sync", data: "synthetic", batch: o.batch, steps: o.steps, trainSize: 4000, testSize: 200, seed: 1 },
        workers: o.workers,
        transport: "process",
        ...(mode === "on"
          ? {
              dashboard: (url: string) => {
                // A page left open: the event stream, read and dropped.
                stream = get(`${url}events`, (res) => res.on("data", (d: Buffer) => (events += d.length)));
                stream.on("error", () => {});
              },
            }
          : {}),
      });
      (stream as ClientRequest | null)?.destroy();
      acc[mode].push(...r.stepMs);
      acc[mode === "on" ? "onRuns" : "offRuns"].push(percentile(r.stepMs, 0.5));
      o.log(`dashboard ${mode} run ${i + 1}: ${fmt(percentile(r.stepMs, 0.5), 1)} ms/step median (load ${loadLine()})`);
    }
  }
  const on = spread(acc.on);
  const off = spread(acc.off);
  const ratio = on.median / off.median;
  return [
    `Reference \`cnn\`, ${o.workers} worker processes × ${o.batch}, --norm sync, ${o.steps} steps per run, ${o.repeats} runs each with \`--dashboard\` on (one event stream open, ${fmt(events / 1024, 0)} KiB received in all) and off, alternating. ms/step as in the training-step section. Goal: on ≤ ${DASHBOARD_TARGET} × off (within noise).`,
    "",
    ...table(
      ["dashboard", "median / p90 ms/step", "per-run medians", "on / off"],
      [
        ["off", `${fmt(off.median, 2)} / ${fmt(off.p90, 2)}`, acc.offRuns.map((v) => fmt(v, 1)).join(", "), ""],
        ["on", `${fmt(on.median, 2)} / ${fmt(on.p90, 2)}`, acc.onRuns.map((v) => fmt(v, 1)).join(", "), fmt(ratio, 3)],
      ],
    ),
  ].join("\n");
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const log = (l: string): void => console.log(l);
  log(machineLine());
  const quick = process.argv.includes("--quick");
  console.log(await runDashboardBench({ ...DEFAULT_DASHBOARD_BENCH, ...(quick ? { steps: 60, repeats: 2 } : {}), log }));
}
