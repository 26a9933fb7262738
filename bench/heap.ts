// Heap benchmark (issue 5, "no allocation in the steady-state step loop"): the
// reference cnn trained by W worker threads (thread transport: the same
// worker/train.ts, sync.ts and client code as worker processes; only the link
// differs), heap read after forced GCs at two steps 1000 apart in each worker.
// Reports retained growth per step and the GCs in between. Runs in a child
// process with --expose-gc. Not a test.

import { spawn } from "node:child_process";
import { Worker } from "node:worker_threads";
import { fileURLToPath, pathToFileURL } from "node:url";
import { startThreadCoordinator } from "../coordinator/threads.js";
import { DEFAULT_SETTINGS, conventionsOf, type TrainSettings } from "../worker/settings.js";
import type { HeapReport, HeapWorkerData } from "./heap-worker.js";
import { fmt, loadLine, machineLine, table } from "./stats.js";

export interface HeapOptions {
  workers: number;
  batch: number;
  model: "cnn" | "mlp";
  /** Probe at these steps; the run is one step longer. No epoch boundary in between. */
  from: number;
  to: number;
  log(line: string): void;
}

export const DEFAULT_HEAP: Omit<HeapOptions, "log"> = { workers: 2, batch: 8, model: "cnn", from: 100, to: 1100 };

export interface HeapResult {
  reports: HeapReport[];
  seconds: number;
  load: string;
}

const HEAP_WORKER = new URL("./heap-worker.js", import.meta.url);

/** In the --expose-gc child: run the training and collect every worker's report. */
async function measureInChild(o: Omit<HeapOptions, "log">): Promise<HeapResult> {
  const steps = o.to + 1;
  // Enough samples that steps from..to stay inside the first epoch (no eval, no reshuffle).
  const trainSize = (steps + 10) * o.workers * o.batch;
  const settings: TrainSettings = { ...DEFAULT_SETTINGS, model: o.model, norm: "sync", batch: o.batch, steps, trainSize, testSize: 100 };
  const coord = startThreadCoordinator({ worldSize: o.workers, token: "", conventions: conventionsOf(settings), roundTimeoutMs: 120_000 });
  const t0 = performance.now();
  try {
    const reports = await Promise.all(
      Array.from({ length: o.workers }, (_, rank) => {
        const port = coord.connect(`heap ${rank}`);
        const data: HeapWorkerData = {
          port,
          rank,
          worldSize: o.workers,
          token: "",
          settings,
          outDir: null,
          checkpointEvery: 0,
          resume: null,
          roundTimeoutMs: 125_000,
          probeSteps: [o.from, o.to],
        };
        const w = new Worker(HEAP_WORKER, { workerData: data, transferList: [port] });
        return new Promise<HeapReport>((resolve, reject) => {
          let report: HeapReport | null = null;
          w.on("message", (m: HeapReport | { gc: true }) => {
            if ("gc" in m) {
              (globalThis as { gc?: () => void }).gc?.();
              w.postMessage("gc-done");
            } else report = m;
          });
          w.on("error", reject);
          w.on("exit", (code) => (report && code === 0 ? resolve(report) : reject(new Error(`heap worker ${rank} exited with code ${code}`))));
        });
      }),
    );
    if (coord.coordinator.failed) throw coord.coordinator.failed;
    return { reports, seconds: (performance.now() - t0) / 1000, load: loadLine() };
  } finally {
    await coord.close();
  }
}

export async function runHeapBench(o: HeapOptions): Promise<HeapResult> {
  const child = spawn(process.execPath, ["--expose-gc", fileURLToPath(import.meta.url), "--child", JSON.stringify({ ...o, log: undefined })], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (c: string) => (out += c));
  // 'close', not 'exit': the child's last stdout bytes (the report) may still be in the pipe when it has exited.
  const code = await new Promise<number | null>((r) => child.once("close", r));
  if (code !== 0) throw new Error(`heap bench child exited with code ${code}`);
  const r = JSON.parse(out.trim().split("\n").pop()!) as HeapResult;
  for (const w of r.reports) {
    o.log(`heap rank ${w.rank}: ${fmt((w.heapAfter - w.heapBefore) / w.steps, 1)} bytes/step retained over ${w.steps} steps; ${w.minorGcs} minor / ${w.majorGcs} major GCs`);
  }
  return r;
}

export function heapMarkdown(r: HeapResult, o: Omit<HeapOptions, "log">): string[] {
  return [
    `Reference \`${o.model}\`, ${o.workers} workers × ${o.batch} samples, --norm sync, worker threads (the thread transport runs the same worker/train.ts, sync.ts and client code as worker processes; only the link is a MessagePort instead of a WebSocket). ` +
      `In each worker, \`heapUsed\` after two forced GCs at step ${o.from} and at step ${o.to}, at the gradient round (same point of the step); GCs counted in between. ` +
      `Run: ${fmt(r.seconds, 1)} s. Target: growth ≈ 0.`,
    "",
    ...table(
      ["rank", `heapUsed at step ${o.from} → ${o.to} (MB)`, `growth over ${o.to - o.from} steps`, "per step", "array buffers, whole process, after GC in every thread (MB)", "minor / major GCs in between", "load (1/5/15 min)"],
      r.reports.map((w) => [
        String(w.rank),
        `${fmt(w.heapBefore / 2 ** 20, 2)} → ${fmt(w.heapAfter / 2 ** 20, 2)}`,
        `${fmt((w.heapAfter - w.heapBefore) / 1024, 1)} KB`,
        `${fmt((w.heapAfter - w.heapBefore) / (o.to - o.from), 1)} B`,
        `${fmt(w.arrayBuffersBefore / 2 ** 20, 2)} → ${fmt(w.arrayBuffersAfter / 2 ** 20, 2)}`,
        `${w.minorGcs} / ${w.majorGcs}`,
        r.load,
      ]),
    ),
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const i = process.argv.indexOf("--child");
  if (i >= 0) {
    const o = JSON.parse(process.argv[i + 1]!) as Omit<HeapOptions, "log">;
    console.log(JSON.stringify(await measureInChild(o)));
  } else {
    const log = (l: string): void => console.log(l);
    log(machineLine());
    const o: HeapOptions = { ...DEFAULT_HEAP, log };
    if (process.argv.includes("--quick")) Object.assign(o, { from: 50, to: 250 });
    const r = await runHeapBench(o);
    for (const l of heapMarkdown(r, o)) log(l);
  }
}
