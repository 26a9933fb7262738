// Batch normalization over (N, C) or (N, C, H, W), with PyTorch SyncBatchNorm's
// three-phase shape in forward and again in backward: local statistics, one
// collective over the statistics group (BnSync), finish. With no BnSync it is
// plain per-worker BN ("local"). The math itself lives in shared/stats.ts.

import type { BnConventions } from "../../shared/config.js";
import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import {
  biasedVariance,
  checkTrainingCount,
  emptyMoments,
  inverseStd,
  updateRunningStats,
  type Moments,
} from "../../shared/stats.js";
import type { BlockSync } from "../block-sync.js";
import type { NormPasses } from "./kernels/norm-passes.js";
import { RunningStatsNorm } from "./norm-base.js";

/** The collective a BN layer needs; RoundSync implements it over the coordinator. */
export interface BnSync {
  /** The current training step, for round keys and error messages. */
  readonly step: number;
  readonly rank: number;
  /** Merge local moments over the statistics group; returns global (count, mean, biased var). */
  reduceMoments(layer: number, local: Moments): Promise<{ count: number; mean: Float64Array; variance: Float64Array }>;
  /** Sum [Σdy(C), Σdy·xhat(C)] over the statistics group. */
  reduceGradSums(layer: number, count: number, sums: Float64Array): Promise<Float64Array>;
  /** The block's collective, when this rank is one of a process's block of ranks (SegmentedNorm's fused path). */
  readonly block?: BlockSync;
}

export { isRunningStatsLayer, type RunningStatsLayer } from "./norm-base.js";

export class BatchNorm extends RunningStatsNorm {
  /** Global statistics of the last training batch, for inspection and conformance. */
  readonly batchMean: Float64Array; // (C)
  readonly batchVar: Float64Array; // (C), biased
  batchCount = 0;

  private readonly moments: Moments;
  private readonly invStd: Float64Array; // (C)
  private readonly gradSums: Float64Array; // (2C): [Σdy, Σdy·xhat]
  /** Batch size of the last training forward (its xhat is kept for backward); -1: none yet. */
  private lastTrainN = -1;

  constructor(
    name: string,
    /** Index among the model's BN layers: the `layer` of its rounds. */
    layerIndex: number,
    shape: readonly number[], // [C] or [C, H, W]
    conventions: BnConventions,
    readonly sync: BnSync | null,
    /** Where the worker is (rank, step), for error messages when there is no collective. */
    readonly where: { readonly rank: number; readonly step: number } | null = null,
  ) {
    super(name, layerIndex, shape, conventions);
    const c = this.channels;
    this.batchMean = new Float64Array(c);
    this.batchVar = new Float64Array(c);
    this.moments = emptyMoments(c);
    this.invStd = new Float64Array(c);
    this.gradSums = new Float64Array(2 * c);
  }


  forward(x: Float32Array, n: number, train: boolean): Float32Array | Promise<Float32Array> {
    if (!train) return this.forwardEval(x, n);
    x = this.passes.stageInput(x, n);
    const y = this.y.view(n);
    this.passes.localMoments(this.moments, x, n, this.channels, this.spatial);
    if (!this.sync) {
      biasedVariance(this.batchVar, this.moments);
      return this.finishForward(y, x, n, this.moments.count, this.moments.mean, this.batchVar);
    }
    return this.sync.reduceMoments(this.layerIndex, this.moments).then((g) => this.finishForward(y, x, n, g.count, g.mean, g.variance));
  }

  /** The passes this layer runs on (SegmentedNorm's fused path runs a block of copies on copy 0's). */
  get kernels(): NormPasses {
    return this.passes;
  }

  private finishForward(
    y: Float32Array, // (N, C, S)
    x: Float32Array, // (N, C, S)
    n: number,
    count: number,
    mean: Float64Array, // (C)
    variance: Float64Array, // (C)
  ): Float32Array {
    const counted = this.adoptBatchStats(count, mean, variance);
    const xhat = this.xhat.view(n);
    this.lastTrainN = n;
    if (!counted) return y; // nothing anywhere: no normalization
    inverseStd(this.invStd, this.batchVar, this.conventions.eps);
    this.passes.normalizeForward(y, xhat, x, this.batchMean, this.invStd, this.gamma.value, this.beta.value, n, this.channels, this.spatial);
    return y;
  }

  /**
   * The statistics group's moments of this training batch: checked (more than one value
   * per channel), kept as batchCount, batchMean, batchVar, and, unless the group had no
   * values at all, the running statistics advanced. Whether there is anything to
   * normalize. Also SegmentedNorm's fused path, once per copy.
   */
  adoptBatchStats(count: number, mean: Float64Array, variance: Float64Array): boolean {
    const at = this.sync ?? this.where;
    checkTrainingCount(count, this.channels, { rank: at?.rank, step: at?.step, layer: this.layerIndex, phase: "fwd" });
    this.batchCount = count;
    if (mean !== this.batchMean) this.batchMean.set(mean);
    if (variance !== this.batchVar) this.batchVar.set(variance);
    if (count === 0) return false; // no running-stat update
    this.tracked++;
    updateRunningStats(this.runningMean, this.runningVar, this.batchMean, this.batchVar, count, this.conventions, this.tracked);
    return true;
  }

  /** This rank's share of dβ = Σdy and dγ = Σdy·xhat (local: [Σdy(C), Σdy·xhat(C)]); the gradient round sums them. */
  setLocalParamGrads(local: Float64Array): void {
    const c = this.channels;
    for (let ch = 0; ch < c; ch++) {
      this.beta.grad[ch] = local[ch]!;
      this.gamma.grad[ch] = local[c + ch]!;
    }
  }

  backward(dy: Float32Array, n: number): Float32Array | Promise<Float32Array> {
    if (this.lastTrainN !== n) {
      throw new SyncbnError(ErrorCode.BadConfig, `${this.name}: backward without a matching training forward (batch ${n})`, {
        rank: (this.sync ?? this.where)?.rank,
        step: (this.sync ?? this.where)?.step,
        layer: this.layerIndex,
        phase: "bwd",
      });
    }
    const xhat = this.xhat.view(n);
    dy = this.passes.stageGrad(dy, n);
    const c = this.channels;
    const local = this.passes.localGradSums(this.gradSums, dy, xhat, n, c, this.spatial);
    this.setLocalParamGrads(local);
    const dx = this.dx.view(n);
    if (!this.sync) {
      this.finishBackward(dx, dy, xhat, n, local, this.batchCount);
      return dx;
    }
    return this.sync.reduceGradSums(this.layerIndex, n * this.spatial, local).then((global) => {
      this.finishBackward(dx, dy, xhat, n, global, this.batchCount);
      return dx;
    });
  }

  private finishBackward(
    dx: Float32Array, // (N, C, S)
    dy: Float32Array, // (N, C, S)
    xhat: Float32Array, // (N, C, S)
    n: number,
    sums: Float64Array, // (2C) over the statistics group
    count: number,
  ): void {
    if (count === 0) return;
    this.passes.normalizeBackward(dx, dy, xhat, sums, count, this.invStd, this.gamma.value, n, this.channels, this.spatial);
  }
}
