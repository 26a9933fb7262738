// Entry of one worker thread under `--transport thread`: the same training loop
// as a worker process (worker/train.ts), talking to the in-process coordinator
// over the MessagePort it was given. Errors end the thread with code 1 and a
// `syncbn:` line on its stderr, as a worker process would.

import { parentPort, workerData, type MessagePort } from "node:worker_threads";
import { evalProgressSender } from "./eval-progress.js";
import { setKernelBackend, type KernelBackend } from "./nn/kernels/backend.js";
import { setComputeThreads } from "./nn/kernels/threads.js";
import type { TrainSettings } from "./settings.js";
import { connectOverPort } from "./port-link.js";
import { trainWorker } from "./train.js";

/** What the launcher (cli/threads.ts) passes to each thread. */
export interface ThreadWorkerData {
  port: MessagePort;
  /** The first rank of the thread's block. */
  rank: number;
  /** Ranks of the block (default 1). */
  ranks?: number;
  worldSize: number;
  token: string;
  settings: TrainSettings;
  outDir: string | null;
  checkpointEvery: number;
  resume: string | null;
  init?: string | null;
  roundTimeoutMs: number;
  fashionMnistDir?: string;
  /** SYNCBN_KERNELS as the launcher read it: a thread has its own module state, so it is passed, not inherited. */
  kernels?: KernelBackend;
  /** Compute threads of this worker thread (--threads, resolved by the launcher). */
  threads?: number;
}

async function main(d: ThreadWorkerData): Promise<void> {
  if (d.kernels) setKernelBackend(d.kernels);
  if (d.threads) setComputeThreads(d.threads);
  const client = await connectOverPort(d);
  try {
    await trainWorker({
      settings: d.settings,
      client,
      rank: d.rank,
      ranks: d.ranks,
      worldSize: d.worldSize,
      outDir: d.outDir,
      checkpointEvery: d.checkpointEvery,
      resume: d.resume,
      init: d.init,
      fashionMnistDir: d.fashionMnistDir,
      onEvalProgress: evalProgressSender((m) => parentPort?.postMessage(m)),
    });
    await client.bye();
  } catch (e) {
    await client.close();
    throw e;
  }
}

main(workerData as ThreadWorkerData).catch((e: unknown) => {
  // A thread's stderr reaches the launcher asynchronously: end by exit code, not process.exit().
  process.stderr.write(`syncbn: ${(e as Error).message ?? String(e)}\n`);
  process.exitCode = 1;
  setTimeout(() => process.exit(1), 2000).unref();
});
