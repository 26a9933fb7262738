// `syncbn launch --workers W -- CMD ARGS…`: torchrun for the syncbn coordinator.
// Starts a coordinator on the tcp wire and W processes of CMD (a PyTorch script
// using python/syncbn), each told its rank and the coordinator through the
// environment; prefixes their output with the rank; on a failure stops the rest
// and says which rank, how it ended, and where the others were waiting. The
// training itself is the script's; this file only starts, watches and stops.

import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { accessSync, constants, existsSync } from "node:fs";
import { availableParallelism } from "node:os";
import { basename, delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";
import { refusalLogger } from "../coordinator/admission.js";
import { checkDashboardBind } from "../coordinator/dashboard.js";
import { DEFAULT_MAX_PAYLOAD, startCoordinatorServer } from "../coordinator/server.js";
import { TORCH_CONVENTIONS, parseNorm, statsGroupSize, type RunConventions } from "../shared/config.js";
import { ErrorCode, LOST_EXIT_GRACE_MS, SyncbnError, lostRanks, namedRanks, roundPlace } from "../shared/errors.js";
import { PIN_MODES, pinProcesses, workerPinning, type PinMode } from "./affinity.js";
import { attachLiveViews } from "./live.js";
import { Option, type Command } from "commander";
import { DEFAULT_HELLO_TIMEOUT_MS, MAX_HELLO_TIMEOUT_MS } from "../coordinator/pending.js";
import { parseDashboardSpec } from "../coordinator/dashboard.js";
import { MAX_TIMER_MS, MIN_TIMEOUT_MS, intArg, roundTimeoutOption, workersOption } from "./flags.js";

/** The repository's Python package (python/syncbn), put first on every rank's PYTHONPATH. */
export const PYTHON_DIR = fileURLToPath(new URL("../../python", import.meta.url));

export interface LaunchOptions {
  workers: number;
  /** sync, local or group:K (checkLaunchNorm refuses the rest). */
  norm: string;
  /** CMD and its arguments. */
  command: string[];
  roundTimeoutMs: number;
  helloTimeoutMs: number;
  /** Every rank must have joined this long after start. */
  joinTimeoutMs: number;
  /** Run token (default: a random one, never printed). */
  token?: string;
  dashboard: { host: string; port: number } | null;
  /** The launcher's own lines (stdout). */
  print(line: string): void;
  /** A rank's output line, already prefixed with its rank. */
  rankOut?(line: string, stream: "stdout" | "stderr"): void;
  /** Extra environment for the ranks. */
  env?: NodeJS.ProcessEnv;
  /** Pin the ranks to CPUs round-robin, each to OMP_NUM_THREADS of them (cli/affinity.ts; default "auto"). */
  pinCpus?: PinMode;
}

export interface LaunchResult {
  ok: boolean;
  /** Root cause first, when !ok. */
  failure: string[];
  interrupted: boolean;
}

/** The --norm modes a PyTorch script's SyncBatchNorm can run; the rest are refused in one line. */
export function checkLaunchNorm(norm: string, workers: number): void {
  const mode = parseNorm(norm);
  if (mode.kind !== "sync" && mode.kind !== "local" && mode.kind !== "group") {
    throw new SyncbnError(
      ErrorCode.BadConfig,
      `--norm ${norm} is not available to syncbn launch: ghost BN, batch renorm, GroupNorm, cross-iteration BN and no norm are the model's own layers in PyTorch (write them in the script); use sync, local or group:K`,
    );
  }
  statsGroupSize(mode, workers); // group:K must divide W
}

/** CMD as an executable path, or a usage error when there is none. */
export function checkCommand(cmd: string, env: NodeJS.ProcessEnv = process.env): void {
  const runnable = (p: string): boolean => {
    try {
      accessSync(p, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  if (cmd.includes("/")) {
    if (!runnable(cmd)) throw new SyncbnError(ErrorCode.BadConfig, `launch: ${cmd} ${existsSync(cmd) ? "is not executable" : "does not exist"}; give the command after --, e.g. -- /usr/bin/python3 train.py`);
    return;
  }
  const dirs = (env.PATH ?? "").split(delimiter).filter(Boolean);
  if (!dirs.some((d) => runnable(join(d, cmd)))) throw new SyncbnError(ErrorCode.BadConfig, `launch: command "${cmd}" not found on PATH; give the command after --, e.g. -- /usr/bin/python3 train.py`);
}

interface Rank {
  rank: number;
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exit: { code: number | null; signal: NodeJS.Signals | null } | null;
  stderrTail: string[];
  /** Its hello was accepted. */
  joined: boolean;
  /** Killed by the launcher after a failure elsewhere: its signal is ours, not its cause. */
  killedByUs: boolean;
}

/** Lines of a stream, each handed on whole (a last partial line at the end). */
function lineSplitter(onLine: (line: string) => void): { push(chunk: string): void; end(): void } {
  let partial = "";
  return {
    push(chunk) {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      for (const l of lines) onLine(l);
    },
    end() {
      if (partial) onLine(partial);
      partial = "";
    },
  };
}

function startRank(rank: number, o: LaunchOptions, env: NodeJS.ProcessEnv): Rank {
  const [cmd, ...args] = o.command;
  // Its own process group: a hung rank's children (DataLoader workers) go with it.
  const child = spawn(cmd!, args, { stdio: ["ignore", "pipe", "pipe"], env, detached: true });
  const r: Rank = { rank, child, exited: null!, exit: null, stderrTail: [], joined: false, killedByUs: false };
  const out = o.rankOut ?? ((line: string, stream: "stdout" | "stderr") => (stream === "stdout" ? process.stdout : process.stderr).write(`${line}\n`));
  const streams = { stdout: child.stdout!, stderr: child.stderr! };
  const ended: Promise<void>[] = [];
  for (const [name, s] of Object.entries(streams) as ["stdout" | "stderr", NodeJS.ReadableStream][]) {
    const split = lineSplitter((line) => {
      if (name === "stderr") {
        r.stderrTail.push(line);
        if (r.stderrTail.length > 40) r.stderrTail.shift();
      }
      out(`[rank ${rank}] ${line}`, name);
    });
    s.setEncoding("utf8");
    s.on("data", (c: string) => split.push(c));
    ended.push(new Promise((res) => s.on("close", () => (split.end(), res()))));
  }
  r.exited = new Promise((resolve) => {
    child.once("error", (e) => {
      r.stderrTail.push(`cannot start ${cmd}: ${e.message}`);
      r.exit = { code: 127, signal: null };
      resolve(r.exit);
    });
    // After the pipes drained: the last lines are in the tail before anyone reads it.
    child.once("exit", (code, signal) => void Promise.all(ended).then(() => resolve((r.exit ??= { code, signal }))));
  });
  return r;
}

function killRank(r: Rank, signal: NodeJS.Signals): void {
  if (r.exit || r.child.pid === undefined) return;
  try {
    process.kill(-r.child.pid, signal); // the rank's process group
  } catch {
    r.child.kill(signal);
  }
}

async function stopAll(ranks: readonly Rank[], graceMs = 2000): Promise<void> {
  const alive = ranks.filter((r) => !r.exit);
  for (const r of alive) {
    r.killedByUs = true;
    killRank(r, "SIGTERM");
  }
  await Promise.race([Promise.all(alive.map((r) => r.exited)), new Promise((res) => setTimeout(res, graceMs).unref())]);
  for (const r of alive) killRank(r, "SIGKILL");
  await Promise.all(alive.map((r) => r.exited));
}

function howEnded(r: Rank): string {
  const e = r.exit!;
  return e.signal ? `was killed by ${e.signal}` : `exited with code ${e.code}`;
}

/** Where the others were: an open round, or between rounds after the last one finished. */
function whereOf(err: SyncbnError | null): string {
  if (err?.context.step === undefined) return "";
  const at = roundPlace(err.context);
  return err.context.after ? `the others were between rounds; the last one finished was ${at}` : `the others were waiting in ${at}`;
}

const NEVER_JOINED = "never joined the run: the script did not call syncbn.torch.init_process_group() (or had not reached it)";

/**
 * The failure report, root cause first: the ranks the coordinator's error names
 * (or the first to end badly), how each ended, where the others waited, its
 * last stderr lines; then the coordinator's error.
 */
function failureLines(ranks: readonly Rank[], first: Rank | null, coord: SyncbnError | null, extra: string[]): string[] {
  const lines = [...extra];
  const named = namedRanks(coord).map((n) => ranks[n]).filter((r): r is Rank => r !== undefined);
  const culprits = named.length > 0 ? named : first ? [first] : [];
  const where = whereOf(coord);
  for (const r of culprits) {
    let status: string;
    if (!r.joined && r.exit && !r.killedByUs) status = r.exit.code === 0 ? `exited with code 0 without joining the run: the script never called syncbn.torch.init_process_group()` : `${howEnded(r)} before it joined the run`;
    else if (!r.joined) status = NEVER_JOINED;
    else if (r.exit && !r.killedByUs) status = howEnded(r);
    else if (coord?.code === ErrorCode.Timeout) status = "stopped responding (hung or too slow) and was killed";
    else status = r.exit ? "lost its connection and was stopped" : "lost its connection";
    lines.push(`rank ${r.rank} ${status}${where ? ` (${where})` : ""}`);
    lines.push(...r.stderrTail.filter((l) => l.trim()).slice(-6).map((l) => `  [rank ${r.rank}] ${l}`));
  }
  if (coord) lines.push(`coordinator: ${coord.message}`);
  if (lines.length === 0) lines.push("a rank failed without a report");
  return lines;
}

export async function runLaunch(o: LaunchOptions): Promise<LaunchResult> {
  checkLaunchNorm(o.norm, o.workers);
  if (o.command.length === 0) throw new SyncbnError(ErrorCode.BadConfig, "launch: no command; put it after --, e.g. syncbn launch --workers 4 -- /usr/bin/python3 train.py");
  checkCommand(o.command[0]!, { ...process.env, ...o.env });
  if (o.dashboard) checkDashboardBind(o.dashboard.host, o.token ?? "");
  // As torchrun: one intra-op thread per rank unless the cores allow more or the user said.
  const ompThreads = o.env?.OMP_NUM_THREADS ?? process.env.OMP_NUM_THREADS ?? String(Math.max(1, Math.floor(availableParallelism() / o.workers)));
  // Each rank pinned to as many CPUs as its intra-op threads (a value that is not a count: 1).
  const threadsPerRank = /^[1-9]\d{0,3}$/.test(ompThreads) ? Number(ompThreads) : 1;
  const pinning = workerPinning(o.pinCpus ?? "auto", o.workers * threadsPerRank);
  const token = o.token ?? randomBytes(16).toString("hex");
  // The run's settings are the launcher's: every rank echoes SYNCBN_TRAINING, so the hellos agree by construction.
  const training = JSON.stringify({ command: o.command.map((a) => basename(a)).join(" "), model: basename(o.command.find((a, i) => i > 0 && !a.startsWith("-")) ?? o.command[0]!) });
  const conventions: RunConventions = { ...TORCH_CONVENTIONS, norm: o.norm, training };
  const server = await startCoordinatorServer({
    worldSize: o.workers,
    token,
    conventions,
    roundTimeoutMs: o.roundTimeoutMs,
    // A rank still importing torch when the others open the first round is waited for until --join-timeout, not --round-timeout.
    joinWindowMs: o.joinTimeoutMs,
    host: "127.0.0.1",
    port: 0,
    maxPayload: DEFAULT_MAX_PAYLOAD,
    wire: "tcp",
    helloTimeoutMs: o.helloTimeoutMs,
  });
  const coordinator = server.coordinator;
  coordinator.events.onRefused = refusalLogger((l) => process.stderr.write(`coordinator: ${l}\n`));
  const live = await attachLiveViews(coordinator, () => null, { dashboard: o.dashboard, token: o.token ?? "" }).catch(async (e: unknown) => {
    await server.close();
    throw e;
  });
  if (live.url) o.print(`dashboard: ${live.url} (read-only)`);
  o.print(`syncbn launch: ${o.workers} rank${o.workers === 1 ? "" : "s"} of \`${o.command.join(" ")}\`, --norm ${o.norm}; coordinator ${server.url}`);

  let wake: () => void = () => {};
  const woken = new Promise<void>((r) => (wake = r));
  let coordFailure: SyncbnError | null = null;
  let coordSettle: () => void = () => {};
  const coordSettled = new Promise<void>((r) => (coordSettle = r));
  coordinator.events.onFailed = (e) => {
    coordFailure = e;
    coordSettle();
    wake();
  };
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...o.env,
    WORLD_SIZE: String(o.workers),
    LOCAL_WORLD_SIZE: String(o.workers),
    SYNCBN_COORDINATOR: server.url,
    SYNCBN_TOKEN: token, // by environment, not argv: `ps` does not show it
    SYNCBN_NORM: o.norm,
    SYNCBN_TRAINING: training,
    SYNCBN_ROUND_TIMEOUT_MS: String(o.roundTimeoutMs),
    PYTHONPATH: [PYTHON_DIR, process.env.PYTHONPATH, o.env?.PYTHONPATH].filter(Boolean).join(delimiter),
    PYTHONUNBUFFERED: "1",
    OMP_NUM_THREADS: ompThreads,
  };

  const ranks: Rank[] = [];
  coordinator.events.onJoin = (r) => {
    if (ranks[r]) ranks[r].joined = true;
  };
  const extra: string[] = [];
  let firstBad: Rank | null = null;
  for (let r = 0; r < o.workers; r++) ranks.push(startRank(r, o, { ...env, RANK: String(r), LOCAL_RANK: String(r) }));
  // Pinned as soon as started, before the interpreter makes its threads (they inherit the set).
  if (pinning) pinProcesses(ranks.map((r) => ({ pid: r.child.pid, rank: r.rank })), pinning, threadsPerRank, "ranks", o.print);
  for (const r of ranks) {
    void r.exited.then(({ code, signal }) => {
      if (code === 0 && !signal && r.joined) return;
      firstBad ??= r;
      wake();
    });
  }
  const joinTimer = setTimeout(() => {
    const late = ranks.filter((r) => !r.joined && !r.exit);
    if (late.length === 0) return;
    extra.push(...late.map((r) => `rank ${r.rank} had not joined ${o.joinTimeoutMs} ms after start: the script did not call syncbn.torch.init_process_group() (or is stuck before it); --join-timeout gives it longer`));
    firstBad ??= late[0]!;
    wake();
  }, o.joinTimeoutMs);
  let interrupted = false;
  const onSignal = (): void => {
    interrupted = true;
    wake();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  const allExited = Promise.all(ranks.map((r) => r.exited)).then(() => wake());
  try {
    await woken;
    if (interrupted) {
      o.print("interrupted: stopping all ranks");
      await stopAll(ranks);
      return { ok: false, interrupted: true, failure: ["stopped all ranks"] };
    }
    if (firstBad || coordFailure) {
      // A rank that died: its connection closes a moment later, and the coordinator's error says where the others waited.
      await Promise.race([coordSettled, new Promise((res) => setTimeout(res, 1000))]);
      // The others fail fast on the coordinator's error; let them print it.
      await Promise.race([allExited, new Promise((res) => setTimeout(res, 1500))]);
      // A rank whose connection closed is usually on its way out (a traceback, then the interpreter's
      // teardown, which takes seconds on a loaded machine): its exit code says more than "lost its connection".
      const culprits = lostRanks(coordFailure).map((n) => ranks[n]).filter((r): r is Rank => r !== undefined && !r.exit);
      if (culprits.length > 0) await Promise.race([Promise.all(culprits.map((r) => r.exited)), new Promise((res) => setTimeout(res, LOST_EXIT_GRACE_MS))]);
      const failure = failureLines(ranks, firstBad, coordFailure, extra);
      await stopAll(ranks);
      return { ok: false, interrupted: false, failure };
    }
    return { ok: true, interrupted: false, failure: [] };
  } finally {
    clearTimeout(joinTimer);
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await stopAll(ranks);
    await live.close();
    await server.close();
  }
}

/** The `launch` command's flags; the work is runLaunch's. */
export function registerLaunchCommand(program: Command): void {
  program
    .command("launch")
    .description("run W processes of a PyTorch script (python/syncbn) on a coordinator, as torchrun does: syncbn launch --workers 4 -- /usr/bin/python3 train.py")
    .argument("<command...>", "the command every rank runs, after --")
    .addOption(workersOption("number of ranks (processes of the command)", 4))
    .option("--norm <mode>", "sync | local | group:K (K ranks per statistics group)", "sync")
    .addOption(roundTimeoutOption())
    .option("--hello-timeout <ms>", `close a connection whose hello is not accepted within MS (100..${MAX_HELLO_TIMEOUT_MS})`, intArg("--hello-timeout", 100, MAX_HELLO_TIMEOUT_MS), DEFAULT_HELLO_TIMEOUT_MS)
    .option("--join-timeout <ms>", `every rank must have called init_process_group() within MS of the start; until then the rounds wait for ranks not yet joined (${MIN_TIMEOUT_MS}..${MAX_TIMER_MS})`, intArg("--join-timeout", MIN_TIMEOUT_MS, MAX_TIMER_MS), 60_000)
    .option("--token <token>", "run token (default: a random one, passed to the ranks as SYNCBN_TOKEN)")
    .addOption(
      new Option("--pin-cpus <mode>", "pin each rank to OMP_NUM_THREADS CPUs round-robin (Linux, taskset): auto pins when it keeps the cores balanced (ranks × threads ≤ CPUs or a multiple of them)")
        .choices([...PIN_MODES])
        .default("auto"),
    )
    .option("--dashboard <[host:]port>", "serve a live, read-only dashboard of the run at [HOST:]PORT (HOST default 127.0.0.1; off loopback it needs --token)", parseDashboardSpec)
    .action(async (command: string[], f: { workers: number; norm: string; roundTimeout: number; helloTimeout: number; joinTimeout: number; token?: string; dashboard?: { host: string; port: number }; pinCpus: PinMode }) => {
      const r = await runLaunch({
        workers: f.workers,
        norm: f.norm,
        command,
        roundTimeoutMs: f.roundTimeout,
        helloTimeoutMs: f.helloTimeout,
        joinTimeoutMs: f.joinTimeout,
        token: f.token,
        dashboard: f.dashboard ?? null,
        pinCpus: f.pinCpus,
        print: (l) => console.log(l),
      });
      if (r.interrupted) process.exitCode = 130;
      else if (!r.ok) {
        console.error(["syncbn launch failed:", ...r.failure.map((l) => `  ${l}`)].join("\n"));
        process.exitCode = 1;
      }
    });
}
