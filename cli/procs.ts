// Child worker processes as the launcher and the conformance runner need them:
// forked with IPC, stderr kept (last lines) for root-cause reports, and a
// promise of the exit. Not a process supervisor: callers decide what to kill.

import { fork, type ChildProcess } from "node:child_process";

/** What the launcher needs of a worker: a child process, or a worker thread (cli/threads.ts). */
export interface WorkerHandle {
  kill(signal?: NodeJS.Signals): boolean;
  readonly exitCode: number | null;
  readonly signalCode: NodeJS.Signals | null;
}

export interface WorkerProcess {
  /** The (first) rank it hosts. */
  rank: number;
  /** How many consecutive ranks from `rank` it hosts (absent: 1). */
  ranks?: number;
  child: WorkerHandle;
  /** OS process id (undefined for a worker thread, or a process that failed to spawn). */
  pid?: number;
  /** Resolves when the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The last stderr lines (at most 40). */
  stderrTail(): string[];
  /** Messages received over IPC. */
  messages: unknown[];
}

export function forkWorker(script: string | URL, args: string[], rank: number, opts: { env?: NodeJS.ProcessEnv; onMessage?: (m: unknown) => void; echoStderr?: boolean } = {}): WorkerProcess {
  const child = fork(script, args, {
    stdio: ["ignore", "inherit", "pipe", "ipc"],
    env: opts.env ?? process.env,
    execArgv: [],
  });
  const tail: string[] = [];
  let partial = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    if (opts.echoStderr) process.stderr.write(chunk);
    const lines = (partial + chunk).split("\n");
    partial = lines.pop() ?? "";
    for (const l of lines) {
      tail.push(l);
      if (tail.length > 40) tail.shift();
    }
  });
  const messages: unknown[] = [];
  child.on("message", (m) => {
    messages.push(m);
    opts.onMessage?.(m);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
  });
  return {
    rank,
    child,
    pid: child.pid,
    exited,
    stderrTail: () => (partial ? [...tail, partial] : [...tail]),
    messages,
  };
}

/** Kill every still-running process (SIGKILL after graceMs of SIGTERM). */
export async function killAll(procs: readonly WorkerProcess[], graceMs = 2000): Promise<void> {
  const alive = procs.filter((p) => p.child.exitCode === null && p.child.signalCode === null);
  for (const p of alive) p.child.kill("SIGTERM");
  await Promise.race([Promise.all(alive.map((p) => p.exited)), new Promise((r) => setTimeout(r, graceMs).unref())]);
  for (const p of alive) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
  await Promise.all(alive.map((p) => p.exited));
}

/**
 * The main of a forked child that reports one message to its parent: runs body,
 * sends its result over IPC (waiting for the send to flush: disconnecting first
 * would drop a large report), then disconnects; on error prints it and exits 1.
 */
export function runChildMain(body: () => Promise<unknown>): void {
  body()
    .then((report) => new Promise<void>((resolve, reject) => process.send!(report, undefined, {}, (e) => (e ? reject(e) : resolve()))))
    .then(
      () => process.disconnect?.(),
      (e: unknown) => {
        process.stderr.write(`${(e as Error).message}\n`);
        process.exitCode = 1;
        process.disconnect?.();
      },
    );
}
