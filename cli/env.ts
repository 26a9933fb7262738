// The one place syncbn reads environment variables: its own (SYNCBN_*) and the
// launcher conventions torchrun, Slurm and Kubernetes jobs set (RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Everything else gets values passed in.

import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { KERNEL_SETTINGS, type KernelBackend } from "../worker/nn/kernels/backend.js";

export interface EnvSettings {
  rank?: number;
  worldSize?: number;
  masterAddr?: string;
  masterPort?: number;
  token?: string;
  fashionMnistDir?: string;
  /** SYNCBN_KERNELS: conv/linear kernels and the norm layers' passes, "native" (Conv2d only), "wasm" or "js"; --kernels overrides it, and without either cli/kernels.ts picks. */
  kernels?: KernelBackend;
  /** SYNCBN_NATIVE=off: neither build (scripts/build-native.mjs) nor load the native addon, as on a machine without it. */
  nativeOff: boolean;
  /** SYNCBN_THREADS: compute threads of each worker (1..MAX_THREADS), for setComputeThreads; the launcher sets it from --threads. */
  threads?: number;
  isCI: boolean;
  /**
   * Fault injection for tests: SYNCBN_FAULT="RANK:STEP:PHASE[:ACTION]" makes that
   * worker act right before sending its first contribution of PHASE at STEP:
   * ACTION "kill" (default) SIGKILLs itself, "stop" SIGSTOPs itself. PHASE
   * "checkpoint": rank 0 SIGKILLs itself halfway through writing the checkpoint
   * after STEP steps.
   */
  fault?: { rank: number; step: number; phase: string; action: "kill" | "stop" };
}

function intVar(name: string, env: NodeJS.ProcessEnv): number | undefined {
  const v = env[name];
  if (v === undefined || v === "") return undefined;
  const n = Number(v);
  return Number.isInteger(n) && n >= 0 ? n : undefined;
}

function kernelsVar(env: NodeJS.ProcessEnv): KernelBackend | undefined {
  const v = env.SYNCBN_KERNELS;
  if (v === undefined || v === "") return undefined;
  const backend = KERNEL_SETTINGS.find((b) => b === v);
  if (!backend) throw new SyncbnError(ErrorCode.BadConfig, `SYNCBN_KERNELS must be one of ${KERNEL_SETTINGS.join(", ")}, got "${v}"`);
  return backend;
}

/** The most compute threads a worker takes (--threads, SYNCBN_THREADS). */
export const MAX_THREADS = 64;

/** SYNCBN_GC: unset (incremental marking off, cli/gc.ts) or "v8" (V8's default collector). */
function gcVar(env: NodeJS.ProcessEnv): void {
  const v = env.SYNCBN_GC;
  if (v !== undefined && v !== "" && v !== "v8") throw new SyncbnError(ErrorCode.BadConfig, `SYNCBN_GC must be "v8" (V8's default garbage collector) or unset, got "${v}"`);
}

/** SYNCBN_MALLOC: unset (big freed blocks kept for reuse, native/addon.cc TuneAllocator) or "default" (glibc's own settings). */
function mallocVar(env: NodeJS.ProcessEnv): void {
  const v = env.SYNCBN_MALLOC;
  if (v !== undefined && v !== "" && v !== "default") throw new SyncbnError(ErrorCode.BadConfig, `SYNCBN_MALLOC must be "default" (glibc's malloc settings) or unset, got "${v}"`);
}

function threadsVar(env: NodeJS.ProcessEnv): number | undefined {
  const v = env.SYNCBN_THREADS;
  if (v === undefined || v === "") return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > MAX_THREADS) throw new SyncbnError(ErrorCode.BadConfig, `SYNCBN_THREADS must be an integer in 1..${MAX_THREADS}, got "${v}"`);
  return n;
}

export function readEnv(env: NodeJS.ProcessEnv = process.env): EnvSettings {
  gcVar(env);
  mallocVar(env);
  return {
    rank: intVar("RANK", env) ?? intVar("SLURM_PROCID", env),
    worldSize: intVar("WORLD_SIZE", env) ?? intVar("SLURM_NTASKS", env),
    masterAddr: env.MASTER_ADDR || undefined,
    masterPort: intVar("MASTER_PORT", env),
    token: env.SYNCBN_TOKEN || undefined,
    fashionMnistDir: env.SYNCBN_FASHION_MNIST_DIR || undefined,
    kernels: kernelsVar(env),
    threads: threadsVar(env),
    nativeOff: env.SYNCBN_NATIVE === "off",
    isCI: env.CI === "true" || env.CI === "1",
    fault: parseFault(env.SYNCBN_FAULT),
  };
}

function parseFault(v: string | undefined): EnvSettings["fault"] {
  if (!v) return undefined;
  const [rank, step, phase, action = "kill"] = v.split(":");
  if (action !== "kill" && action !== "stop") return undefined;
  return { rank: Number(rank), step: Number(step), phase: phase ?? "", action };
}
