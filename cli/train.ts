// `syncbn train`: starts a coordinator in this process and W worker processes,
// shows progress, and on any worker failure stops the rest and reports the root
// cause first (rank, exit code or signal, step, last error lines). Ctrl-C stops
// everything. The training itself runs in the workers (worker/train.ts).

import { randomBytes } from "node:crypto";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import type { Coordinator } from "../coordinator/coordinator.js";
import { DEFAULT_MAX_PAYLOAD, startCoordinatorServer, type Wire } from "../coordinator/server.js";
import { refusalLogger } from "../coordinator/admission.js";
import { startThreadCoordinator, type ThreadCoordinator } from "../coordinator/threads.js";
import { ErrorCode, LOST_EXIT_GRACE_MS, SyncbnError, lostRanks, namedRanks, roundPlace } from "../shared/errors.js";
import { readCheckpoint, type Checkpoint } from "../worker/checkpoint.js";
import { conventionsOf, recipeProblems, validateSettings, type TrainSettings } from "../worker/settings.js";
import { INIT_AND_RESUME, checkInitUpFront } from "../worker/weights.js";
import { RunMonitor, formatSummary, type RunSummary } from "./monitor.js";
import { MAX_THREADS, readEnv } from "./env.js";
import { pinProcesses, workerPinning, type PinMode } from "./affinity.js";
import { forkWorker, killAll, type WorkerProcess } from "./procs.js";
import { startThreadWorker } from "./threads.js";
import { checkRunData, type RunDataPlan } from "./preflight.js";
import { chooseKernels, printKernelNotice } from "./kernels.js";
import type { KernelBackend } from "../worker/nn/kernels/backend.js";
import { workerRoundTimeout, type Threads } from "./flags.js";
import { checkOutDir, prepareOutDir } from "./out-dir.js";
import { checkResume } from "./resume-check.js";
import { attachLiveViews } from "./live.js";
import type { FolderIdentity } from "../worker/out-folder.js";
import { plural } from "./progress-line.js";
import { runRecord } from "./run-record.js";
import { isEvalProgress } from "../worker/eval-progress.js";
import { checkDashboardBind } from "../coordinator/dashboard.js";
import { describeBlocks, rankBlocks, type RanksPerProc } from "./blocks.js";
import { chooseLayout } from "./layout.js";

export interface TrainOptions {
  settings: TrainSettings;
  workers: number;
  outDir: string;
  checkpointEvery: number;
  resume: string | null;
  /** --init: safetensors weights to start from (checked here, before anything starts). */
  init?: string | null;
  roundTimeoutMs: number;
  /** Default "abort"; "continue" drops lost workers and goes on (elastic). */
  onWorkerLoss?: "abort" | "continue";
  tty: boolean;
  print(line: string): void;
  status(line: string): void;
  /** The terminal's width, for fitting the progress line (undefined: not fitted). */
  columns?(): number | undefined;
  /** Run token; default a random one. */
  token?: string;
  /** Extra environment for the workers (e.g. the Fashion-MNIST folder). */
  workerEnv?: NodeJS.ProcessEnv;
  /**
   * "process": workers are child processes talking ws to the coordinator.
   * "thread": worker_threads in this process over MessagePorts, same coordinator
   * logic and bit-identical results (fast simulation; no multi-host).
   * Absent: chosen from the work of a rank's step (cli/layout.ts).
   */
  transport?: "process" | "thread";
  /** Wire of the process transport (default ws). */
  wire?: Wire;
  /** Ranks per worker process or thread (cli/blocks.ts); absent: chosen with the transport (cli/layout.ts). */
  ranksPerProc?: RanksPerProc;
  /** Pin worker processes to CPUs round-robin (cli/affinity.ts; default "auto"). */
  pinCpus?: PinMode;
  /** Compute threads per worker (worker/nn/kernels/threads.ts): N, or auto = CPUs ÷ worker processes (default 1 here; the CLI's default is auto). */
  threads?: Threads;
  /** --kernels (cli/kernels.ts); absent: SYNCBN_KERNELS of workerEnv or this process, then native where the addon loads. */
  kernels?: KernelBackend;
  /** Process transport: a connection must get its hello accepted this soon (coordinator/pending.ts). */
  helloTimeoutMs?: number;
  /** Serve the live dashboard there (default: none); off loopback it needs `token`. */
  dashboard?: { host: string; port: number } | null;
  /** Where the dashboard's URL goes (default: print it). */
  onDashboard?(url: string): void;
}

export interface TrainResult {
  ok: boolean;
  summary: RunSummary | null;
  /** Root cause lines when !ok. */
  failure: string[];
  /** Stopped by SIGINT/SIGTERM. */
  interrupted: boolean;
}

const WORKER_SCRIPT = new URL("./main.js", import.meta.url);

/** --threads: N as given, or auto = the CPUs shared out over the worker processes (or threads), at least 1. */
export function resolveThreads(t: Threads | undefined, workers: number, cores = availableParallelism()): number {
  if (t === undefined) return 1;
  if (t === "auto") return Math.max(1, Math.min(MAX_THREADS, Math.floor(cores / workers)));
  return t;
}

/** Why a run must have worker processes whatever its size (the auto layout then takes them), or null. */
function processesNeededFor(o: TrainOptions, faultInjected: boolean): string | null {
  if (faultInjected) return "SYNCBN_FAULT (it acts in worker processes)";
  if (o.onWorkerLoss === "continue") return "--on-worker-loss continue (a lost worker is a process to stop)";
  if (o.wire !== undefined) return `--wire ${o.wire}`;
  if (o.pinCpus === "on") return "--pin-cpus on";
  return null;
}

export async function runTrain(o: TrainOptions): Promise<TrainResult> {
  const s = o.settings;
  validateSettings(s, o.workers);
  const env0 = readEnv({ ...process.env, ...o.workerEnv });
  // Chosen once here (an explicit native without the addon is refused before anything starts), handed to every worker.
  const kernelChoice = chooseKernels(o.kernels, env0.kernels);
  const kernels = kernelChoice.kernels;
  const plan = await checkRunData(s, o.workers, env0.fashionMnistDir);
  // Threads or processes, and ranks packed into each (blocks of consecutive ranks), from the flags and the
  // work of a rank's step (cli/layout.ts); refused here when a block would split a group.
  const layout = chooseLayout(
    { transport: o.transport, ranksPerProc: o.ranksPerProc, needsProcesses: processesNeededFor(o, env0.fault !== undefined) },
    o.workers, s.norm, plan.trainFlopsPerSample, s.batch,
  );
  const perProc = layout.ranksPerProc;
  const blocks = rankBlocks(o.workers, perProc);
  const threadsPerWorker = resolveThreads(o.threads, blocks.length);
  // Milestones and warm-up given as percentages are steps only now that the run's length is known.
  const recipe = recipeProblems(s, plan.totalSteps);
  if (recipe.length) throw new SyncbnError(ErrorCode.BadConfig, recipe.join("; "), {}, { beforeStart: true });
  if (o.init && o.resume) throw new SyncbnError(ErrorCode.BadConfig, INIT_AND_RESUME);
  const initial = o.init ? await checkInitUpFront(o.init, s, readEnv({ ...process.env, ...o.workerEnv }).fashionMnistDir) : null;
  if (o.dashboard) checkDashboardBind(o.dashboard.host, o.token ?? "");
  // A read-only or blocked --out is refused before a coordinator starts; the folder is created last (below).
  checkOutDir(o.outDir);
  // A fresh random token per run unless the user set one; it is never printed or written.
  const token = o.token ?? randomBytes(16).toString("hex");
  // Read and checked before the coordinator starts: a bad file must not leave a listening server behind.
  const resumed = o.resume ? readResume(o.resume, s, o.workers, plan) : null;
  const threads = layout.transport === "thread";
  // Planned (and "on" checked) before anything starts: a refusal leaves nothing behind.
  // One CPU per compute thread of every worker process.
  const pinning = threads ? null : workerPinning(o.pinCpus ?? "auto", blocks.length * threadsPerWorker);
  const coordOptions = { worldSize: o.workers, token, conventions: conventionsOf(s), roundTimeoutMs: o.roundTimeoutMs, onWorkerLoss: o.onWorkerLoss };
  const server: { coordinator: Coordinator; url: string; close(): Promise<void> } = threads
    ? startThreadCoordinator(coordOptions)
    : await startCoordinatorServer({ ...coordOptions, host: "127.0.0.1", port: 0, maxPayload: DEFAULT_MAX_PAYLOAD, wire: o.wire ?? "ws", helloTimeoutMs: o.helloTimeoutMs });
  server.coordinator.events.onRefused = refusalLogger((l) => process.stderr.write(`coordinator: ${l}\n`));
  // Layers whose conventions are not the run's (an ONNX node's own BN momentum): the coordinator's running statistics follow them too.
  plan.layerConventions.forEach((c, layer) => {
    if (c && (c.momentum !== s.bnMomentum || c.momentumStyle !== s.bnMomentumStyle)) server.coordinator.runningStats.configureLayer(layer, c);
  });
  let monitorRef: RunMonitor | null = null;
  const live = await attachLiveViews(server.coordinator, () => monitorRef, { dashboard: o.dashboard ?? null, token: o.token ?? "" }).catch(async (e: unknown) => {
    await server.close();
    throw e;
  });
  let outFolder: FolderIdentity;
  try {
    // Last of the checks, because it creates the folder: a run refused before (a checkpoint that does not fit, a busy dashboard port) leaves none behind.
    outFolder = prepareOutDir(o.outDir);
  } catch (e) {
    await live.close();
    await server.close();
    throw e;
  }
  let startStep = 0;
  if (resumed) {
    startStep = resumed.header.step;
    resumed.bn.forEach((b, i) => server.coordinator.runningStats.set(i, { mean: b.mean, var: b.var, tracked: resumed.header.bn[i]!.tracked }));
    o.print(`resuming from ${o.resume} at step ${startStep}`);
  }
  let outputFailure: SyncbnError | null = null;
  let wake: () => void = () => {};
  const woken = new Promise<void>((r) => (wake = r));
  if (initial) {
    // The coordinator's copy of the running statistics starts where the workers' do.
    initial.model.bnLayers.forEach((l, i) => server.coordinator.runningStats.set(i, { mean: l.runningMean, var: l.runningVar, tracked: l.tracked }));
    o.print(`starting from the weights in ${o.init}`);
  }
  const monitor = new RunMonitor({
    worldSize: o.workers,
    ranksPerProc: perProc,
    perWorkerBatch: s.batch,
    norm: s.norm,
    model: s.model,
    data: s.data,
    evalStats: s.evalStats,
    preciseBatches: s.preciseBatches,
    outDir: o.outDir,
    outFolder,
    totalSteps: null,
    stepsPerEpoch: null,
    startStep,
    resumedFrom: o.resume,
    tty: o.tty,
    print: o.print,
    status: o.status,
    columns: o.columns,
    run: runRecord(s, {
      workers: o.workers,
      ranksPerProcess: perProc,
      threads: threadsPerWorker,
      kernels,
      transport: layout.transport,
      layout: layout.description,
      wire: threads ? null : (o.wire ?? "ws"),
    }),
    onFailure: (e) => {
      outputFailure ??= e;
      wake();
    },
  });
  monitor.attach(server.coordinator);
  monitorRef = monitor;
  if (live.url) (o.onDashboard ?? ((url: string) => o.print(`dashboard: ${url} (read-only; Ctrl-C stops the run as usual)`)))(live.url);
  printKernelNotice(kernelChoice, o.print);
  o.print(`layout: ${layout.description}`);
  o.print(`syncbn train: ${describeBlocks(o.workers, perProc, layout.transport)}${threadsPerWorker > 1 ? ` (${threadsPerWorker} compute threads each)` : ""} × ${plural(s.batch, "sample")}, --model ${s.model} --norm ${s.norm} --data ${s.data}; coordinator ${server.url}; output in ${o.outDir}`);

  let coordFailure: SyncbnError | null = null;
  let coordDone = false;
  let firstBadExit: { proc: WorkerProcess; code: number | null; signal: string | null } | null = null;
  let interrupted = false;
  let settled: () => void = () => {};
  const coordSettled = new Promise<void>((r) => (settled = r));
  server.coordinator.events.onFailed = (e) => {
    coordFailure = e;
    settled();
    wake();
  };
  server.coordinator.events.onDone = () => {
    coordDone = true;
    settled();
  };

  const args = [
    "worker",
    "--coordinator",
    server.url,
    "--world",
    String(o.workers),
    "--settings-json",
    JSON.stringify(s),
    "--out",
    o.outDir,
    "--checkpoint-every",
    String(o.checkpointEvery),
    "--round-timeout",
    String(o.roundTimeoutMs),
  ];
  if (o.resume) args.push("--resume", o.resume);
  if (o.init) args.push("--init", o.init);
  // The token goes through the environment, not argv, so `ps` does not show it.
  const env = { ...process.env, ...o.workerEnv, SYNCBN_TOKEN: token, SYNCBN_THREADS: String(threadsPerWorker), SYNCBN_KERNELS: kernels };
  // The lowest rank's worker reports evaluation progress (worker/eval-progress.ts).
  const onWorkerMessage = (m: unknown): void => {
    if (isEvalProgress(m)) monitor.evalProgress(m.step, m.done, m.total);
  };
  const procs = blocks.map(({ first: rank, size }) =>
    threads
      ? startThreadWorker({
          port: (server as ThreadCoordinator).connect(`thread ${rank}`),
          rank,
          ranks: size,
          worldSize: o.workers,
          token,
          settings: s,
          outDir: o.outDir,
          checkpointEvery: o.checkpointEvery,
          resume: o.resume,
          init: o.init ?? null,
          roundTimeoutMs: workerRoundTimeout(o.roundTimeoutMs), // as the worker command sets it
          fashionMnistDir: readEnv(env).fashionMnistDir,
          kernels,
          threads: threadsPerWorker,
        }, onWorkerMessage)
      : forkWorker(WORKER_SCRIPT, [...args, "--rank", String(rank), ...(size > 1 ? ["--ranks-per-proc", String(size)] : [])], rank, { env, onMessage: onWorkerMessage }),
  );
  procs.forEach((p, i) => (p.ranks = blocks[i]!.size));
  /** The process (or thread) hosting a rank. */
  const procOf = (rank: number): WorkerProcess | undefined => procs[Math.floor(rank / perProc)];
  if (pinning) pinProcesses(procs, pinning, threadsPerWorker, "worker processes", o.print);
  // Elastic mode: a lost worker is dropped by the coordinator; make sure a frozen one is really gone.
  const monitorOnLost = server.coordinator.events.onWorkersLost;
  server.coordinator.events.onWorkersLost = (ranks, step, reason) => {
    monitorOnLost?.(ranks, step, reason);
    // A moment's grace: one that disconnected on an error of its own is printing it (the root cause, e.g. a full disk).
    for (const r of ranks) {
      const p = procOf(r);
      if (!p) continue;
      setTimeout(() => {
        if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
      }, LOST_KILL_GRACE_MS).unref();
    }
  };
  const elastic = o.onWorkerLoss === "continue";
  const isLost = (rank: number): boolean => server.coordinator.lostWorkers.some((l) => l.rank === rank);
  for (const p of procs) {
    void p.exited.then(async ({ code, signal }) => {
      if (code === 0 && !signal) return;
      // Elastic: the coordinator notices the dead connection a moment after the exit; give it that moment.
      if (elastic) await within(null, 1000);
      if (elastic && isLost(p.rank)) return;
      if (!firstBadExit) {
        firstBadExit = { proc: p, code, signal };
        wake();
      }
    });
  }
  const onSigint = (): void => {
    interrupted = true;
    wake();
  };
  process.on("SIGINT", onSigint);
  process.on("SIGTERM", onSigint);
  const allExited = Promise.all(procs.map((p) => p.exited)).then(() => wake());
  try {
    await woken;
    if (interrupted) {
      if (o.tty) o.status("");
      o.print("interrupted: stopping all workers");
      await killAll(procs);
      return { ok: false, interrupted: true, summary: null, failure: [`stopped all workers; the last checkpoint (if any) is in ${o.outDir}`] };
    }
    if (!firstBadExit && !coordFailure && !outputFailure) {
      await allExited;
      // Every process is gone; the coordinator sees the last closes (or byes) a moment later. Success is its word, not a count of exits.
      await within(coordSettled, SETTLE_MS);
      // Elastic mode waits a moment before it judges a bad exit: give that verdict its time too.
      if (elastic && procs.some((p) => p.child.exitCode !== 0)) await within(null, 1100);
    }
    const allLost = elastic && server.coordinator.lostWorkers.length >= o.workers;
    const finalCheck = firstBadExit || coordFailure || outputFailure ? null : checkFinalCheckpoint(o.outDir, monitor.summary().steps, coordDone);
    if (firstBadExit || coordFailure || outputFailure || finalCheck) {
      // Let the other workers report and exit (they fail fast on the coordinator's error).
      await within(allExited, 1500);
      // A worker the coordinator names as lost may still be on its way out (its connection closes first):
      // its exit code or signal says more than "lost its connection".
      const lost = lostRanks(coordFailure as SyncbnError | null).map(procOf).filter((p): p is WorkerProcess => !!p);
      if (lost.length > 0) await within(Promise.all(lost.map((p) => p.exited)), LOST_EXIT_GRACE_MS);
      // Read the processes' states before killing the survivors (a frozen one is "stopped responding", not "killed by us").
      const failure = [
        ...(allLost ? [`every worker was lost (ranks ${server.coordinator.lostWorkers.map((l) => l.rank).join(", ")}); --on-worker-loss continue needs at least one to finish`] : []),
        ...(outputFailure ? [(outputFailure as SyncbnError).message] : []),
        ...(finalCheck ? [finalCheck] : []),
        ...(firstBadExit || coordFailure ? rootCause(procs, procOf, firstBadExit, coordFailure) : badExits(procs)),
      ];
      await killAll(procs);
      if (o.tty) o.status("");
      return { ok: false, interrupted: false, summary: null, failure };
    }
    if (o.tty) o.status("");
    const summary = monitor.summary();
    for (const l of formatSummary(summary)) o.print(l);
    try {
      monitor.writeSummary(summary);
    } catch (e) {
      return { ok: false, interrupted: false, summary, failure: [(e as Error).message] };
    }
    return { ok: true, interrupted: false, summary, failure: [] };
  } finally {
    // A failed or interrupted run keeps its last step's line too (without the timing it never got).
    monitor.flush();
    process.off("SIGINT", onSigint);
    process.off("SIGTERM", onSigint);
    await killAll(procs);
    await live.close();
    await server.close();
  }
}

/**
 * Waits for `p` (null: nothing) or `ms`, whichever comes first, and clears the
 * timer: a pending timer keeps Node running, and a bare 5 s race timer here held
 * every finished run open for 5 s after its summary.
 */
async function within(p: Promise<unknown> | null, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([...(p ? [p] : []), new Promise((r) => (timer = setTimeout(r, ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Elastic mode: how long a worker the coordinator dropped may take to exit on its own before it is killed. */
const LOST_KILL_GRACE_MS = 500;

/** How long the launcher waits, once every worker has exited, for the coordinator to see the run end. */
const SETTLE_MS = 5_000;

/** The checkpoint, read and checked against the flags, as a refusal before anything starts (exit 2). */
function readResume(file: string, s: TrainSettings, workers: number, plan: RunDataPlan): Checkpoint {
  let ck: Checkpoint;
  try {
    ck = readCheckpoint(file);
  } catch (e) {
    if (e instanceof SyncbnError) throw new SyncbnError(e.code, e.detail, e.context, { beforeStart: true });
    throw e;
  }
  checkResume(ck, s, workers, file, plan);
  return ck;
}

/**
 * Why a run whose processes all exited is not a success (null: it is): the
 * coordinator never saw every remaining worker finish, or the final checkpoint
 * (the run's result) is missing or not at the last step, e.g. its writer died
 * in elastic mode.
 */
function checkFinalCheckpoint(outDir: string, steps: number, coordDone: boolean): string | null {
  if (!coordDone) return "the workers exited but the coordinator never saw the run finish";
  const file = join(outDir, "checkpoint.bin");
  try {
    const step = readCheckpoint(file).header.step;
    return step === steps ? null : `the final checkpoint was not written: ${file} is at step ${step}, the run reached step ${steps}`;
  } catch (e) {
    return `the final checkpoint was not written: ${(e as Error).message}`;
  }
}

/** "rank 3", or "ranks 4..7" for a process hosting a block. */
function whoIs(p: WorkerProcess): string {
  const size = p.ranks ?? 1;
  return size === 1 ? `rank ${p.rank}` : `ranks ${p.rank}..${p.rank + size - 1}`;
}

/** Each worker that exited abnormally, with its last error lines. */
function badExits(procs: WorkerProcess[]): string[] {
  return procs
    .filter((p) => p.child.signalCode !== null || (p.child.exitCode !== null && p.child.exitCode !== 0))
    .flatMap((p) => [
      `worker ${whoIs(p)} ${p.child.signalCode ? `was killed by ${p.child.signalCode}` : `exited with code ${p.child.exitCode}`}`,
      ...p.stderrTail().filter((l) => l.trim()).slice(-6).map((l) => `  rank ${p.rank}: ${l}`),
    ]);
}

/**
 * The root cause first: the worker(s) the coordinator's error names (lost,
 * frozen, diverged), else the first worker to exit abnormally.
 */
function rootCause(
  procs: WorkerProcess[],
  procOf: (rank: number) => WorkerProcess | undefined,
  firstBadExit: { proc: WorkerProcess; code: number | null; signal: string | null } | null,
  coord: SyncbnError | null,
): string[] {
  const lines: string[] = [];
  const named = namedRanks(coord);
  const culprits = named.length > 0 ? [...new Set(named.map((r) => procOf(r)!).filter(Boolean))] : firstBadExit ? [firstBadExit.proc] : [];
  const where = roundPlace(coord?.context);
  for (const p of culprits) {
    const c = p.child;
    const status = c.signalCode
      ? `was killed by ${c.signalCode}`
      : c.exitCode !== null
        ? `exited with code ${c.exitCode}`
        : coord?.code === ErrorCode.Timeout
          ? "stopped responding (frozen or overloaded) and was killed"
          : "lost its connection";
    lines.push(`worker ${whoIs(p)} ${status}${where ? ` (${where})` : ""}`);
    const tail = p.stderrTail().filter((l) => l.trim());
    if (tail.length) lines.push(...tail.slice(-6).map((l) => `  rank ${p.rank}: ${l}`));
  }
  if (coord) lines.push(`coordinator: ${coord.message}`);
  if (culprits.length === 0 && !coord) lines.push("a worker failed without a report");
  return lines;
}
