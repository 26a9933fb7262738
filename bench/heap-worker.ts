// Worker-thread entry of bench/heap.ts: the real training loop (worker/train.ts
// with RoundSync and the client) over the thread transport, with a probe on each
// step's gradient round that records the heap after a forced GC at two steps.
// Needs --expose-gc on the process. Bench-only.

import { parentPort, workerData } from "node:worker_threads";
import { PerformanceObserver } from "node:perf_hooks";
import { connectOverPort } from "../worker/port-link.js";
import { trainWorker } from "../worker/train.js";
import type { ThreadWorkerData } from "../worker/thread-main.js";

export interface HeapWorkerData extends ThreadWorkerData {
  /** Steps at which the heap is read (after a forced GC): [from, to]. */
  probeSteps: [number, number];
}

export interface HeapReport {
  rank: number;
  steps: number;
  heapBefore: number;
  heapAfter: number;
  /** process.memoryUsage().arrayBuffers (this thread's buffers outside the JS heap). */
  arrayBuffersBefore: number;
  arrayBuffersAfter: number;
  /** Garbage collections between the two probes, by kind. */
  minorGcs: number;
  majorGcs: number;
}

const d = workerData as HeapWorkerData;
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("bench/heap-worker needs node --expose-gc");

let counting = false;
let minor = 0;
let major = 0;
const obs = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if (!counting) continue;
    // detail.kind: 1 minor (scavenge), 2 major (mark-compact), 4 incremental, 8 weak callbacks
    const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind ?? 0;
    if (kind === 1) minor++;
    else if (kind === 2) major++;
  }
});
obs.observe({ entryTypes: ["gc"] });

const client = await connectOverPort(d);

let heapBefore = 0;
let arrayBuffersBefore = 0;
const roundInto = client.roundInto.bind(client);
/**
 * arrayBuffers is the whole process's: the coordinator's isolate (main thread)
 * holds the contributions it received until its own next GC, so it collects too.
 */
function mainThreadGc(): Promise<void> {
  return new Promise((resolve) => {
    parentPort!.once("message", () => resolve());
    parentPort!.postMessage({ gc: true });
  });
}

// The training loop's gradient round (worker/train.ts) goes through roundInto.
client.roundInto = async (into, step, phase, ...rest) => {
  // The gradient round runs once per step, at the same point of every step.
  if (phase === "grad" && (step === d.probeSteps[0] || step === d.probeSteps[1])) {
    await mainThreadGc();
    gc();
    gc();
    const mem = process.memoryUsage();
    if (step === d.probeSteps[0]) {
      heapBefore = mem.heapUsed;
      arrayBuffersBefore = mem.arrayBuffers;
      counting = true;
    } else {
      counting = false;
      const report: HeapReport = {
        rank: d.rank,
        steps: d.probeSteps[1] - d.probeSteps[0],
        heapBefore,
        heapAfter: mem.heapUsed,
        arrayBuffersBefore,
        arrayBuffersAfter: mem.arrayBuffers,
        minorGcs: minor,
        majorGcs: major,
      };
      parentPort!.postMessage(report);
    }
  }
  return roundInto(into, step, phase, ...rest);
};

await trainWorker({ settings: d.settings, client, rank: d.rank, worldSize: d.worldSize, outDir: null, checkpointEvery: 0, resume: null });
await client.bye();
obs.disconnect();
