// A normalization layer's passes over the data in the native addon (native/norm.cc),
// on the layer's own JS buffers and the caller's arrays directly: nothing is staged
// or copied (stageInput/stageGrad return x and dy as they are). The results are
// shared/stats.ts's bit for bit, so the WebAssembly passes' too
// (test/native-passes.test.ts). Not the math between the passes (shared/stats.ts).

import type { Moments } from "../../../shared/stats.js";
import { DirectPasses } from "./direct-passes.js";
import type { NativeKernels } from "./native.js";
import type { NormPasses } from "./norm-passes.js";
import { requestedComputeThreads } from "./threads.js";

export class NormNative extends DirectPasses implements NormPasses {
  readonly backend = "native";

  /** `threads`: the passes' parts on the addon's pool (--threads; the same bits for any number). */
  constructor(private readonly k: NativeKernels, perSample: number, private readonly threads = requestedComputeThreads()) {
    super(perSample);
  }

  localMoments(out: Moments, x: Float32Array, n: number, c: number, s: number): Moments {
    out.count = n * s;
    this.k.bnMoments(out.mean, out.m2, x, n, c, s, this.threads);
    return out;
  }

  normalizeForward(
    y: Float32Array, xhat: Float32Array, x: Float32Array, mean: Float64Array, invStd: Float64Array,
    gamma: Float32Array, beta: Float32Array, n: number, c: number, s: number,
  ): void {
    this.k.bnNormalize(y, xhat, x, mean, invStd, gamma, beta, n, c, s, this.threads);
  }

  localGradSums(out: Float64Array, dy: Float32Array, xhat: Float32Array, n: number, c: number, s: number): Float64Array {
    this.k.bnGradSums(out, dy, xhat, n, c, s, this.threads);
    return out;
  }

  normalizeBackward(
    dx: Float32Array, dy: Float32Array, xhat: Float32Array, globalSums: Float64Array, globalCount: number,
    invStd: Float64Array, gamma: Float32Array, n: number, c: number, s: number,
  ): void {
    this.k.bnDx(dx, dy, xhat, globalSums, globalCount, invStd, gamma, n, c, s, this.threads);
  }

  normalizeEval(
    y: Float32Array, x: Float32Array, runningMean: Float64Array, runningVar: Float64Array,
    gamma: Float32Array, beta: Float32Array, eps: number, n: number, c: number, s: number,
  ): void {
    this.k.bnEval(y, x, runningMean, runningVar, gamma, beta, eps, n, c, s, this.threads);
  }
}
