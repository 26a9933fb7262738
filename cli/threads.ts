// Worker threads for `syncbn train --transport thread`, shaped like worker
// processes (cli/procs.ts) so the launcher handles both alike: exit promise,
// stderr tail for root-cause reports, kill. Not a supervisor.

import { Worker } from "node:worker_threads";
import type { ThreadWorkerData } from "../worker/thread-main.js";
import type { WorkerProcess } from "./procs.js";

const THREAD_SCRIPT = new URL("../worker/thread-main.js", import.meta.url);

export function startThreadWorker(data: ThreadWorkerData, onMessage?: (m: unknown) => void): WorkerProcess {
  const worker = new Worker(THREAD_SCRIPT, { workerData: data, transferList: [data.port], stderr: true, execArgv: [] });
  if (onMessage) worker.on("message", onMessage);
  const tail: string[] = [];
  let partial = "";
  worker.stderr.setEncoding("utf8");
  worker.stderr.on("data", (chunk: string) => {
    const lines = (partial + chunk).split("\n");
    partial = lines.pop() ?? "";
    for (const l of lines) {
      tail.push(l);
      if (tail.length > 40) tail.shift();
    }
  });
  let exitCode: number | null = null;
  worker.on("error", (e) => {
    // An uncaught error the thread did not report itself.
    tail.push(`syncbn: ${e.message}`);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    worker.once("exit", (code) => {
      exitCode = code;
      resolve({ code, signal: null });
    });
  });
  return {
    rank: data.rank,
    child: {
      get exitCode() {
        return exitCode;
      },
      signalCode: null,
      kill: () => {
        void worker.terminate();
        return true;
      },
    },
    exited,
    stderrTail: () => (partial ? [...tail, partial] : [...tail]),
    messages: [],
  };
}
