// Tests for BN's WebAssembly SIMD passes (worker/nn/kernels/norm-wasm.ts) against
// their TypeScript twins in shared/stats.ts: the elementwise passes (normalize, dx,
// eval) bit for bit, the float64 sums (moments, Σdy, Σdy·x̂) within 1e-12 of the
// sum of the magnitudes summed, on random shapes with S = 1, 7, 49, 256; then the
// norm layers on both backends. Not a benchmark: see bench/kernels.ts.

import { afterEach, describe, expect, it } from "vitest";
import type { BnConventions } from "../shared/config.js";
import { Rng } from "../shared/rng.js";
import { biasedVariance, emptyMoments, inverseStd, localGradSums, localMoments, normalizeBackward, normalizeEval, normalizeForward } from "../shared/stats.js";
import { BatchNorm } from "../worker/nn/batchnorm.js";
import { GhostBatchNorm } from "../worker/nn/ghost.js";
import { kernelBackend, setKernelBackend } from "../worker/nn/kernels/backend.js";
import { NormWasm } from "../worker/nn/kernels/norm-wasm.js";
import { BatchRenorm } from "../worker/nn/renorm.js";

const CONV: BnConventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true };

function normals(rng: Rng, len: number, scale = 1, shift = 0): Float32Array {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = shift + rng.normal() * scale;
  return a;
}

/** Index of the first element whose bits differ (NaN payloads aside), or -1. */
function firstBitDiff(a: Float32Array, b: Float32Array): number {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length), ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < a.length; i++) if (ua[i] !== ub[i]) return i;
  return a.length === b.length ? -1 : Math.min(a.length, b.length);
}

function expectBitIdentical(what: string, got: Float32Array, want: Float32Array): void {
  expect(got.length, `${what} length`).toBe(want.length);
  const i = firstBitDiff(got, want);
  if (i >= 0) expect.fail(`${what}: first difference at ${i}: ${got[i]} vs ${want[i]}`);
}

/** |got − want| ≤ 1e-12 · scale per channel, scale = Σ|terms| of that channel's sum. */
function expectSumClose(what: string, got: Float64Array, want: Float64Array, scale: Float64Array): void {
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i]! - want[i]!);
    if (!(d <= 1e-12 * scale[i]!)) expect.fail(`${what}[${i}]: ${got[i]} vs ${want[i]} (|diff| ${d}, scale ${scale[i]})`);
  }
}

/** Per channel Σ|f(i, ch, j)| over (N, C, S). */
function absSums(n: number, c: number, s: number, f: (at: number, ch: number) => number): Float64Array {
  const out = new Float64Array(c);
  for (let i = 0; i < n; i++) for (let ch = 0; ch < c; ch++) for (let j = 0; j < s; j++) out[ch] += Math.abs(f((i * c + ch) * s + j, ch));
  return out;
}

const shapes = [
  { n: 3, c: 5, s: 1 }, { n: 4, c: 3, s: 7 }, { n: 2, c: 6, s: 49 }, { n: 5, c: 4, s: 256 },
  { n: 1, c: 2, s: 13 }, { n: 7, c: 1, s: 3 }, { n: 32, c: 64, s: 1 },
];

describe("BN passes in WebAssembly", () => {
  it.each(shapes)("match the TypeScript twins on (N, C, S) = ($n, $c, $s): elementwise bit for bit, sums within 1e-12", ({ n, c, s }) => {
    const rng = new Rng(1000 + n * 100 + c * 10 + s);
    const len = n * c * s;
    // A mean far from 0 in some channels: the two-pass moments must not cancel.
    const x = normals(rng, len, 2, 0);
    for (let i = 0; i < len; i++) if (Math.floor(i / s) % c === 0) x[i] = x[i]! + 1000;
    const dy = normals(rng, len, 0.5);
    const gamma = normals(rng, c, 0.3, 1), beta = normals(rng, c, 0.2);
    const w = new NormWasm(c * s, c);

    // moments
    const ref = localMoments(emptyMoments(c), x, n, c, s);
    const xs = w.stageInput(x, n);
    const got = w.localMoments(emptyMoments(c), xs, n, c, s);
    expect(got.count).toBe(ref.count);
    expectSumClose("mean·count", got.mean.map((v) => v * n * s), ref.mean.map((v) => v * n * s), absSums(n, c, s, (at) => x[at]!));
    expectSumClose("M2", got.m2, ref.m2, ref.m2.map((v) => Math.abs(v)));

    // normalize, from the reference statistics so both sides take the same inputs
    const variance = biasedVariance(new Float64Array(c), ref), invStd = inverseStd(new Float64Array(c), variance, 1e-5);
    const yRef = new Float32Array(len), xhatRef = new Float32Array(len);
    normalizeForward(yRef, xhatRef, x, ref.mean, invStd, gamma, beta, n, c, s);
    const y = w.y.view(n), xhat = w.xhat.view(n);
    w.normalizeForward(y, xhat, xs, ref.mean, invStd, gamma, beta, n, c, s);
    expectBitIdentical("xhat", xhat, xhatRef);
    expectBitIdentical("y", y, yRef);

    // gradient sums and dx
    const sumsRef = localGradSums(new Float64Array(2 * c), dy, xhatRef, n, c, s);
    const dys = w.stageGrad(dy, n);
    const sums = w.localGradSums(new Float64Array(2 * c), dys, xhat, n, c, s);
    const scale = new Float64Array(2 * c);
    scale.set(absSums(n, c, s, (at) => dy[at]!));
    scale.set(absSums(n, c, s, (at) => dy[at]! * xhatRef[at]!), c);
    expectSumClose("Σdy, Σdy·xhat", sums, sumsRef, scale);
    const dxRef = new Float32Array(len);
    normalizeBackward(dxRef, dy, xhatRef, sumsRef, n * s, invStd, gamma, n, c, s);
    const dx = w.dx.view(n);
    w.normalizeBackward(dx, dys, xhat, sumsRef, n * s, invStd, gamma, n, c, s);
    expectBitIdentical("dx", dx, dxRef);

    // eval
    const rm = Float64Array.from(ref.mean, (v) => v * 0.9), rv = Float64Array.from(variance, (v) => v * 1.1 + 0.01);
    const yEvalRef = new Float32Array(len);
    normalizeEval(yEvalRef, x, rm, rv, gamma, beta, 1e-3, n, c, s);
    const xe = w.stageInput(x, n);
    w.normalizeEval(w.y.view(n), xe, rm, rv, gamma, beta, 1e-3, n, c, s);
    expectBitIdentical("eval y", w.y.view(n), yEvalRef);
  });

  it("gives zero sums and a zero count for an empty batch", () => {
    const w = new NormWasm(12, 3);
    const m = w.localMoments(emptyMoments(3), w.stageInput(new Float32Array(0), 0), 0, 3, 4);
    expect([m.count, ...m.mean, ...m.m2]).toEqual([0, 0, 0, 0, 0, 0, 0]);
    const sums = w.localGradSums(new Float64Array(6).fill(7), w.stageGrad(new Float32Array(0), 0), w.xhat.view(0), 0, 3, 4);
    expect([...sums]).toEqual([0, 0, 0, 0, 0, 0]);
  });

  it("refuses an array that is not a view of its memory, naming it", () => {
    const w = new NormWasm(4, 1);
    expect(() => w.localMoments(emptyMoments(1), new Float32Array(8), 2, 1, 4)).toThrow(/x is not a view/);
  });
});

describe("norm layers on the WebAssembly passes", () => {
  afterEach(() => setKernelBackend("wasm"));

  /** The same layer built with each backend (the process-wide choice at construction). */
  function both<T>(make: () => T): { js: T; wasm: T } {
    setKernelBackend("js");
    const js = make();
    setKernelBackend("wasm");
    return { js, wasm: make() };
  }

  const relClose = (what: string, got: ArrayLike<number>, want: ArrayLike<number>, rtol: number): void => {
    let scale = 1e-30;
    for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
    for (let i = 0; i < want.length; i++) {
      if (!(Math.abs(got[i]! - want[i]!) <= rtol * scale)) expect.fail(`${what}[${i}]: ${got[i]} vs ${want[i]}`);
    }
  };

  it("runs local BatchNorm like the twin over three steps with an eval forward that grows the batch between a forward and its backward", async () => {
    expect(kernelBackend()).toBe("wasm");
    const [c, h, wd] = [6, 5, 7];
    const { js, wasm } = both(() => new BatchNorm("bn", 0, [c, h, wd], CONV, null));
    const rng = new Rng(5);
    for (let step = 0; step < 3; step++) {
      const n = 4 + step;
      const x = normals(rng, n * c * h * wd, 3, 1), dy = normals(rng, n * c * h * wd);
      relClose("y", await wasm.forward(x, n, true), await js.forward(x, n, true), 1e-6);
      const big = normals(rng, 40 * c * h * wd);
      relClose("eval y", await wasm.forward(big, 40, false), await js.forward(big, 40, false), 1e-6);
      relClose("dx", await wasm.backward(dy, n), await js.backward(dy, n), 1e-5);
      relClose("dγ", wasm.gamma.grad, js.gamma.grad, 1e-6);
      relClose("dβ", wasm.beta.grad, js.beta.grad, 1e-6);
      relClose("running mean", wasm.runningMean, js.runningMean, 1e-12);
      relClose("running var", wasm.runningVar, js.runningVar, 1e-12);
    }
  });

  it("runs ghost BN and batch renorm like their twins", () => {
    const [c, s, n] = [4, 9, 8];
    const pairs = [
      both(() => new GhostBatchNorm("bn", 0, [c, 3, 3], CONV, 2)),
      both(() => new BatchRenorm("bn", 0, [c, 3, 3], CONV, { rMax: 1.5, dMax: 0.5, warmup: 0, clock: null })),
    ];
    const rng = new Rng(6);
    for (const { js, wasm } of pairs) {
      for (let step = 0; step < 2; step++) {
        const x = normals(rng, n * c * s, 2, -1), dy = normals(rng, n * c * s);
        relClose("y", wasm.forward(x, n, true), js.forward(x, n, true), 1e-6);
        relClose("dx", wasm.backward(dy, n), js.backward(dy, n), 1e-5);
        relClose("dγ", wasm.gamma.grad, js.gamma.grad, 1e-6);
        relClose("running var", wasm.runningVar, js.runningVar, 1e-12);
      }
    }
  });
});
