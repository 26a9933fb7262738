// Which kernels a run uses (--kernels, SYNCBN_KERNELS, issue 22): the flag, else
// the variable, else the native addon where it loads, else WebAssembly with one
// notice line saying why (printed where the run starts, after the checks that can
// refuse it). Native and wasm give the same bits, so this changes speed only. An explicit
// "native" without the addon is a one-line error (exit 2), never a silent
// fallback. The launcher resolves once and hands the result to its workers
// (SYNCBN_KERNELS); the run records it (settings.kernels).

import { Option } from "commander";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { KERNEL_SETTINGS, type KernelBackend } from "../worker/nn/kernels/backend.js";
import { nativeKernels, nativeUnavailableReason } from "../worker/nn/kernels/native.js";

export const KERNELS_HELP =
  "conv/linear and normalization kernels: native (the C++ addon's conv, BN and GroupNorm passes, max pooling, ReLU, residual add and SGD, other layers on wasm; the default where the addon loads), wasm (WebAssembly SIMD) or js (the plain TypeScript twins); each gives the same bits run to run and on any --threads, but they round differently from each other (native uses FMA); default $SYNCBN_KERNELS";

/** The --kernels option of train, sweep and worker (no default: absent means SYNCBN_KERNELS, then the automatic choice). */
export function kernelsOption(): Option {
  return new Option("--kernels <name>", KERNELS_HELP).choices([...KERNEL_SETTINGS]);
}

export interface KernelChoice {
  kernels: KernelBackend;
  /** One line for the user when the automatic choice found no addon; null otherwise. */
  notice: string | null;
}

/** The kernels of a run: `flag` (--kernels), else `env` (SYNCBN_KERNELS), else native when the addon loads, else wasm. */
export function chooseKernels(flag: KernelBackend | undefined, env: KernelBackend | undefined): KernelChoice {
  const explicit = flag ?? env;
  if (explicit === "native" && nativeKernels() === null) {
    const from = flag ? "--kernels native" : "SYNCBN_KERNELS=native";
    throw new SyncbnError(ErrorCode.BadConfig, `${from}: the native addon is not loaded (${nativeUnavailableReason()}); use --kernels wasm, or build it with node scripts/build-native.mjs`);
  }
  if (explicit) return { kernels: explicit, notice: null };
  if (nativeKernels() === null) return { kernels: "wasm", notice: `syncbn: native kernels unavailable (${nativeUnavailableReason()}); using WebAssembly` };
  return { kernels: "native", notice: null };
}

let noticed = false;

/** Prints a choice's notice, once per process (a sweep chooses per run). */
export function printKernelNotice(c: KernelChoice, print: (line: string) => void): void {
  if (c.notice && !noticed) {
    noticed = true;
    print(c.notice);
  }
}
