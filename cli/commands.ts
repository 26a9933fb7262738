// The `train`, `worker` and `coordinator` commands: the per-run flags `train` and
// `worker` take (every worker of a run must get the same ones; the flags shared
// with `sweep` are in flags.ts), and the actions. Flag parsing only; the work is
// in train.ts, worker/ and coordinator/.

import { hostname } from "node:os";
import { resolve as resolvePath } from "node:path";
import { Command, Option } from "commander";
import type { RunConventions } from "../shared/config.js";
import { DEFAULT_MAX_PAYLOAD, startCoordinatorServer, type Wire } from "../coordinator/server.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { refusalLogger } from "../coordinator/admission.js";
import { DEFAULT_HELLO_TIMEOUT_MS, MAX_HELLO_TIMEOUT_MS } from "../coordinator/pending.js";
import { CoordinatorClient } from "../worker/client.js";
import { parseModelKind, type ModelKind } from "../worker/nn/model.js";
import { DEFAULT_SETTINGS, conventionsOf, validateSettings, type TrainSettings } from "../worker/settings.js";
import { trainWorker } from "../worker/train.js";
import { readCheckpoint } from "../worker/checkpoint.js";
import { INIT_AND_RESUME, readInitFile } from "../worker/weights.js";
import { readEnv } from "./env.js";
import {
  LR_RANGE,
  MAX_BATCH,
  MAX_SEED,
  MAX_STEPS,
  MAX_TIMER_MS,
  MAX_WORKERS,
  MIN_TIMEOUT_MS,
  addLaunchFlags,
  addRunFlags,
  checkLaunchFlags,
  intArg,
  numArg,
  rangeText,
  roundTimeoutOption,
  runSettingsFromFlags,
  warmupSteps,
  wireOption,
  workerRoundTimeout,
  workersOption,
  type LaunchFlags,
  type RunFlags,
} from "./flags.js";
import { checkRunData } from "./preflight.js";
import { RunMonitor, formatSummary } from "./monitor.js";
import { runTrain } from "./train.js";
import { checkOutDir, prepareOutDir } from "./out-dir.js";
import type { FolderIdentity } from "../worker/out-folder.js";
import { checkDashboardBind, parseDashboardSpec } from "../coordinator/dashboard.js";
import { attachLiveViews } from "./live.js";
import { checkWorkerBlock } from "./blocks.js";
import { evalProgressSender } from "../worker/eval-progress.js";
import { plural } from "./progress-line.js";
import { defaultOutDir, outputsLine, runRecord } from "./run-record.js";
import { startWorkerView, workerOutDir } from "./worker-view.js";
import { chooseKernels, kernelsOption, printKernelNotice } from "./kernels.js";
import { setKernelBackend, type KernelBackend } from "../worker/nn/kernels/backend.js";

const D = DEFAULT_SETTINGS;

/** --hello-timeout: how long a new connection may take to get its hello accepted (coordinator/pending.ts). */
function helloTimeoutOption(): Option {
  return new Option("--hello-timeout <ms>", `close a connection whose hello is not accepted within MS (100..${MAX_HELLO_TIMEOUT_MS})`)
    .argParser(intArg("--hello-timeout", 100, MAX_HELLO_TIMEOUT_MS))
    .default(DEFAULT_HELLO_TIMEOUT_MS);
}

/** The run flags plus the per-run ones train and worker take as single values (sweep takes lists). */
function addTrainFlags(cmd: Command): Command {
  return addRunFlags(cmd)
    .option("--batch <n>", `samples per worker per step (1..${MAX_BATCH})`, intArg("--batch", 1, MAX_BATCH), D.batch)
    .option("--norm <mode>", "sync | local | group:K (K ranks per sync group) | ghost:G | renorm | groupnorm:G (G channel groups) | cbn:K (cross-iteration BN over K steps) | none", D.norm)
    .option("--lr <x>", `SGD learning rate, in ${rangeText(LR_RANGE)}`, numArg("--lr", LR_RANGE), D.lr)
    .option("--seed <n>", `seed for init, shuffling and synthetic data (0..${MAX_SEED})`, intArg("--seed", 0, MAX_SEED), D.seed)
    .option("--checkpoint-every <n>", `also write a checkpoint every N steps (0..${MAX_STEPS}; 0: only at the end)`, intArg("--checkpoint-every", 0, MAX_STEPS), 0)
    .option("--resume <file>", "continue from a checkpoint written by an earlier run")
    .option("--init <file>", "start from the weights (and running statistics) of a safetensors file, e.g. one PyTorch saved");
}

interface TrainFlags extends RunFlags {
  batch: number;
  norm: string;
  lr: number;
  seed: number;
  checkpointEvery: number;
  resume?: string;
  init?: string;
}

function settingsFromFlags(f: TrainFlags): TrainSettings {
  return { ...runSettingsFromFlags(f), norm: f.norm, batch: f.batch, lr: f.lr, seed: f.seed };
}

/**
 * The settings of a train or worker command; a --renorm-warmup given as a
 * percentage becomes steps of this run, which needs the data's size (read here,
 * before anything starts).
 */
async function resolveSettings(f: TrainFlags, workers: number, fashionMnistDir: string | undefined): Promise<TrainSettings> {
  const s = settingsFromFlags(f);
  if ("percent" in f.renormWarmup) {
    validateSettings(s, workers);
    const plan = await checkRunData(s, workers, fashionMnistDir);
    s.renormWarmup = warmupSteps(f.renormWarmup, plan.totalSteps);
  }
  return s;
}

/** A world size from a flag or WORLD_SIZE/SLURM_NTASKS, within the documented range. */
function checkWorldSize(world: number): void {
  if (world < 1 || world > MAX_WORKERS) throw new SyncbnError(ErrorCode.BadConfig, `the number of workers must be in 1..${MAX_WORKERS}, got ${world} (from --workers/--world or WORLD_SIZE)`);
}

/** The settings a coordinator learns from the first hello: the training settings' JSON and the BN conventions beside it. */
function settingsOfConventions(conv: RunConventions): Record<string, string | number | boolean | null> {
  const training = JSON.parse(conv.training || "{}") as Record<string, unknown>;
  const out: Record<string, string | number | boolean | null> = {};
  for (const [k, v] of Object.entries(training)) if (v === null || ["string", "number", "boolean"].includes(typeof v)) out[k] = v as string | number | boolean | null;
  return { ...out, norm: conv.norm, bnEps: conv.eps, bnMomentum: conv.momentum, bnMomentumStyle: conv.momentumStyle, unbiasedRunningVar: conv.unbiasedRunningVar };
}

const OUT_HELP = "folder for weights.safetensors, checkpoint.bin, metrics.jsonl and summary.json, created if missing (default runs/<time>)";

/** Rewrites the terminal's current line: back to its start, the text, then clear what an older, longer line left. */
function statusLine(text: string): void {
  process.stdout.write(`\r${text}\x1b[K`);
}

const DASHBOARD_HELP = "serve a live, read-only dashboard of the run at [HOST:]PORT (HOST default 127.0.0.1; off loopback it needs the run token)";

export function registerTrainCommands(program: Command): void {
  const env = readEnv();
  addLaunchFlags(
    addTrainFlags(
      program
        .command("train")
        .description("train a reference model data-parallel on W local workers (threads or processes: the layout line says which)")
        .addOption(workersOption("number of workers (ranks)", 4))
        .addOption(new Option("--on-worker-loss <policy>", "abort the run, or continue without the lost worker (elastic)").choices(["abort", "continue"]).default("abort"))
        .addOption(helloTimeoutOption())
        .option("--out <dir>", OUT_HELP)
        .option("--dashboard <[host:]port>", DASHBOARD_HELP, parseDashboardSpec),
    ),
  ).action(async (f: TrainFlags & LaunchFlags & { workers: number; out?: string; onWorkerLoss: "abort" | "continue"; helloTimeout: number; dashboard?: { host: string; port: number } }, cmd: Command) => {
    checkLaunchFlags(f);
    const settings = await resolveSettings(f, f.workers, env.fashionMnistDir);
    const tty = Boolean(process.stdout.isTTY) && !env.isCI;
    const outDir = f.out ?? defaultOutDir();
    const r = await runTrain({
      settings,
      workers: f.workers,
      outDir,
      checkpointEvery: f.checkpointEvery,
      resume: f.resume ?? null,
      init: f.init ?? null,
      roundTimeoutMs: f.roundTimeout,
      onWorkerLoss: f.onWorkerLoss,
      transport: f.transport,
      // Only a --wire given asks for worker processes (the layout's choice, cli/layout.ts); ws is the default.
      wire: cmd.getOptionValueSource("wire") === "cli" ? f.wire : undefined,
      pinCpus: f.pinCpus,
      ranksPerProc: f.ranksPerProc,
      threads: f.threads,
      kernels: f.kernels,
      helloTimeoutMs: f.helloTimeout,
      dashboard: f.dashboard ?? null,
      token: env.token,
      tty,
      print: (l) => console.log(l),
      status: statusLine,
      columns: () => process.stdout.columns,
    });
    if (!r.ok) {
      console.error(r.interrupted ? "syncbn train interrupted:" : "syncbn train failed:");
      for (const l of r.failure) console.error(`  ${l}`);
      process.exitCode = r.interrupted ? 130 : 1;
    }
    console.log(outputsLine(outDir));
  });

  addTrainFlags(
    program
      .command("worker")
      .description("run one worker of a run whose coordinator is elsewhere (multi-host, torchrun/Slurm conventions)")
      .option("--coordinator <url>", "ws://HOST:PORT, or tcp://HOST:PORT for a coordinator on --wire tcp (default from MASTER_ADDR/MASTER_PORT and --wire)")
      .addOption(wireOption("the wire of the URL built from MASTER_ADDR/MASTER_PORT"))
      .option("--rank <r>", `this worker's rank, the first of its block with --ranks-per-proc (0..${MAX_WORKERS - 1}; default $RANK)`, intArg("--rank", 0, MAX_WORKERS - 1))
      .option("--ranks-per-proc <R>", `host ranks RANK..RANK+R-1 in this process (1..${MAX_WORKERS})`, intArg("--ranks-per-proc", 1, MAX_WORKERS), 1)
      .addOption(workersOption("number of workers (default $WORLD_SIZE)"))
      .option("--token <t>", "the run token (default $SYNCBN_TOKEN)")
      .option("--out <dir>", "folder for weights.safetensors and checkpoint.bin (rank 0 writes them; default: the coordinator's folder when it runs on this host, else runs/<time>)")
      .addOption(kernelsOption())
      .option("--connect-timeout <ms>", `keep retrying the coordinator this long (${MIN_TIMEOUT_MS}..${MAX_TIMER_MS})`, intArg("--connect-timeout", MIN_TIMEOUT_MS, MAX_TIMER_MS), 60_000)
      .addOption(new Option("--settings-json <json>").hideHelp()),
  ).action(async (f: TrainFlags & { coordinator?: string; rank?: number; ranksPerProc: number; workers?: number; token?: string; out?: string; connectTimeout: number; settingsJson?: string; wire: Wire; kernels?: KernelBackend }) => {
    const rank = f.rank ?? env.rank;
    const world = f.workers ?? env.worldSize;
    if (!f.coordinator && env.masterPort !== undefined && env.masterPort > 65535) {
      throw new SyncbnError(ErrorCode.BadConfig, `MASTER_PORT must be a port in 0..65535, got ${env.masterPort}`);
    }
    const url = f.coordinator ?? (env.masterAddr ? `${f.wire}://${env.masterAddr}:${env.masterPort ?? 29500}` : undefined);
    if (url !== undefined && !/^(wss?|tcp):\/\//.test(url)) {
      throw new SyncbnError(ErrorCode.BadConfig, `--coordinator ${url} is not a ws://HOST:PORT or tcp://HOST:PORT URL`);
    }
    if (rank === undefined || world === undefined || url === undefined) {
      throw new SyncbnError(ErrorCode.BadConfig, "worker needs --rank, --workers (alias --world) and --coordinator (or RANK, WORLD_SIZE, MASTER_ADDR[, MASTER_PORT])");
    }
    checkWorldSize(world);
    if (rank >= world) throw new SyncbnError(ErrorCode.BadConfig, `--rank ${rank} is outside 0..${world - 1} for --workers ${world}`);
    const settings = f.settingsJson ? (JSON.parse(f.settingsJson) as TrainSettings) : await resolveSettings(f, world, env.fashionMnistDir);
    validateSettings(settings, world);
    checkWorkerBlock(rank, f.ranksPerProc, world, settings.norm);
    // Before any layer is built; the launcher's workers get its choice through SYNCBN_KERNELS.
    const kernelChoice = chooseKernels(f.kernels, env.kernels);
    printKernelNotice(kernelChoice, (l) => console.warn(l));
    setKernelBackend(kernelChoice.kernels);
    // A worker started by hand checks its data before it connects; the launcher's workers were checked by the launcher.
    if (!f.settingsJson) await checkRunData(settings, world, env.fashionMnistDir);
    if (f.init && f.resume) throw new SyncbnError(ErrorCode.BadConfig, INIT_AND_RESUME);
    // A bad file is refused before connecting; whether it fits the model is checked once the data is loaded.
    if (f.init) readInitFile(f.init);
    if (f.resume) readCheckpoint(f.resume);
    // Created (or refused) now, not when the final checkpoint is due; after the checks above, so a refused worker leaves no folder.
    const outFolder = f.out !== undefined ? prepareOutDir(f.out) : undefined;
    const client = await CoordinatorClient.connect({
      url,
      rank,
      ranks: f.ranksPerProc,
      worldSize: world,
      token: f.token ?? env.token ?? "",
      conventions: conventionsOf(settings),
      connectTimeoutMs: f.connectTimeout,
      roundTimeoutMs: workerRoundTimeout(f.roundTimeout),
      maxPayload: DEFAULT_MAX_PAYLOAD,
    });
    // Started by `syncbn train` (an IPC channel to it): the launcher shows the run and gets eval progress. By hand: rank 0 shows it.
    const launched = typeof process.send === "function";
    let outDir: string | null;
    try {
      outDir = f.out ?? workerOutDir(client.coordinatorOutDir, rank);
    } catch (e) {
      await client.close();
      throw e;
    }
    const view = launched || rank !== 0 ? null : startWorkerView(settings, world, f.ranksPerProc, Boolean(process.stdout.isTTY) && !env.isCI, statusLine);
    const fault = env.fault;
    // The fault hits the process hosting its rank.
    const mine = (r: number): boolean => r >= rank && r < rank + f.ranksPerProc;
    if (fault && mine(fault.rank)) {
      client.beforeSend = (step, phase) => {
        if (step === fault.step && phase === fault.phase) {
          // The time lets tests measure how fast the others stop.
          process.stderr.write(`fault injection: ${fault.action} at step ${step} ${phase}, t=${Date.now()}\n`);
          process.kill(process.pid, fault.action === "kill" ? "SIGKILL" : "SIGSTOP");
        }
      };
    }
    try {
      await trainWorker({
        settings,
        client,
        rank,
        ranks: f.ranksPerProc,
        worldSize: world,
        outDir,
        outFolder,
        checkpointEvery: f.checkpointEvery,
        resume: f.resume ?? null,
        init: f.init ?? null,
        fashionMnistDir: env.fashionMnistDir,
        midCheckpointWrite: (step) => {
          if (fault && mine(fault.rank) && fault.phase === "checkpoint" && fault.step === step) process.kill(process.pid, "SIGKILL");
        },
        onEvalProgress: launched ? evalProgressSender((m) => process.send!(m)) : view?.onEvalProgress,
        onResult: view?.onResult,
      });
      await client.bye();
    } catch (e) {
      view?.end();
      await client.close();
      throw e;
    }
    view?.end();
    // The launcher prints the run's outputs line; a worker started by hand says what it wrote.
    if (!launched) console.log(outputsLine(rank === 0 ? outDir : null, "none from this worker (rank 0 writes weights.safetensors and checkpoint.bin)"));
  });

  program
    .command("coordinator")
    .description("run only the coordinator; workers join with `syncbn worker` (from any host)")
    .addOption(workersOption("number of workers (default $WORLD_SIZE)"))
    .option("--host <addr>", "address to bind (default 127.0.0.1; MASTER_ADDR if set)")
    .option("--port <p>", "port to listen on (0..65535; 0: any free; default $MASTER_PORT or 29500)", intArg("--port", 0, 65535))
    .option("--token <t>", "run token workers must present (default $SYNCBN_TOKEN); required off loopback")
    .addOption(roundTimeoutOption())
    .addOption(new Option("--on-worker-loss <policy>", "abort the run, or continue without the lost worker (elastic)").choices(["abort", "continue"]).default("abort"))
    .addOption(wireOption())
    .addOption(helloTimeoutOption())
    .option(
      "--join-timeout <ms>",
      `wait up to MS from the start for workers that have not joined yet: a round awaiting only them does not fail at its deadline before then (0..${MAX_TIMER_MS}; 0: no wait beyond the first round's deadline)`,
      intArg("--join-timeout", 0, MAX_TIMER_MS),
      0,
    )
    .option("--out <dir>", "folder for metrics.jsonl and summary.json; workers started by hand on this host without --out write weights.safetensors and checkpoint.bin there too (default runs/<time>)")
    .option("--dashboard <[host:]port>", DASHBOARD_HELP, parseDashboardSpec)
    .action(async (f: { workers?: number; host?: string; port?: number; token?: string; roundTimeout: number; joinTimeout: number; onWorkerLoss: "abort" | "continue"; out?: string; wire: Wire; helloTimeout: number; dashboard?: { host: string; port: number } }) => {
      const world = f.workers ?? env.worldSize;
      if (world === undefined) throw new SyncbnError(ErrorCode.BadConfig, "coordinator needs --workers (alias --world; or WORLD_SIZE)");
      checkWorldSize(world);
      const port = f.port ?? env.masterPort ?? 29500;
      if (port > 65535) throw new SyncbnError(ErrorCode.BadConfig, `MASTER_PORT must be a port in 0..65535, got ${port}`);
      if (f.dashboard) checkDashboardBind(f.dashboard.host, f.token ?? env.token ?? "");
      // Refused before it listens; created only once its ports are taken (below), so a refused coordinator leaves no folder.
      if (f.out !== undefined) checkOutDir(f.out);
      const outDir = f.out ?? defaultOutDir();
      const server = await startCoordinatorServer({
        host: f.host ?? env.masterAddr ?? "127.0.0.1",
        port,
        worldSize: world,
        token: f.token ?? env.token ?? "",
        conventions: null,
        roundTimeoutMs: f.roundTimeout,
        joinWindowMs: f.joinTimeout,
        maxPayload: DEFAULT_MAX_PAYLOAD,
        onWorkerLoss: f.onWorkerLoss,
        wire: f.wire,
        helloTimeoutMs: f.helloTimeout,
        outDir: { host: hostname(), path: resolvePath(outDir) },
      });
      server.coordinator.events.onRefused = refusalLogger((l) => console.error(l));
      let monitor: RunMonitor | null = null;
      const live = await attachLiveViews(server.coordinator, () => monitor, { dashboard: f.dashboard ?? null, token: f.token ?? env.token ?? "" }).catch(async (e: unknown) => {
        await server.close();
        throw e;
      });
      let outFolder: FolderIdentity | null = null;
      try {
        outFolder = prepareOutDir(outDir);
      } catch (e) {
        await live.close();
        await server.close();
        throw e;
      }
      console.log(`syncbn coordinator listening on ${server.url} for ${plural(world, "worker")}; output in ${outDir}`);
      if (live.url) console.log(`dashboard: ${live.url} (read-only)`);
      const outcome = await new Promise<SyncbnError | null>((resolve) => {
        server.coordinator.events.onJoin = (rank) => {
          console.log(`worker rank ${rank} joined`);
          const conv = server.coordinator.runConventions;
          if (!monitor && conv) {
            const t = JSON.parse(conv.training || "{}") as Partial<TrainSettings>;
            monitor = new RunMonitor({
              worldSize: world,
              // Ranks per process as the first process to join hosts them (hand-started workers may pack differently).
              ranksPerProc: server.coordinator.blockOf(rank).size,
              perWorkerBatch: t.batch ?? 0,
              norm: conv.norm,
              model: t.model ?? "?",
              data: t.data ?? "?",
              evalStats: t.evalStats,
              preciseBatches: t.preciseBatches,
              outDir,
              outFolder,
              totalSteps: null,
              stepsPerEpoch: null,
              startStep: 0,
              tty: false,
              print: (l) => console.log(l),
              status: () => {},
              // What the first worker's hello says; the workers' threads and kernels are theirs, unknown here.
              run: runRecord(settingsOfConventions(conv), { workers: world, ranksPerProcess: server.coordinator.blockOf(rank).size, threads: null, kernels: null, wire: f.wire }),
              onFailure: (e) => resolve(e),
            });
            monitor.attach(server.coordinator);
          }
        };
        server.coordinator.events.onDone = () => resolve(null);
        server.coordinator.events.onFailed = (e) => resolve(e);
        process.once("SIGINT", () => resolve(new SyncbnError(ErrorCode.Aborted, "interrupted")));
      });
      await live.close();
      await server.close();
      // A failed run keeps its last step's line too.
      (monitor as RunMonitor | null)?.flush();
      if (outcome) {
        console.log(outputsLine(outDir));
        throw outcome;
      }
      const m = monitor as RunMonitor | null;
      if (m) {
        const s = m.summary();
        m.writeSummary(s);
        for (const l of formatSummary(s)) console.log(l);
      }
      console.log(outputsLine(outDir));
    });
}
