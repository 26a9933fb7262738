// Tests for the norm layers' WebAssembly SIMD passes (worker/nn/kernels/norm-wasm.ts,
// groupnorm-wasm.ts) against their TypeScript twins, bit for bit: elementwise passes
// and float64 sums (added in the twin's order) on S = 1, 2, 3, 5, 7, 13, 49, 256 and
// row counts off the kernels' row groups; then BN, ghost, renorm and GroupNorm layers
// on both backends, step after step. Not a benchmark: see bench/kernels.ts.

import { afterEach, describe, expect, it } from "vitest";
import type { BnConventions } from "../shared/config.js";
import { Rng } from "../shared/rng.js";
import { biasedVariance, emptyMoments, inverseStd, localGradSums, localMoments, normalizeBackward, normalizeEval, normalizeForward } from "../shared/stats.js";
import { BatchNorm } from "../worker/nn/batchnorm.js";
import { GhostBatchNorm } from "../worker/nn/ghost.js";
import { kernelBackend, setKernelBackend } from "../worker/nn/kernels/backend.js";
import { NormWasm } from "../worker/nn/kernels/norm-wasm.js";
import { GroupNorm } from "../worker/nn/groupnorm.js";
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

/** Float64 sums equal to the last bit (Object.is: also +0 against −0). */
function expectSameSums(what: string, got: Float64Array, want: Float64Array): void {
  expect(got.length, `${what} length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (!Object.is(got[i], want[i])) expect.fail(`${what}[${i}]: ${got[i]} vs ${want[i]} (|diff| ${Math.abs(got[i]! - want[i]!)})`);
  }
}

const shapes = [
  { n: 3, c: 5, s: 1 }, { n: 4, c: 3, s: 7 }, { n: 2, c: 6, s: 49 }, { n: 5, c: 4, s: 256 },
  { n: 1, c: 2, s: 13 }, { n: 7, c: 1, s: 3 }, { n: 32, c: 64, s: 1 }, { n: 3, c: 3, s: 5 }, { n: 9, c: 7, s: 2 },
];

describe("BN passes in WebAssembly", () => {
  it.each(shapes)("give the TypeScript twins' results bit for bit on (N, C, S) = ($n, $c, $s)", ({ n, c, s }) => {
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
    expectSameSums("mean", got.mean, ref.mean);
    expectSameSums("M2", got.m2, ref.m2);

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
    expectSameSums("Σdy, Σdy·xhat", sums, sumsRef);
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

  /** The same values to the last bit, float32 or float64. */
  const same = (what: string, got: Float32Array | Float64Array, want: Float32Array | Float64Array): void => {
    expect(got.length, `${what} length`).toBe(want.length);
    for (let i = 0; i < want.length; i++) if (!Object.is(got[i], want[i])) expect.fail(`${what}[${i}]: ${got[i]} vs ${want[i]}`);
  };

  it("runs local BatchNorm bit for bit like the twin over three steps, with an eval forward that grows the batch between a forward and its backward", async () => {
    expect(kernelBackend()).toBe("wasm");
    const [c, h, wd] = [6, 5, 7];
    const { js, wasm } = both(() => new BatchNorm("bn", 0, [c, h, wd], CONV, null));
    const rng = new Rng(5);
    for (let step = 0; step < 3; step++) {
      const n = 4 + step;
      const x = normals(rng, n * c * h * wd, 3, 1), dy = normals(rng, n * c * h * wd);
      same("y", await wasm.forward(x, n, true), await js.forward(x, n, true));
      const big = normals(rng, 40 * c * h * wd);
      same("eval y", await wasm.forward(big, 40, false), await js.forward(big, 40, false));
      same("dx", await wasm.backward(dy, n), await js.backward(dy, n));
      same("dγ", wasm.gamma.grad, js.gamma.grad);
      same("dβ", wasm.beta.grad, js.beta.grad);
      same("running mean", wasm.runningMean, js.runningMean);
      same("running var", wasm.runningVar, js.runningVar);
    }
  });

  it("runs ghost BN and batch renorm bit for bit like their twins", () => {
    const [c, s, n] = [4, 9, 8];
    const pairs = [
      both(() => new GhostBatchNorm("bn", 0, [c, 3, 3], CONV, 2)),
      both(() => new BatchRenorm("bn", 0, [c, 3, 3], CONV, { rMax: 1.5, dMax: 0.5, warmup: 0, clock: null })),
    ];
    const rng = new Rng(6);
    for (const { js, wasm } of pairs) {
      for (let step = 0; step < 2; step++) {
        const x = normals(rng, n * c * s, 2, -1), dy = normals(rng, n * c * s);
        same("y", wasm.forward(x, n, true), js.forward(x, n, true));
        same("dx", wasm.backward(dy, n), js.backward(dy, n));
        same("dγ", wasm.gamma.grad, js.gamma.grad);
        same("running var", wasm.runningVar, js.runningVar);
      }
    }
  });

  it.each([
    { c: 8, h: 5, w: 5, groups: 4, n: 3 }, { c: 6, h: 7, w: 7, groups: 3, n: 5 }, { c: 16, h: 1, w: 1, groups: 4, n: 9 }, { c: 4, h: 3, w: 1, groups: 1, n: 2 },
  ])("runs GroupNorm bit for bit like its loops on C = $c, H×W = $h×$w, G = $groups, batch $n, eval included", ({ c, h, w, groups, n }) => {
    const shape = h * w === 1 ? [c] : [c, h, w];
    const { js, wasm } = both(() => new GroupNorm("gn", shape, groups, 1e-5));
    const rng = new Rng(7 + c + groups);
    for (let step = 0; step < 2; step++) {
      js.gamma.value.set(normals(rng, c, 0.3, 1));
      wasm.gamma.value.set(js.gamma.value);
      js.beta.value.set(normals(rng, c, 0.2));
      wasm.beta.value.set(js.beta.value);
      const x = normals(rng, n * c * h * w, 2, step), dy = normals(rng, n * c * h * w);
      same("eval y", wasm.forward(x, n, false), js.forward(x, n, false));
      same("y", wasm.forward(x, n, true), js.forward(x, n, true));
      same("dx", wasm.backward(dy, n), js.backward(dy, n));
      same("dγ", wasm.gamma.grad, js.gamma.grad);
      same("dβ", wasm.beta.grad, js.beta.grad);
    }
  });
});
