// The optional native kernels (native/, N-API, built by npm's install step through
// scripts/build-native.mjs): loaded once on first use, or null with the reason
// when the addon is not built or does not load here. Conv2d, Linear, the normalization
// passes (BN, GroupNorm), max pooling, ReLU, the residual add, gradient accumulation and SGD use them.

import { createRequire } from "node:module";

/** The addon's functions; every array is followed by an element offset into it (no copies). */
export interface NativeKernels {
  /** cols (cin·k·k, outH·outW) ← x (cin, inH, inW), zero outside the image. */
  im2col(cols: Float32Array, colsOff: number, x: Float32Array, xOff: number,
    cin: number, inH: number, inW: number, kernel: number, stride: number, padding: number, outH: number, outW: number): void;
  /** dx (cin, inH, inW) += col2im(dcols), by the passes' col2im (dcols is not changed; dx must not hold −0). */
  col2imAdd(dx: Float32Array, dxOff: number, dcols: Float32Array, dcolsOff: number,
    cin: number, inH: number, inW: number, kernel: number, stride: number, padding: number, outH: number, outW: number): void;
  /**
   * A batch's forward over `threads` threads of the addon's pool (native/passes.cc):
   * y (n, cout, P) = bias (cout) + W·im2col(x_i) per sample (FMA GEMMs). A training forward keeps the
   * columns in cols (n, R, P) or copies x into xSaved (n, cin, inH, inW) for backward; each is empty when
   * not wanted (the columns then made in a per-thread scratch and dropped). The same bits for any thread count.
   */
  convForward(y: Float32Array, x: Float32Array, xSaved: Float32Array, cols: Float32Array, w: Float32Array, bias: Float32Array,
    cin: number, inH: number, inW: number, kernel: number, stride: number, padding: number, outH: number, outW: number,
    cout: number, n: number, threads: number): void;
  /**
   * Samples first..first+count−1: dw64 (cout, R) = Σ f64(dy_i·cols_iᵀ) in sample order, cols_i read from
   * cols (n, R, P) when it is not empty, else im2col(x_i) made again from x (the saved inputs). Unless empty:
   * dx_i = col2im(Wᵀ·dy_i) (zeroed first), dw = float32(dw64), db (cout) = float32(Σ_i f64(rowSum(dy_i row))),
   * colSums (R) = Σ_i f64(rowSum(cols_i row)) (conv-native.ts's rowSum, ConvWasm's bits).
   */
  convBackward(dx: Float32Array, dy: Float32Array, x: Float32Array, cols: Float32Array, w: Float32Array, dw64: Float64Array, dw: Float32Array,
    db: Float32Array, colSums: Float64Array,
    cin: number, inH: number, inW: number, kernel: number, stride: number, padding: number, outH: number, outW: number,
    cout: number, first: number, count: number, threads: number): void;
  /**
   * Whether a conv of this geometry takes the direct path (native/direct.cc: stride 1, no im2col; y and dW
   * with the im2col path's bits, dx with its own): a training forward then saves x, never the columns.
   * convDirect(on) turns the path on or off process-wide first and returns `on` (tests compare the two).
   */
  convDirect(cinOrOn: number | boolean, inH?: number, inW?: number, kernel?: number, stride?: number, padding?: number, outH?: number,
    outW?: number): boolean;
  /** The GEMM micro-kernel this process runs: "avx512f", "avx2" or "baseline" (all the same bits); isa(name) switches to one the CPU has first (tests), else throws. */
  isa(name?: string): string;
  // The step kernels (native/norm.h): whole views, no offsets; the bits of shared/stats.ts, relu.ts, graph.ts, sgd.ts.
  // `threads` (default 1): the BN passes, ReLU, add and addInto split over that many of the pool's threads, the same bits.
  /** mean (C) = Σx/(n·s), m2 (C) = Σ(x − mean)², both zeroed first (localMoments' passes). */
  bnMoments(mean: Float64Array, m2: Float64Array, x: Float32Array, n: number, c: number, s: number, threads?: number): void;
  /** h = (x − mean)·invStd; xhat = h; y = γ·h + β. */
  bnNormalize(y: Float32Array, xhat: Float32Array, x: Float32Array, mean: Float64Array, invStd: Float64Array,
    gamma: Float32Array, beta: Float32Array, n: number, c: number, s: number, threads?: number): void;
  /** out (2C) = [Σdy, Σdy·xhat]. */
  bnGradSums(out: Float64Array, dy: Float32Array, xhat: Float32Array, n: number, c: number, s: number, threads?: number): void;
  /** dx = (γ·invStd)·(dy − S1/count − xhat·S2/count). */
  bnDx(dx: Float32Array, dy: Float32Array, xhat: Float32Array, sums: Float64Array, count: number, invStd: Float64Array,
    gamma: Float32Array, n: number, c: number, s: number, threads?: number): void;
  /** y = (x − mean)·γ/√(var + eps) + β. */
  bnEval(y: Float32Array, x: Float32Array, runningMean: Float64Array, runningVar: Float64Array,
    gamma: Float32Array, beta: Float32Array, eps: number, n: number, c: number, s: number, threads?: number): void;
  /** GroupNorm forward (groupnorm.ts's loops): xhat, y, and groupInvStd (N, G). */
  gnForward(y: Float32Array, xhat: Float32Array, groupInvStd: Float64Array, x: Float32Array, gamma: Float32Array, beta: Float32Array,
    eps: number, n: number, c: number, s: number, groups: number): void;
  /** GroupNorm backward of samples first..first+count−1: dx, and Σdy·xhat, Σdy added to gradGamma, gradBeta (float64). */
  gnBackward(dx: Float32Array, gradGamma: Float64Array, gradBeta: Float64Array, dy: Float32Array, xhat: Float32Array,
    groupInvStd: Float64Array, gamma: Float32Array, first: number, count: number, c: number, s: number, groups: number): void;
  /** MaxPool2d forward (maxpool.ts's loops): y and the flat argmax into x of each window; planes = N·C. */
  maxpoolForward(y: Float32Array, argmax: Int32Array, x: Float32Array, planes: number, inH: number, inW: number,
    kernel: number, stride: number, outH: number, outW: number): void;
  /** dx (inLen) = 0, then dx[argmax[o]] += dy[o] in o order. */
  maxpoolBackward(dx: Float32Array, dy: Float32Array, argmax: Int32Array, outLen: number, inLen: number): void;
  /** y = x ≤ 0 ? 0 : x over len floats. */
  relu(y: Float32Array, x: Float32Array, len: number, threads?: number): void;
  /** dx = y ≤ 0 ? 0 : dy. */
  reluBackward(dx: Float32Array, dy: Float32Array, y: Float32Array, len: number, threads?: number): void;
  /** y = a + b. */
  add(y: Float32Array, a: Float32Array, b: Float32Array, len: number, threads?: number): void;
  /** acc += g. */
  addInto(acc: Float32Array, g: Float32Array, len: number, threads?: number): void;
  /** Linear (native/linear.h): y (n, out) = b + x (n, in)·Wᵀ, W (out, in); FMA GEMMs over `threads` of the pool's threads, the same bits for any number. */
  linearForward(y: Float32Array, x: Float32Array, w: Float32Array, b: Float32Array, n: number, inF: number, outF: number, threads?: number): void;
  /**
   * Samples first..first+count−1: dx rows = dy·W, dw = dyᵀ·x (one FMA chain over the samples in order),
   * db = float32(Σ f64(dy)) in sample order; dx, dw and db may each be empty (not made).
   */
  linearBackward(dx: Float32Array, dw: Float32Array, db: Float32Array, dy: Float32Array, x: Float32Array, w: Float32Array,
    first: number, count: number, inF: number, outF: number, threads?: number): void;
  /**
   * A rank block's grads: n samples in `segments` equal segments, each one's dW and db as linearBackward's for
   * its samples alone, summed in float64 in segment order into dw64, db64 (zeroed first); dw, db = their float32.
   */
  linearSegmentGrads(dw64: Float64Array, db64: Float64Array, dw: Float32Array, db: Float32Array, dy: Float32Array, x: Float32Array,
    n: number, segments: number, inF: number, outF: number, threads?: number): void;
  /** SGD over p.length values (mode 0 plain, 1 momentum, 2 Nesterov; buf unused with 0), sgd.ts's arithmetic. */
  sgdStep(p: Float32Array, grad: Float32Array, buf: Float32Array, lr: number, momentum: number, weightDecay: number, mode: number): void;
  /** The bench's ceiling: one core's widest vector FMA, GFLOP/s measured for `seconds`, and its instruction set ("none": 0). */
  fmaPeak(seconds: number): [number, string];
  /** glibc: big freed blocks stay in the heap for reuse (no fresh pages per big message); true if it took. */
  tuneAllocator?(): boolean; // absent from an addon built before it
}

/** Relative to the compiled file (dist/worker/nn/kernels/ or worker/nn/kernels/ under vitest): the repo root. */
const ADDON_PATHS = ["../../../../native/build/Release/syncbn_native.node", "../../../native/build/Release/syncbn_native.node"];

let loaded: NativeKernels | null | undefined;
let reason = "";

/** Never load the addon in this process (SYNCBN_NATIVE=off, read by cli/env.ts): nativeKernels() is null with this reason. */
export function disableNative(why: string): void {
  loaded = null;
  reason = why;
}

/** The native kernels, or null (see nativeUnavailableReason). */
export function nativeKernels(): NativeKernels | null {
  if (loaded !== undefined) return loaded;
  const require = createRequire(import.meta.url);
  const errors: string[] = [];
  for (const path of ADDON_PATHS) {
    try {
      loaded = require(path) as NativeKernels;
      return loaded;
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code !== "MODULE_NOT_FOUND") errors.push(e instanceof Error ? e.message.split("\n")[0]! : String(e));
    }
  }
  loaded = null;
  reason = errors[0] ?? "native/build/Release/syncbn_native.node not built (npm install builds it; needs a C++17 compiler)";
  return null;
}

export function nativeUnavailableReason(): string {
  nativeKernels();
  return reason;
}

/** The addon for a layer built on the native backend, or an Error naming the layer if it is not loaded. */
export function requireNative(layer: string): NativeKernels {
  const k = nativeKernels();
  if (!k) throw new Error(`layer ${layer}: native kernels requested but the addon is not loaded (kernels/native.ts)`);
  return k;
}
