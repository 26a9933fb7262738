import { describe, expect, it } from "vitest";
import { TORCH_CONVENTIONS, type BnConventions } from "../shared/config.js";
import { SyncbnError } from "../shared/errors.js";
import { Rng } from "../shared/rng.js";
import {
  biasedVariance,
  checkTrainingCount,
  emptyMoments,
  localGradSums,
  localMoments,
  mergeMoments,
  normalizeBackward,
  normalizeForward,
  inverseStd,
  updateRunningStats,
} from "../shared/stats.js";

/** Reference moments in float64 over (N, C, S), straightforward two-pass. */
function refMoments(x: ArrayLike<number>, n: number, c: number, s: number): { mean: number[]; m2: number[] } {
  const mean = new Array(c).fill(0);
  const m2 = new Array(c).fill(0);
  for (let ch = 0; ch < c; ch++) {
    let sum = 0;
    for (let i = 0; i < n; i++) for (let j = 0; j < s; j++) sum += x[(i * c + ch) * s + j]!;
    mean[ch] = sum / (n * s);
    for (let i = 0; i < n; i++) for (let j = 0; j < s; j++) m2[ch] += (x[(i * c + ch) * s + j]! - mean[ch]) ** 2;
  }
  return { mean, m2 };
}

describe("local moments", () => {
  it("gives hand-checked mean and M2 for a (2, 2) input", () => {
    // channel 0: 1, 3 → mean 2, M2 2; channel 1: 2, 6 → mean 4, M2 8
    const m = localMoments(emptyMoments(2), Float32Array.of(1, 2, 3, 6), 2, 2, 1);
    expect(m.count).toBe(2);
    expect(Array.from(m.mean)).toEqual([2, 4]);
    expect(Array.from(m.m2)).toEqual([2, 8]);
  });

  it("stays exact when |mean| ≫ std, where raw float32 Σx² cancels", () => {
    const rng = new Rng(3);
    const n = 64;
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = 10000 + 0.01 * rng.normal();
    const m = localMoments(emptyMoments(1), x, n, 1, 1);
    const ref = refMoments(x, n, 1, 1);
    expect(m.m2[0]! / n).toBeCloseTo(ref.m2[0]! / n, 12);
    // The naive float32 formula is what we must not use: show it really breaks here.
    let s1 = Math.fround(0);
    let s2 = Math.fround(0);
    for (let i = 0; i < n; i++) {
      s1 = Math.fround(s1 + x[i]!);
      s2 = Math.fround(s2 + Math.fround(x[i]! * x[i]!));
    }
    const naiveVar = Math.fround(s2 / n) - Math.fround(s1 / n) ** 2;
    expect(Math.abs(naiveVar - ref.m2[0]! / n)).toBeGreaterThan(100 * (ref.m2[0]! / n));
  });

  it("reports count 0 and zero moments for an empty batch", () => {
    const m = localMoments(emptyMoments(3), new Float32Array(0), 0, 3, 4);
    expect(m.count).toBe(0);
    expect(Array.from(m.mean)).toEqual([0, 0, 0]);
  });
});

describe("Chan merge", () => {
  it("gives the statistics of the concatenation for random splits into 1..8 slices, some empty", () => {
    const rng = new Rng(11);
    for (let trial = 0; trial < 200; trial++) {
      const c = 1 + rng.int(5);
      const s = 1 + rng.int(6);
      const n = 2 + rng.int(30);
      const loc = rng.next() < 0.3 ? 1000 * rng.normal() : rng.normal();
      const x = new Float32Array(n * c * s);
      for (let i = 0; i < x.length; i++) x[i] = loc + rng.normal() * (0.01 + rng.next() * 3);
      const workers = 1 + rng.int(8);
      // random cut points; repeated cuts make empty slices
      const cuts = [0, ...Array.from({ length: workers - 1 }, () => rng.int(n + 1)).sort((a, b) => a - b), n];
      const acc = emptyMoments(c);
      for (let k = 0; k < workers; k++) {
        const lo = cuts[k]!;
        const hi = cuts[k + 1]!;
        const part = localMoments(emptyMoments(c), x.subarray(lo * c * s, hi * c * s), hi - lo, c, s);
        mergeMoments(acc, part.count, part.mean, part.m2);
      }
      const ref = refMoments(x, n, c, s);
      expect(acc.count).toBe(n * s);
      for (let ch = 0; ch < c; ch++) {
        expect(Math.abs(acc.mean[ch]! - ref.mean[ch]!)).toBeLessThanOrEqual(1e-9 * (1 + Math.abs(ref.mean[ch]!)));
        expect(Math.abs(acc.m2[ch]! - ref.m2[ch]!)).toBeLessThanOrEqual(1e-7 * (1e-6 + ref.m2[ch]!));
      }
    }
  });

  it("treats an empty side as contributing nothing, on either side", () => {
    const acc = emptyMoments(1);
    mergeMoments(acc, 0, Float64Array.of(123), Float64Array.of(456));
    expect(acc.count).toBe(0);
    mergeMoments(acc, 4, Float64Array.of(2), Float64Array.of(8));
    expect([acc.count, acc.mean[0], acc.m2[0]]).toEqual([4, 2, 8]);
    mergeMoments(acc, 0, Float64Array.of(99), Float64Array.of(99));
    expect([acc.count, acc.mean[0], acc.m2[0]]).toEqual([4, 2, 8]);
  });

  it("merges two hand-checked halves: {1,3} ∪ {5,7} has mean 4 and M2 20", () => {
    const acc = emptyMoments(1);
    mergeMoments(acc, 2, Float64Array.of(2), Float64Array.of(2));
    mergeMoments(acc, 2, Float64Array.of(6), Float64Array.of(2));
    expect([acc.count, acc.mean[0], acc.m2[0]]).toEqual([4, 4, 20]);
    expect(biasedVariance(new Float64Array(1), acc)[0]).toBe(5);
  });
});

describe("running statistics", () => {
  const batchMean = Float64Array.of(2);
  const batchVar = Float64Array.of(4); // biased, n = 5 → unbiased 5

  function run(conv: BnConventions, updates: number): [number, number] {
    const m = Float64Array.of(0);
    const v = Float64Array.of(1);
    for (let t = 1; t <= updates; t++) updateRunningStats(m, v, batchMean, batchVar, 5, conv, t);
    return [m[0]!, v[0]!];
  }

  it("follows PyTorch: r ← 0.9·r + 0.1·batch with the unbiased variance", () => {
    const [m, v] = run(TORCH_CONVENTIONS, 1);
    expect(m).toBeCloseTo(0.2, 15);
    expect(v).toBeCloseTo(0.9 * 1 + 0.1 * 5, 15);
  });

  it("follows Keras: r ← m·r + (1−m)·batch with the biased variance when asked", () => {
    const [m, v] = run({ eps: 1e-3, momentum: 0.99, momentumStyle: "keras", unbiasedRunningVar: false }, 1);
    expect(m).toBeCloseTo(0.02, 15);
    expect(v).toBeCloseTo(0.99 + 0.01 * 4, 15);
  });

  it("computes a cumulative average with momentum null (factor 1/t)", () => {
    const m = Float64Array.of(0);
    const v = Float64Array.of(1);
    const conv = { ...TORCH_CONVENTIONS, momentum: null };
    const means = [1, 2, 6];
    means.forEach((mu, i) => updateRunningStats(m, v, Float64Array.of(mu), Float64Array.of(0), 3, conv, i + 1));
    expect(m[0]).toBeCloseTo(3, 15); // (1 + 2 + 6)/3: the initial value is forgotten at t = 1
  });

  it("refuses a single value per channel in training with PyTorch's message", () => {
    expect(() => checkTrainingCount(1, 4, { rank: 1, step: 3, layer: 0, phase: "fwd" })).toThrow(SyncbnError);
    expect(() => checkTrainingCount(1, 4, { rank: 1, step: 3, layer: 0, phase: "fwd" })).toThrow(/expected more than 1 value per channel.*|rank 1, step 3, layer 0, phase fwd/);
    expect(() => checkTrainingCount(0, 4, {})).not.toThrow();
    expect(() => checkTrainingCount(2, 4, {})).not.toThrow();
  });
});

describe("backward", () => {
  it("matches central finite differences of L = Σ y·r through the batch statistics", () => {
    const rng = new Rng(5);
    const n = 3, c = 2, s = 4;
    const size = n * c * s;
    const x = Float64Array.from({ length: size }, () => rng.normal() * 2 + 1);
    const r = Float64Array.from({ length: size }, () => rng.normal());
    const gamma = Float32Array.of(1.3, 0.7);
    const beta = Float32Array.of(0.1, -0.2);
    const eps = 1e-5;
    // float64 forward for finite differences
    const lossAt = (xs: Float64Array): number => {
      const { mean, m2 } = refMoments(xs, n, c, s);
      let L = 0;
      for (let i = 0; i < n; i++)
        for (let ch = 0; ch < c; ch++)
          for (let j = 0; j < s; j++) {
            const k = (i * c + ch) * s + j;
            L += (gamma[ch]! * (xs[k]! - mean[ch]!) / Math.sqrt(m2[ch]! / (n * s) + eps) + beta[ch]!) * r[k]!;
          }
      return L;
    };
    const x32 = Float32Array.from(x);
    const mom = localMoments(emptyMoments(c), x32, n, c, s);
    const variance = biasedVariance(new Float64Array(c), mom);
    const invStd = inverseStd(new Float64Array(c), variance, eps);
    const y = new Float32Array(size);
    const xhat = new Float32Array(size);
    normalizeForward(y, xhat, x32, mom.mean, invStd, gamma, beta, n, c, s);
    const dy = Float32Array.from(r);
    const sums = localGradSums(new Float64Array(2 * c), dy, xhat, n, c, s);
    const dx = new Float32Array(size);
    normalizeBackward(dx, dy, xhat, sums, n * s, invStd, gamma, n, c, s);
    const xs = Float64Array.from(x32);
    for (let k = 0; k < size; k++) {
      const h = 1e-5;
      const plus = Float64Array.from(xs);
      plus[k]! += h;
      const minus = Float64Array.from(xs);
      minus[k]! -= h;
      const fd = (lossAt(plus) - lossAt(minus)) / (2 * h);
      expect(Math.abs(dx[k]! - fd)).toBeLessThan(1e-4 * (1 + Math.abs(fd)));
    }
  });
});
