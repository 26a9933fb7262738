// Which code runs a normalization layer's passes over the data (moments, normalize,
// gradient sums, dx, eval normalize) and where their buffers live: the TypeScript
// functions of shared/stats.ts (the reference, SYNCBN_KERNELS=js), their
// WebAssembly SIMD twins (norm-wasm.ts) or the native addon's (norm-native.ts). Not the statistics math around the passes
// (merges, running statistics, invStd), which stays in shared/stats.ts for both.

import {
  localGradSums, localMoments, normalizeBackward, normalizeEval, normalizeForward,
} from "../../../shared/stats.js";
import type { KernelBackend } from "./backend.js";
import { DirectPasses } from "./direct-passes.js";
import { nativeKernels } from "./native.js";
import { NormNative } from "./norm-native.js";
import { NormWasm } from "./norm-wasm.js";

/** A per-batch-size buffer: view(n) is the first n samples, cached per n. */
export interface BatchView {
  view(n: number): Float32Array;
}

/**
 * The passes, with the signatures and the results (bit for bit) of shared/stats.ts.
 * Arrays given to the WebAssembly passes must be views
 * of their buffers: the layer stages x and dy first and takes y, xhat, dx from here.
 */
export interface NormPasses {
  readonly backend: KernelBackend;
  readonly y: BatchView; // (N, C, S)
  /** Kept from a training forward to its backward, whatever forwards come between. */
  readonly xhat: BatchView; // (N, C, S)
  readonly dx: BatchView; // (N, C, S)
  /** x where the passes read it: x itself (js), or a copy in y's buffer (wasm: y is then written over x, in place). */
  stageInput(x: Float32Array, n: number): Float32Array;
  /** dy where the passes read it: dy itself (js), or a copy in dx's buffer (wasm: dx is then written over dy). */
  stageGrad(dy: Float32Array, n: number): Float32Array;
  localMoments: typeof localMoments;
  normalizeForward: typeof normalizeForward;
  localGradSums: typeof localGradSums;
  normalizeBackward: typeof normalizeBackward;
  normalizeEval: typeof normalizeEval;
}

/** The reference: shared/stats.ts on plain typed arrays. */
export class NormJs extends DirectPasses implements NormPasses {
  readonly backend = "js";
  readonly localMoments = localMoments;
  readonly normalizeForward = normalizeForward;
  readonly localGradSums = localGradSums;
  readonly normalizeBackward = normalizeBackward;
  readonly normalizeEval = normalizeEval;
}

/** "native" needs the addon loaded (stepKernelBackend checks it). */
export function normPasses(backend: KernelBackend, perSample: number, channels: number): NormPasses {
  const native = backend === "native" ? nativeKernels() : null;
  if (native) return new NormNative(native, perSample);
  return backend === "wasm" ? new NormWasm(perSample, channels) : new NormJs(perSample);
}
