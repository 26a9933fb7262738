// The exact statistics math of (sync) batch norm, DESIGN.md §3: local per-channel
// moments, Chan's merge, running-statistic updates, and the input-gradient formula.
// Pure functions on typed arrays; no I/O and no knowledge of who sends what.
//
// Layout: x is (N, C, S) row-major, S = H·W (S = 1 for (N, C) inputs).
// Abbreviations: n = element count per channel, M2 = Σ(x − mean)², xhat = x̂ =
// (x − mean)/sqrt(var + eps), invStd = 1/sqrt(var + eps).

import { ErrorCode, SyncbnError, type ErrorContext } from "./errors.js";
import type { BnConventions } from "./config.js";

/** Per-channel (count, mean, M2). count is the same for every channel. */
export interface Moments {
  count: number;
  mean: Float64Array; // (C)
  m2: Float64Array; // (C)
}

export function emptyMoments(channels: number): Moments {
  return { count: 0, mean: new Float64Array(channels), m2: new Float64Array(channels) };
}

/**
 * Local moments of x, two passes over x in float64: the second pass sums squared
 * deviations from the exact mean, so |mean| ≫ std cannot cancel (raw Σx² could).
 * Writes into out; returns out.
 */
export function localMoments(
  out: Moments,
  x: Float32Array, // (N, C, S)
  n: number,
  c: number,
  s: number,
): Moments {
  const { mean, m2 } = out;
  mean.fill(0);
  m2.fill(0);
  const count = n * s;
  out.count = count;
  if (count === 0) return out;
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      const base = (i * c + ch) * s;
      let acc = 0;
      for (let j = 0; j < s; j++) acc += x[base + j]!;
      mean[ch]! += acc;
    }
  }
  for (let ch = 0; ch < c; ch++) mean[ch]! /= count;
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      const base = (i * c + ch) * s;
      const mu = mean[ch]!;
      let acc = 0;
      for (let j = 0; j < s; j++) {
        const d = x[base + j]! - mu;
        acc += d * d;
      }
      m2[ch]! += acc;
    }
  }
  return out;
}

/**
 * Chan et al. parallel merge: acc ← acc ∪ (countB, meanB, m2B). Call in rank order
 * so the result is independent of arrival order. An empty side contributes nothing.
 */
export function mergeMoments(acc: Moments, countB: number, meanB: Float64Array, m2B: Float64Array): void {
  if (countB === 0) return;
  const countA = acc.count;
  const total = countA + countB;
  const { mean, m2 } = acc;
  if (countA === 0) {
    mean.set(meanB);
    m2.set(m2B);
  } else {
    const wB = countB / total;
    const cross = (countA * countB) / total;
    for (let ch = 0; ch < mean.length; ch++) {
      const delta = meanB[ch]! - mean[ch]!;
      mean[ch] = mean[ch]! + delta * wB;
      m2[ch] = m2[ch]! + m2B[ch]! + delta * delta * cross;
    }
  }
  acc.count = total;
}

/**
 * One step of the rank-order Chan merge in place, as the coordinator's rounds and a
 * process merging its own ranks both run it: out = [mean(C), M2(C)] over countA
 * values ∪ part = [mean(C), M2(C)] over countB; returns the new count. Start with
 * countA = 0 (out is then overwritten) and end with finishMerge.
 */
export function chanMergeStep(out: Float64Array, countA: number, part: Float64Array, countB: number): number {
  if (countB === 0) return countA; // an empty side contributes nothing
  const c = out.length / 2;
  const total = countA + countB;
  if (countA === 0) {
    out.set(part);
  } else {
    const wB = countB / total;
    const cross = (countA * countB) / total;
    for (let ch = 0; ch < c; ch++) {
      const mean = out[ch]!;
      const delta = part[ch]! - mean;
      out[ch] = mean + delta * wB;
      out[c + ch] = out[c + ch]! + part[c + ch]! + delta * delta * cross;
    }
  }
  return total;
}

/** Ends a chanMergeStep merge: out's M2 half becomes the biased variance M2/n; all zeros when nothing was merged. */
export function finishMerge(out: Float64Array, count: number): void {
  const c = out.length / 2;
  if (count === 0) out.fill(0);
  else for (let ch = c; ch < 2 * c; ch++) out[ch] = out[ch]! / count;
}

/** Biased variance M2/n into out (the variance BN normalizes with). */
export function biasedVariance(out: Float64Array, m: Moments): Float64Array {
  for (let ch = 0; ch < out.length; ch++) out[ch] = m.count > 0 ? m.m2[ch]! / m.count : 0;
  return out;
}

/** Training-mode BN needs at least two values per channel over the statistics group. */
export function checkTrainingCount(count: number, channels: number, ctx: ErrorContext): void {
  if (count === 1) {
    throw new SyncbnError(
      ErrorCode.SingleValue,
      `expected more than 1 value per channel when training, got input with 1 value per channel over the batch (${channels} channels); use a larger batch or eval mode`,
      ctx,
    );
  }
}

/**
 * Momentum factor for the t-th update (t ≥ 1), as the weight of the NEW batch
 * value: torch m; keras 1 − m; null → cumulative average 1/t.
 */
export function newValueWeight(conv: BnConventions, t: number): number {
  if (conv.momentum === null) return 1 / t;
  return conv.momentumStyle === "torch" ? conv.momentum : 1 - conv.momentum;
}

/**
 * Running statistics update from global batch stats (count > 0; count = 0 must not
 * call this). t is the 1-based number of this update.
 */
export function updateRunningStats(
  runningMean: Float64Array, // (C)
  runningVar: Float64Array, // (C)
  batchMean: Float64Array, // (C)
  batchVar: Float64Array, // (C), biased
  count: number,
  conv: BnConventions,
  t: number,
): void {
  const f = newValueWeight(conv, t);
  // PyTorch: unbiased = var·n/(n−1); with n = 1 it would be inf (training refuses n = 1).
  const varScale = conv.unbiasedRunningVar && count > 1 ? count / (count - 1) : 1;
  for (let ch = 0; ch < runningMean.length; ch++) {
    runningMean[ch] = (1 - f) * runningMean[ch]! + f * batchMean[ch]!;
    runningVar[ch] = (1 - f) * runningVar[ch]! + f * batchVar[ch]! * varScale;
  }
}

/** invStd[c] = 1/sqrt(var[c] + eps). */
export function inverseStd(out: Float64Array, variance: Float64Array, eps: number): Float64Array {
  for (let ch = 0; ch < out.length; ch++) out[ch] = 1 / Math.sqrt(variance[ch]! + eps);
  return out;
}

/**
 * Normalize: xhat = (x − mean)·invStd and y = γ·xhat + β; one pass over x.
 */
export function normalizeForward(
  y: Float32Array, // (N, C, S) out
  xhat: Float32Array, // (N, C, S) out, cached for backward
  x: Float32Array, // (N, C, S)
  mean: Float64Array, // (C)
  invStd: Float64Array, // (C)
  gamma: Float32Array, // (C)
  beta: Float32Array, // (C)
  n: number,
  c: number,
  s: number,
): void {
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      const base = (i * c + ch) * s;
      const mu = mean[ch]!;
      const is = invStd[ch]!;
      const g = gamma[ch]!;
      const b = beta[ch]!;
      for (let j = 0; j < s; j++) {
        const h = (x[base + j]! - mu) * is;
        xhat[base + j] = h;
        y[base + j] = g * h + b;
      }
    }
  }
}

/**
 * Local gradient sums into out (2C): out[0..C) = Σdy, out[C..2C) = Σdy·xhat,
 * accumulated in float64. These are also this worker's dβ and dγ.
 */
export function localGradSums(
  out: Float64Array, // (2C)
  dy: Float32Array, // (N, C, S)
  xhat: Float32Array, // (N, C, S)
  n: number,
  c: number,
  s: number,
): Float64Array {
  out.fill(0);
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      const base = (i * c + ch) * s;
      let s1 = 0;
      let s2 = 0;
      for (let j = 0; j < s; j++) {
        const g = dy[base + j]!;
        s1 += g;
        s2 += g * xhat[base + j]!;
      }
      out[ch]! += s1;
      out[c + ch]! += s2;
    }
  }
  return out;
}

/**
 * dx = (γ·invStd)·(dy − S1/n − xhat·S2/n) with GLOBAL sums S1 = Σdy, S2 = Σdy·xhat
 * (layout of localGradSums) and the global count n.
 */
export function normalizeBackward(
  dx: Float32Array, // (N, C, S) out
  dy: Float32Array, // (N, C, S)
  xhat: Float32Array, // (N, C, S)
  globalSums: Float64Array, // (2C)
  globalCount: number,
  invStd: Float64Array, // (C)
  gamma: Float32Array, // (C)
  n: number,
  c: number,
  s: number,
): void {
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      const base = (i * c + ch) * s;
      const k = gamma[ch]! * invStd[ch]!;
      const meanDy = globalSums[ch]! / globalCount;
      const meanDyXhat = globalSums[c + ch]! / globalCount;
      for (let j = 0; j < s; j++) {
        dx[base + j] = k * (dy[base + j]! - meanDy - xhat[base + j]! * meanDyXhat);
      }
    }
  }
}

/** Eval mode: y = γ·(x − runningMean)/sqrt(runningVar + eps) + β, in float64. */
export function normalizeEval(
  y: Float32Array, // (N, C, S) out
  x: Float32Array, // (N, C, S)
  runningMean: Float64Array, // (C)
  runningVar: Float64Array, // (C)
  gamma: Float32Array, // (C)
  beta: Float32Array, // (C)
  eps: number,
  n: number,
  c: number,
  s: number,
): void {
  for (let ch = 0; ch < c; ch++) {
    const k = gamma[ch]! / Math.sqrt(runningVar[ch]! + eps);
    const mu = runningMean[ch]!;
    const b = beta[ch]!;
    for (let i = 0; i < n; i++) {
      const base = (i * c + ch) * s;
      for (let j = 0; j < s; j++) y[base + j] = (x[base + j]! - mu) * k + b;
    }
  }
}
