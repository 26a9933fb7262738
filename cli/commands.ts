// The `train`, `worker` and `coordinator` commands: flag definitions shared by
// `train` and `worker` (every worker of a run must get the same ones), and the
// actions. Flag parsing only; the work is in train.ts, worker/ and coordinator/.

import { Command, InvalidArgumentError, Option } from "commander";
import { DEFAULT_MAX_PAYLOAD, WIRES, startCoordinatorServer, type Wire } from "../coordinator/server.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { CoordinatorClient } from "../worker/client.js";
import { DEFAULT_SETTINGS, conventionsOf, validateSettings, type TrainSettings } from "../worker/settings.js";
import { trainWorker } from "../worker/train.js";
import { PIN_MODES, type PinMode } from "./affinity.js";
import { readEnv } from "./env.js";
import { RunMonitor, formatSummary } from "./monitor.js";
import { runTrain } from "./train.js";
import { checkDashboardBind, parseDashboardSpec } from "../coordinator/dashboard.js";
import { attachLiveViews } from "./live.js";

export function intArg(flag: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${flag} must be an integer ≥ ${min}, got "${v}"`);
    return n;
  };
}

export function numArg(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new InvalidArgumentError(`${flag} must be a number, got "${v}"`);
    return n;
  };
}

const D = DEFAULT_SETTINGS;

function addTrainFlags(cmd: Command): Command {
  return cmd
    .option("--batch <n>", "samples per worker per step", intArg("--batch", 1), D.batch)
    .option("--norm <mode>", "sync | local | group:K | ghost:G | renorm | groupnorm:G | none", D.norm)
    .addOption(new Option("--model <kind>", "reference model").choices(["mlp", "cnn"]).default(D.model))
    .option("--data <spec>", "synthetic | fashion-mnist | DIR (folder of IDX files)", D.data)
    .option("--epochs <n>", "epochs to train (ignored with --steps)", intArg("--epochs", 1), D.epochs)
    .option("--steps <n>", "total training steps (overrides --epochs)", intArg("--steps", 1))
    .option("--lr <x>", "SGD learning rate", numArg("--lr"), D.lr)
    .option("--momentum <x>", "SGD momentum", numArg("--momentum"), D.momentum)
    .option("--weight-decay <x>", "L2 weight decay", numArg("--weight-decay"), D.weightDecay)
    .option("--seed <n>", "seed for init, shuffling and synthetic data", intArg("--seed", 0), D.seed)
    .option("--bn-eps <x>", "BN epsilon", numArg("--bn-eps"), D.bnEps)
    .option("--bn-momentum <x>", 'BN running-stat momentum, or "null" for a cumulative average', String(D.bnMomentum))
    .addOption(new Option("--bn-momentum-style <style>", "torch: r ← (1−m)r + m·batch; keras: r ← m·r + (1−m)·batch").choices(["torch", "keras"]).default(D.bnMomentumStyle))
    .option("--biased-running-var", "running var from M2/n (Keras/Flax) instead of M2/(n−1) (PyTorch)")
    .option("--train-size <n>", "use only the first N training samples", intArg("--train-size", 1))
    .option("--test-size <n>", "use only the first N test samples", intArg("--test-size", 1))
    .option("--eval-batch <n>", "samples per eval forward", intArg("--eval-batch", 1), D.evalBatch)
    .option("--eval-every <n>", "also evaluate every N steps (0: at epoch ends only)", intArg("--eval-every", 0), D.evalEvery)
    .addOption(new Option("--eval-stats <kind>", "BN statistics for eval: ema (running averages) or precise (PreciseBN)").choices(["ema", "precise"]).default(D.evalStats))
    .option("--precise-batches <n>", "training batches PreciseBN recomputes statistics over", intArg("--precise-batches", 1), D.preciseBatches)
    .option("--renorm-rmax <x>", "batch renorm r clip (after warm-up)", numArg("--renorm-rmax"), D.renormRMax)
    .option("--renorm-dmax <x>", "batch renorm d clip (after warm-up)", numArg("--renorm-dmax"), D.renormDMax)
    .option("--renorm-warmup <steps>", "steps over which renorm clips relax from (1, 0) to (rmax, dmax)", intArg("--renorm-warmup", 0), D.renormWarmup)
    .option("--checksum-every <n>", "compare replicas' parameter checksums every K steps (0: never)", intArg("--checksum-every", 0), D.checksumEvery)
    .option("--checkpoint-every <n>", "also write a checkpoint every N steps (0: only at the end)", intArg("--checkpoint-every", 0), 0)
    .option("--resume <file>", "continue from a checkpoint written by an earlier run")
    .option("--round-timeout <ms>", "deadline of every sync round", intArg("--round-timeout", 100), 60_000);
}

interface TrainFlags {
  batch: number;
  norm: string;
  model: "mlp" | "cnn";
  data: string;
  epochs: number;
  steps?: number;
  lr: number;
  momentum: number;
  weightDecay: number;
  seed: number;
  bnEps: number;
  bnMomentum: string;
  bnMomentumStyle: "torch" | "keras";
  biasedRunningVar?: boolean;
  trainSize?: number;
  testSize?: number;
  evalBatch: number;
  evalEvery: number;
  checksumEvery: number;
  evalStats: "ema" | "precise";
  preciseBatches: number;
  renormRmax: number;
  renormDmax: number;
  renormWarmup: number;
  checkpointEvery: number;
  resume?: string;
  roundTimeout: number;
}

function settingsFromFlags(f: TrainFlags): TrainSettings {
  let bnMomentum: number | null = null;
  if (f.bnMomentum !== "null") {
    bnMomentum = Number(f.bnMomentum);
    if (!Number.isFinite(bnMomentum)) throw new SyncbnError(ErrorCode.BadConfig, `--bn-momentum must be a number or "null", got "${f.bnMomentum}"`);
  }
  return {
    model: f.model,
    norm: f.norm,
    data: f.data,
    batch: f.batch,
    steps: f.steps ?? null,
    epochs: f.epochs,
    lr: f.lr,
    momentum: f.momentum,
    weightDecay: f.weightDecay,
    seed: f.seed,
    bnEps: f.bnEps,
    bnMomentum,
    bnMomentumStyle: f.bnMomentumStyle,
    unbiasedRunningVar: !f.biasedRunningVar,
    trainSize: f.trainSize ?? null,
    testSize: f.testSize ?? null,
    evalBatch: f.evalBatch,
    checksumEvery: f.checksumEvery,
    evalEvery: f.evalEvery,
    evalStats: f.evalStats,
    preciseBatches: f.preciseBatches,
    renormRMax: f.renormRmax,
    renormDMax: f.renormDmax,
    renormWarmup: f.renormWarmup,
  };
}

function defaultOutDir(): string {
  const t = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  return `runs/${t}`;
}

/** --wire: how worker processes and the coordinator talk (coordinator/server.ts). */
function wireOption(what = "how workers and the coordinator talk"): Option {
  return new Option("--wire <kind>", `${what}: ws (WebSocket) or tcp (raw TCP, the same messages with less work per message; same results, bit for bit)`)
    .choices([...WIRES])
    .default("ws");
}

const DASHBOARD_HELP = "serve a live, read-only dashboard of the run at [HOST:]PORT (HOST default 127.0.0.1; off loopback it needs the run token)";

export function registerTrainCommands(program: Command): void {
  const env = readEnv();
  addTrainFlags(
    program
      .command("train")
      .description("train a reference model data-parallel on W local worker processes")
      .option("--workers <n>", "number of worker processes", intArg("--workers", 1), 4)
      .addOption(new Option("--on-worker-loss <policy>", "abort the run, or continue without the lost worker (elastic)").choices(["abort", "continue"]).default("abort"))
      .addOption(
        new Option("--transport <kind>", "process: worker processes over the --wire; thread: worker_threads in one process over MessagePorts (same results, bit for bit)")
          .choices(["process", "thread"])
          .default("process"),
      )
      .addOption(wireOption())
      .addOption(
        new Option("--pin-cpus <mode>", "pin worker processes to CPUs round-robin (Linux, taskset): auto pins when it keeps the cores balanced (W ≤ CPUs or a multiple of them)")
          .choices([...PIN_MODES])
          .default("auto"),
      )
      .option("--out <dir>", "folder for metrics.jsonl, summary.json and checkpoint.bin (default runs/<time>)")
      .option("--dashboard <[host:]port>", DASHBOARD_HELP, parseDashboardSpec),
  ).action(async (f: TrainFlags & { workers: number; out?: string; onWorkerLoss: "abort" | "continue"; transport: "process" | "thread"; wire: Wire; pinCpus: PinMode; dashboard?: { host: string; port: number } }) => {
    if (f.transport === "thread" && f.wire !== "ws") {
      throw new SyncbnError(ErrorCode.BadConfig, "--wire applies to worker processes; --transport thread talks over MessagePorts (drop --wire, or use --transport process)");
    }
    if (f.transport === "thread" && f.pinCpus === "on") {
      throw new SyncbnError(ErrorCode.BadConfig, "--pin-cpus pins worker processes; --transport thread runs threads in one process (drop --pin-cpus, or use --transport process)");
    }
    const tty = Boolean(process.stdout.isTTY) && !env.isCI;
    const r = await runTrain({
      settings: settingsFromFlags(f),
      workers: f.workers,
      outDir: f.out ?? defaultOutDir(),
      checkpointEvery: f.checkpointEvery,
      resume: f.resume ?? null,
      roundTimeoutMs: f.roundTimeout,
      onWorkerLoss: f.onWorkerLoss,
      transport: f.transport,
      wire: f.wire,
      pinCpus: f.pinCpus,
      dashboard: f.dashboard ?? null,
      token: env.token,
      tty,
      print: (l) => console.log(l),
      status: (l) => process.stdout.write(`\r\x1b[2K${l}`),
    });
    if (!r.ok) {
      console.error(r.interrupted ? "syncbn train interrupted:" : "syncbn train failed:");
      for (const l of r.failure) console.error(`  ${l}`);
      process.exitCode = r.interrupted ? 130 : 1;
    }
  });

  addTrainFlags(
    program
      .command("worker")
      .description("run one worker of a run whose coordinator is elsewhere (multi-host, torchrun/Slurm conventions)")
      .option("--coordinator <url>", "ws://HOST:PORT, or tcp://HOST:PORT for a coordinator on --wire tcp (default from MASTER_ADDR/MASTER_PORT and --wire)")
      .addOption(wireOption("the wire of the URL built from MASTER_ADDR/MASTER_PORT"))
      .option("--rank <r>", "this worker's rank (default $RANK)", intArg("--rank", 0))
      .option("--world <w>", "number of workers (default $WORLD_SIZE)", intArg("--world", 1))
      .option("--token <t>", "the run token (default $SYNCBN_TOKEN)")
      .option("--out <dir>", "folder for checkpoints (rank 0 writes them)")
      .option("--connect-timeout <ms>", "keep retrying the coordinator this long", intArg("--connect-timeout", 100), 60_000)
      .addOption(new Option("--settings-json <json>").hideHelp()),
  ).action(async (f: TrainFlags & { coordinator?: string; rank?: number; world?: number; token?: string; out?: string; connectTimeout: number; settingsJson?: string; wire: Wire }) => {
    const rank = f.rank ?? env.rank;
    const world = f.world ?? env.worldSize;
    const url = f.coordinator ?? (env.masterAddr ? `${f.wire}://${env.masterAddr}:${env.masterPort ?? 29500}` : undefined);
    if (url !== undefined && !/^(wss?|tcp):\/\//.test(url)) {
      throw new SyncbnError(ErrorCode.BadConfig, `--coordinator ${url} is not a ws://HOST:PORT or tcp://HOST:PORT URL`);
    }
    if (rank === undefined || world === undefined || url === undefined) {
      throw new SyncbnError(ErrorCode.BadConfig, "worker needs --rank, --world and --coordinator (or RANK, WORLD_SIZE, MASTER_ADDR[, MASTER_PORT])");
    }
    if (rank >= world) throw new SyncbnError(ErrorCode.BadConfig, `--rank ${rank} is outside 0..${world - 1} for --world ${world}`);
    const settings = f.settingsJson ? (JSON.parse(f.settingsJson) as TrainSettings) : settingsFromFlags(f);
    validateSettings(settings, world);
    const client = await CoordinatorClient.connect({
      url,
      rank,
      worldSize: world,
      token: f.token ?? env.token ?? "",
      conventions: conventionsOf(settings),
      connectTimeoutMs: f.connectTimeout,
      roundTimeoutMs: f.roundTimeout + 5_000,
      maxPayload: DEFAULT_MAX_PAYLOAD,
    });
    const fault = env.fault;
    if (fault && fault.rank === rank) {
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
        worldSize: world,
        outDir: f.out ?? null,
        checkpointEvery: f.checkpointEvery,
        resume: f.resume ?? null,
        fashionMnistDir: env.fashionMnistDir,
        midCheckpointWrite: (step) => {
          if (fault && fault.rank === rank && fault.phase === "checkpoint" && fault.step === step) process.kill(process.pid, "SIGKILL");
        },
      });
      await client.bye();
    } catch (e) {
      await client.close();
      throw e;
    }
  });

  program
    .command("coordinator")
    .description("run only the coordinator; workers join with `syncbn worker` (from any host)")
    .option("--world <w>", "number of workers (default $WORLD_SIZE)", intArg("--world", 1))
    .option("--host <addr>", "address to bind (default 127.0.0.1; MASTER_ADDR if set)")
    .option("--port <p>", "port to listen on (0: any free; default $MASTER_PORT or 29500)", intArg("--port", 0))
    .option("--token <t>", "run token workers must present (default $SYNCBN_TOKEN); required off loopback")
    .option("--round-timeout <ms>", "deadline of every sync round", intArg("--round-timeout", 100), 60_000)
    .addOption(new Option("--on-worker-loss <policy>", "abort the run, or continue without the lost worker (elastic)").choices(["abort", "continue"]).default("abort"))
    .addOption(wireOption())
    .option("--out <dir>", "folder for metrics.jsonl and summary.json")
    .option("--dashboard <[host:]port>", DASHBOARD_HELP, parseDashboardSpec)
    .action(async (f: { world?: number; host?: string; port?: number; token?: string; roundTimeout: number; onWorkerLoss: "abort" | "continue"; out?: string; wire: Wire; dashboard?: { host: string; port: number } }) => {
      const world = f.world ?? env.worldSize;
      if (world === undefined) throw new SyncbnError(ErrorCode.BadConfig, "coordinator needs --world (or WORLD_SIZE)");
      if (f.dashboard) checkDashboardBind(f.dashboard.host, f.token ?? env.token ?? "");
      const server = await startCoordinatorServer({
        host: f.host ?? env.masterAddr ?? "127.0.0.1",
        port: f.port ?? env.masterPort ?? 29500,
        worldSize: world,
        token: f.token ?? env.token ?? "",
        conventions: null,
        roundTimeoutMs: f.roundTimeout,
        maxPayload: DEFAULT_MAX_PAYLOAD,
        onWorkerLoss: f.onWorkerLoss,
        wire: f.wire,
      });
      console.log(`syncbn coordinator listening on ${server.url} for ${world} workers`);
      let monitor: RunMonitor | null = null;
      const live = await attachLiveViews(server.coordinator, () => monitor, { dashboard: f.dashboard ?? null, token: f.token ?? env.token ?? "", roundTimeoutMs: f.roundTimeout }).catch(async (e: unknown) => {
        await server.close();
        throw e;
      });
      if (live.url) console.log(`dashboard: ${live.url} (read-only)`);
      const outcome = await new Promise<SyncbnError | null>((resolve) => {
        server.coordinator.events.onJoin = (rank) => {
          console.log(`worker rank ${rank} joined`);
          const conv = server.coordinator.runConventions;
          if (!monitor && conv) {
            const t = JSON.parse(conv.training || "{}") as Partial<TrainSettings>;
            monitor = new RunMonitor({
              worldSize: world,
              perWorkerBatch: t.batch ?? 0,
              norm: conv.norm,
              model: t.model ?? "?",
              data: t.data ?? "?",
              evalStats: t.evalStats,
              preciseBatches: t.preciseBatches,
              outDir: f.out ?? null,
              totalSteps: null,
              stepsPerEpoch: null,
              startStep: 0,
              tty: false,
              print: (l) => console.log(l),
              status: () => {},
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
      if (outcome) throw outcome;
      const m = monitor as RunMonitor | null;
      if (m) {
        const s = m.summary();
        m.writeSummary(s);
        for (const l of formatSummary(s)) console.log(l);
      }
    });
}
