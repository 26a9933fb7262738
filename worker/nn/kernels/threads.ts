// Compute threads of one worker (`--threads`): helper threads that run the same
// WebAssembly kernels on a layer's shared memory, so that one layer's work splits
// across cores. The caller splits so that every output element is computed by the
// same operations in the same order as on one thread (samples for y and dx, rows
// for dW): results are bit for bit those of one thread. Set once per worker before
// its layers are built; with 1 (the default) no thread is started.
// Not a general thread pool: one task kind per call, every helper takes part.

import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from "node:worker_threads";
import { ErrorCode, SyncbnError } from "../../../shared/errors.js";
import { sharedKernelModule, type WasmMemory } from "./backend.js";

/** Control words of one helper (Int32Array over a SharedArrayBuffer). */
export const CTRL = { seq: 0, done: 1, failed: 2, ready: 3, args: 8 } as const;
export const CTRL_WORDS = 64;
/** A helper that does not finish its part in this time is reported, not waited for forever. */
export const PART_DEADLINE_MS = 300_000;
/** A helper that has not started this long after it was asked to is reported. */
export const START_DEADLINE_MS = 30_000;

/** What a helper thread gets (compute-helper.ts). */
export interface HelperData {
  ctrl: SharedArrayBuffer;
  port: MessagePort;
  part: number;
  module: unknown;
}

interface Helper {
  worker: Worker;
  ctrl: Int32Array;
  port: MessagePort;
  seq: number;
  startedAt: number;
}

/** Threads asked for; the helpers start when the first layer asks computeThreads(). */
let wanted = 1;
/** Threads in use: 1 until the helpers are started. */
let parts = 1;
let started = false;
const helpers: Helper[] = [];
let nextMemoryId = 1;

/** Asks for n compute threads (n ≥ 1) for the layers built from now on; once a layer has been built with them, the number is fixed. */
export function setComputeThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new SyncbnError(ErrorCode.BadConfig, `compute threads must be a positive integer, got ${n}`);
  if (started && n !== parts) throw new SyncbnError(ErrorCode.BadConfig, `compute threads are already started (${parts}); set them once, before the layers are built`);
  wanted = n;
}

/** The compute threads asked for (setComputeThreads), without starting the wasm helpers: the native conv runs its own pool (native/pool.h). */
export function requestedComputeThreads(): number {
  return wanted;
}

/**
 * Threads a layer's work is split over (1: this thread alone), starting the
 * helpers on the first call. A runtime without shared WebAssembly memory runs on
 * one thread, with a warning.
 */
export function computeThreads(): number {
  if (!started && wanted > 1) start(wanted);
  return parts;
}

function start(n: number): void {
  started = true;
  const module = sharedKernelModule();
  if (module === null) {
    process.emitWarning("syncbn: shared WebAssembly memory is unavailable in this runtime; computing on one thread");
    return;
  }
  const script = new URL("./compute-helper.js", import.meta.url);
  for (let part = 1; part < n; part++) {
    const ctrl = new SharedArrayBuffer(CTRL_WORDS * 4);
    const { port1, port2 } = new MessageChannel();
    const data: HelperData = { ctrl, port: port2, part, module };
    const worker = new Worker(script, { workerData: data, transferList: [port2], execArgv: [] });
    worker.unref();
    port1.unref();
    helpers.push({ worker, ctrl: new Int32Array(ctrl), port: port1, seq: 0, startedAt: Date.now() });
  }
  parts = n;
}

/** Makes `memory` (shared) known to every helper; the id names it in tasks. */
export function registerMemory(memory: WasmMemory): number {
  const id = nextMemoryId++;
  for (const h of helpers) h.port.postMessage({ id, memory });
  return id;
}

/**
 * Runs part 0 here and parts 1.. on the helpers, each given `args` (≤ 56 words),
 * and returns when all are done. `what` names the layer and phase in errors.
 */
export function runParts(args: Int32Array, own: (part: number) => void, what: string): void {
  if (args.length > CTRL_WORDS - CTRL.args) throw new RangeError(`compute task of ${args.length} words, at most ${CTRL_WORDS - CTRL.args}`);
  for (const h of helpers) {
    h.ctrl.set(args, CTRL.args);
    h.seq++;
    Atomics.store(h.ctrl, CTRL.seq, h.seq);
    Atomics.notify(h.ctrl, CTRL.seq);
  }
  try {
    own(0);
  } finally {
    // Even when this part failed: a helper must not be given new words while it still reads these.
    helpers.forEach((h, i) => waitFor(h, i, what));
  }
  helpers.forEach((h, i) => {
    if (Atomics.load(h.ctrl, CTRL.failed) !== 0) {
      const m = receiveMessageOnPort(h.port)?.message;
      throw new SyncbnError(ErrorCode.Aborted, `compute thread ${i + 1} failed in ${what}: ${typeof m === "string" ? m : "no message"}`);
    }
  });
}

/** Returns when helper i has done its part of the current task; throws past its deadline (or if it never started). */
function waitFor(h: Helper, i: number, what: string): void {
  const deadline = Date.now() + PART_DEADLINE_MS;
  for (;;) {
    const done = Atomics.load(h.ctrl, CTRL.done);
    if (done === h.seq) return;
    const now = Date.now();
    if (Atomics.load(h.ctrl, CTRL.ready) === 0 && now - h.startedAt > START_DEADLINE_MS) {
      throw new SyncbnError(ErrorCode.Aborted, `compute thread ${i + 1} did not start within ${START_DEADLINE_MS / 1000} s (in ${what}); run with --threads 1`);
    }
    if (now >= deadline) throw new SyncbnError(ErrorCode.Timeout, `compute thread ${i + 1} did not finish its part of ${what} within ${PART_DEADLINE_MS / 1000} s; run with --threads 1`);
    Atomics.wait(h.ctrl, CTRL.done, done, Math.min(deadline - now, 1000));
  }
}

/** The part [lo, hi) of 0..count−1 that part p of `of` takes: contiguous, sizes differing by at most one. */
export function partRange(count: number, p: number, of: number): [number, number] {
  return [Math.floor((count * p) / of), Math.floor((count * (p + 1)) / of)];
}

/** The same for rows, cut at multiples of `align` (the GEMMs' register blocks), so each row is computed by the same block as on one thread. */
export function alignedPartRange(count: number, p: number, of: number, align: number): [number, number] {
  const blocks = Math.ceil(count / align);
  const [lo, hi] = partRange(blocks, p, of);
  return [Math.min(count, lo * align), Math.min(count, hi * align)];
}
