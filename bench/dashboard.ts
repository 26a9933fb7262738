// Cost of the live dashboard (issue 15): the reference cnn, 4 worker processes ×
// 8, --norm sync, through the real launcher, with --dashboard on (and a page's
// event stream open on it) and off, alternating so drifting load hits both
// alike. The BN-spread sampling (every 10 steps) runs in both. Not a test.

import { get, type ClientRequest } from "node:http";
import { pathToFileURL } from "node:url";
import { BnSpreadTracker } from "../coordinator/bn-spread.js";
import { Coordinator, type Peer, type RoundObserver } from "../coordinator/coordinator.js";
import { startDashboard } from "../coordinator/dashboard.js";
import { DashboardState } from "../coordinator/dashboard-state.js";
import { encode } from "../shared/codec.js";
import { GradExtra, PROTOCOL_VERSION } from "../shared/protocol.js";
import { fmt, loadLine, machineLine, percentile, spread, table } from "./stats.js";
import { trainOnce } from "./train-run.js";

/**
 * The coordinator's own work per step, in one process, without workers: a real
 * Coordinator fed pre-encoded contributions (4 ranks, the cnn's BN layers of 16,
 * 32, 64 and 128 channels, a 2,000-value gradient round) through in-memory peers,
 * with no observer, with the BN-spread tracker only (always on), and with tracker +
 * dashboard + one open event stream. Blocks of steps alternate; CPU µs per step (process.cpuUsage: less moved by other processes than wall time). Frames are encoded before the timing: what is timed is the coordinator's decode, checks, reduction and observers.
 */
export async function coordinatorCost(steps: number, blocks: number): Promise<{ none: number[]; tracker: number[]; dashboard: number[]; insideUs: number[]; tickUs: number }> {
  const W = 4;
  const CHANNELS = [16, 32, 64, 128];
  const conv = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch" as const, unbiasedRunningVar: true, norm: "sync", training: "" };
  const peer = (label: string): Peer => ({ label, send: () => {}, close: () => {} });
  const extra = new Float64Array(GradExtra.length);
  extra[GradExtra.count] = 8;
  const out = { none: [] as number[], tracker: [] as number[], dashboard: [] as number[], insideUs: [] as number[], tickUs: 0 };
  let inside = 0;
  /** Times the calls the coordinator makes into an observer on the round's path. */
  const timed = (o: RoundObserver): RoundObserver => ({
    afterRound: (r, res) => {
      const t = performance.now();
      o.afterRound(r, res);
      inside += performance.now() - t;
    },
  });
  let stepBase = 0;
  for (let b = 0; b < blocks; b++) {
    for (const kind of ["none", "tracker", "dashboard"] as const) {
      const coord = new Coordinator({ worldSize: W, token: "t", conventions: conv, roundTimeoutMs: 60_000 });
      const peers = Array.from({ length: W }, (_, r) => peer(`p${r}`));
      peers.forEach((p, rank) => coord.receive(p, encode({ type: "hello", version: PROTOCOL_VERSION, rank, worldSize: W, token: "t", conventions: conv })));
      let close = async (): Promise<void> => {};
      let stream: ClientRequest | null = null;
      let dashState: DashboardState | null = null;
      if (kind !== "none") {
        const state = kind === "dashboard" ? new DashboardState(coord, () => ({ title: "bench", settings: {}, bnNote: null })) : null;
        dashState = state;
        coord.observers.push(timed(new BnSpreadTracker(coord, (r) => state?.addBn(r))));
        if (state) {
          coord.observers.push(timed(state));
          const server = await startDashboard({ host: "127.0.0.1", port: 0, token: "", state });
          stream = get(`${server.url}events`, (res) => res.resume());
          close = () => server.close();
        }
      }
      const frames = (step: number): Uint8Array[][] =>
        peers.map((_, r) => [
          ...CHANNELS.map((c, layer) => encode({ type: "contrib", step, phase: "fwd", layer, count: 8 * 64, data: Float64Array.from({ length: 2 * c }, (_, i) => (i < c ? r + i * 1e-3 : 500 + i)) })),
          ...CHANNELS.map((c, layer) => encode({ type: "contrib", step, phase: "bwd", layer: CHANNELS.length - 1 - layer, count: 8 * 64, data: new Float64Array(2 * CHANNELS[CHANNELS.length - 1 - layer]!) })),
          encode({ type: "contrib", step, phase: "grad", layer: -1, count: 8, data: new Float32Array(2_000), extra }),
        ]);
      const all = Array.from({ length: steps }, (_, s) => frames(stepBase + s));
      inside = 0;
      const t0 = process.cpuUsage();
      for (let s = 0; s < steps; s++) {
        const f = all[s]!;
        for (let k = 0; k < f[0]!.length; k++) for (let r = 0; r < W; r++) coord.receive(peers[r]!, f[r]![k]!);
        if (s % 50 === 49) await new Promise((res) => setImmediate(res)); // let the sampled spread and the stream run
      }
      const used = process.cpuUsage(t0);
      out[kind].push((used.user + used.system) / steps);
      if (dashState) {
        out.insideUs.push((inside * 1000) / steps);
        // A tick's main work (twice a second): the summary as JSON; the appended points are a few numbers.
        const t = performance.now();
        for (let i = 0; i < 100; i++) JSON.stringify(dashState.summary());
        out.tickUs = ((performance.now() - t) * 1000) / 100;
      }
      stepBase += steps;
      if (coord.failed) throw new Error(`bench coordinator failed: ${coord.failed.message}`);
      (stream as ClientRequest | null)?.destroy();
      await close();
      coord.shutdown("bench over");
    }
  }
  return out;
}

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
  await coordinatorCost(200, 1); // warm-up: JIT, first allocations
  const cost = await coordinatorCost(1000, 5);
  const med = (v: number[]): number => percentile(v, 0.5);
  return [
    `The coordinator's own work per step, in one process (a real Coordinator, 4 in-memory ranks, BN layers of 16/32/64/128 channels, a 2,000-value gradient round, frames encoded beforehand; 5 alternating blocks of 1000 steps after a warm-up block): CPU µs per step of this process, median of blocks.`,
    "",
    ...table(
      ["observers", "CPU µs/step (median; blocks)", "added vs none"],
      [
        ["none", `${fmt(med(cost.none), 0)} (${cost.none.map((v) => fmt(v, 0)).join(", ")})`, ""],
        ["BN spread every 10 steps (always on)", `${fmt(med(cost.tracker), 0)} (${cost.tracker.map((v) => fmt(v, 0)).join(", ")})`, `${fmt(med(cost.tracker) - med(cost.none), 0)} µs`],
        ["+ dashboard and one open event stream", `${fmt(med(cost.dashboard), 0)} (${cost.dashboard.map((v) => fmt(v, 0)).join(", ")})`, `${fmt(med(cost.dashboard) - med(cost.none), 0)} µs`],
      ],
    ),
    "",
    `Timed directly: the observers' calls on the round path (BN-spread copies on sampled steps, the dashboard's per-round bookkeeping) take ${fmt(med(cost.insideUs), 1)} µs per step (median of blocks: ${cost.insideUs.map((v) => fmt(v, 1)).join(", ")}); a dashboard tick's summary JSON takes ${fmt(cost.tickUs, 0)} µs, twice a second. The block-to-block spread of the whole coordinator's CPU per step above is larger than either: the "added" column is noise around these.`,
    "",
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
