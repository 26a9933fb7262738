// Ghost batch normalization (Hoffer et al. 2017, "Train longer, generalize
// better"; Keras BatchNormalization(virtual_batch_size=G)): in training, each
// worker's batch is cut into consecutive sub-batches of G samples and every
// sub-batch is normalized with its own statistics. Purely local: no rounds, no
// network. Not sync BN over sub-batches, and eval mode is plain BN eval.

import type { BnConventions } from "../../shared/config.js";
import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import {
  biasedVariance,
  emptyMoments,
  inverseStd,
  updateRunningStats,
  type Moments,
} from "../../shared/stats.js";
import { RunningStatsNorm } from "./norm-base.js";
import { BatchBuffer, sizeOf, type Param } from "./layer.js";

/**
 * Consecutive chunk views of one buffer, rebuilt only when the buffer object
 * changes: the layers around us hand over the same cached views every step, so
 * the steady-state loop allocates nothing.
 */
class Chunks {
  private source: Float32Array | null = null;
  private views: Float32Array[] = [];

  of(buf: Float32Array, chunkLen: number, count: number): Float32Array[] {
    if (buf !== this.source || this.views.length !== count || (count > 0 && this.views[0]!.length !== chunkLen)) {
      this.views = Array.from({ length: count }, (_, g) => buf.subarray(g * chunkLen, (g + 1) * chunkLen));
      this.source = buf;
    }
    return this.views;
  }
}

export class GhostBatchNorm extends RunningStatsNorm {

  /** Per ghost batch: its moments and 1/sqrt(var + eps); grown to the largest batch seen. */
  private ghostMoments: Moments[] = [];
  private ghostInvStd: Float64Array[] = []; // each (C)
  private readonly variance: Float64Array; // (C) scratch
  private readonly meanOfMeans: Float64Array; // (C)
  private readonly meanOfVars: Float64Array; // (C)
  private readonly gradSums: Float64Array; // (2C): [Σdy, Σdy·xhat] of one ghost batch
  private readonly gradTotals: Float64Array; // (2C): the same summed over ghost batches (dβ, dγ)
  private readonly xChunks = new Chunks();
  private readonly yChunks = new Chunks();
  private readonly xhatChunks = new Chunks();
  private readonly dyChunks = new Chunks();
  private readonly dxChunks = new Chunks();

  constructor(
    name: string,
    layerIndex: number,
    shape: readonly number[], // [C] or [C, H, W]
    conventions: BnConventions,
    /** G: samples per ghost batch. */
    readonly ghostBatch: number,
  ) {
    super(name, layerIndex, shape, conventions);
    if (!Number.isInteger(ghostBatch) || ghostBatch < 1) {
      throw new SyncbnError(ErrorCode.BadConfig, `--norm ghost:${ghostBatch}: the ghost batch size must be a positive integer`);
    }
    if (ghostBatch * this.spatial < 2) {
      throw new SyncbnError(
        ErrorCode.BadConfig,
        `--norm ghost:${ghostBatch}: layer ${name} has (N, ${this.channels}) input, so a ghost batch of ${ghostBatch} sample has one value per channel and cannot be normalized; use G ≥ 2`,
      );
    }
    const c = this.channels;
    this.variance = new Float64Array(c);
    this.meanOfMeans = new Float64Array(c);
    this.meanOfVars = new Float64Array(c);
    this.gradSums = new Float64Array(2 * c);
    this.gradTotals = new Float64Array(2 * c);
  }


  private ghostCount(n: number, phase: string): number {
    if (n % this.ghostBatch !== 0) {
      throw new SyncbnError(
        ErrorCode.BadConfig,
        `${this.name}: --norm ghost:${this.ghostBatch} needs G to divide the per-worker batch, got a training batch of ${n}; pick G among the divisors of ${n}`,
        { layer: this.layerIndex, phase },
      );
    }
    const k = n / this.ghostBatch;
    while (this.ghostMoments.length < k) {
      this.ghostMoments.push(emptyMoments(this.channels));
      this.ghostInvStd.push(new Float64Array(this.channels));
    }
    return k;
  }

  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const c = this.channels;
    const s = this.spatial;
    x = this.passes.stageInput(x, n);
    const y = this.y.view(n);
    if (!train) {
      this.savedN = -1;
      return this.forwardEval(x, n);
    }
    const k = this.ghostCount(n, "fwd");
    this.savedN = n;
    if (k === 0) return y; // an empty batch: nothing to normalize, no running-stat update
    const g = this.ghostBatch;
    const chunk = g * c * s;
    const xs = this.xChunks.of(x, chunk, k);
    const ys = this.yChunks.of(y, chunk, k);
    const xhats = this.xhatChunks.of(this.xhat.view(n), chunk, k);
    this.meanOfMeans.fill(0);
    this.meanOfVars.fill(0);
    // Ghost batch j is samples [j·G, (j+1)·G), as in Hoffer et al. (x.chunk). Keras
    // reshapes to (G, N/G, ...) and so groups samples i ≡ j (mod N/G) instead; for
    // shuffled batches the two are the same in distribution. Two passes over each
    // ghost batch (moments), one more to normalize: the same shared math as BN, so
    // one ghost batch (G = batch) is bit-identical to local BN.
    for (let j = 0; j < k; j++) {
      const m = this.passes.localMoments(this.ghostMoments[j]!, xs[j]!, g, c, s);
      biasedVariance(this.variance, m);
      inverseStd(this.ghostInvStd[j]!, this.variance, this.conventions.eps);
      this.passes.normalizeForward(ys[j]!, xhats[j]!, xs[j]!, m.mean, this.ghostInvStd[j]!, this.gamma.value, this.beta.value, g, c, s);
      for (let ch = 0; ch < c; ch++) {
        this.meanOfMeans[ch]! += m.mean[ch]!;
        this.meanOfVars[ch]! += this.variance[ch]!;
      }
    }
    for (let ch = 0; ch < c; ch++) {
      this.meanOfMeans[ch]! /= k;
      this.meanOfVars[ch]! /= k;
    }
    // Running statistics, Keras semantics (BatchNormalization with virtual_batch_size
    // averages the ghost batches' means and variances and updates the moving
    // statistics once per step, not once per ghost batch). The variance is the mean
    // of the ghost batches' biased variances, Bessel-corrected with the ghost
    // batch's count G·S when the run uses unbiasedRunningVar (PyTorch convention).
    this.tracked++;
    updateRunningStats(this.runningMean, this.runningVar, this.meanOfMeans, this.meanOfVars, g * s, this.conventions, this.tracked);
    return y;
  }

  backward(dy: Float32Array, n: number): Float32Array {
    this.requireTrainingForward(n);
    const c = this.channels;
    const s = this.spatial;
    const g = this.ghostBatch;
    const k = n / g;
    const chunk = g * c * s;
    dy = this.passes.stageGrad(dy, n);
    const dx = this.dx.view(n);
    const dys = this.dyChunks.of(dy, chunk, k);
    const dxs = this.dxChunks.of(dx, chunk, k);
    const xhats = this.xhatChunks.of(this.xhat.view(n), chunk, k);
    const totals = this.gradTotals;
    totals.fill(0);
    // Each ghost batch is its own BN: dx from its own sums and count; dγ, dβ add up
    // (in float64, rounded to float32 once).
    for (let j = 0; j < k; j++) {
      const sums = this.passes.localGradSums(this.gradSums, dys[j]!, xhats[j]!, g, c, s);
      for (let i = 0; i < 2 * c; i++) totals[i]! += sums[i]!;
      this.passes.normalizeBackward(dxs[j]!, dys[j]!, xhats[j]!, sums, g * s, this.ghostInvStd[j]!, this.gamma.value, g, c, s);
    }
    for (let ch = 0; ch < c; ch++) {
      this.beta.grad[ch] = totals[ch]!;
      this.gamma.grad[ch] = totals[c + ch]!;
    }
    return dx;
  }
}
