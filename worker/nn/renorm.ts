// Batch renormalization (Ioffe 2017, "Batch Renormalization: Towards Reducing
// Minibatch Dependence in Batch-Normalized Models"; Keras BatchNormalization(renorm=True)),
// with each worker's own batch statistics: training output is corrected towards the
// moving statistics by r, d, which are clipped and treated as constants in backward.
// Purely local: no rounds. Not sync BN; eval mode is plain BN eval with the moving stats.

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
import { RunningStatsNorm } from "./norm-base.js";
import { BatchBuffer, sizeOf, type Param } from "./layer.js";

/** The current training step (0-based); RoundSync is one, set by the training loop. */
export interface StepClock {
  readonly step: number;
}

export interface RenormOptions {
  /** r is clipped to [1/rMax, rMax] once warm-up is over (Ioffe: 3). */
  rMax: number;
  /** d is clipped to [−dMax, dMax] once warm-up is over (Ioffe: 5). */
  dMax: number;
  /** Steps over which the clips relax linearly from (1, 0) to (rMax, dMax); 0 = none. */
  warmup: number;
  /** Where the step comes from; null = this layer's own count of training updates. */
  clock: StepClock | null;
}

/**
 * Clip limits at a step: linear from (1, 0) at step 0 to (rMax, dMax) at step
 * `warmup`, constant after. Ioffe trains with r_max = 1, d_max = 0 (plain BN) at
 * first and relaxes them gradually; the linear ramp is this project's schedule.
 */
export function renormLimits(o: Pick<RenormOptions, "rMax" | "dMax" | "warmup">, step: number): { rMax: number; dMax: number } {
  const f = warmupFraction(o.warmup, step);
  return { rMax: 1 + (o.rMax - 1) * f, dMax: o.dMax * f };
}

/** How far the clips have relaxed at a step: 0 at step 0, 1 from step `warmup` on. */
function warmupFraction(warmup: number, step: number): number {
  return warmup <= 0 ? 1 : Math.min(1, Math.max(0, step) / warmup);
}

export class BatchRenorm extends RunningStatsNorm {
  /** r and d of the last training forward, for inspection and tests. */
  readonly lastR: Float64Array; // (C)
  readonly lastD: Float64Array; // (C)

  private readonly moments: Moments;
  private readonly batchVar: Float64Array; // (C), biased
  private readonly invStd: Float64Array; // (C): 1/σB, σB = sqrt(varB + eps)
  /** y = γ·(r·x̃ + d) + β = (γ·r)·x̃ + (γ·d + β): the affine BN applies to x̃. */
  private readonly gammaEff: Float32Array; // (C)
  private readonly betaEff: Float32Array; // (C)
  private readonly gradSums: Float64Array; // (2C): [Σdy, Σdy·x̃]
  /** x̃ = (x − μB)/σB, plain BN's xhat (without r, d): what backward needs. */
  private count = 0;

  constructor(
    name: string,
    layerIndex: number,
    shape: readonly number[], // [C] or [C, H, W]
    conventions: BnConventions,
    readonly options: RenormOptions,
  ) {
    super(name, layerIndex, shape, conventions);
    if (!(options.rMax >= 1) || !(options.dMax >= 0) || !(options.warmup >= 0)) {
      throw new SyncbnError(ErrorCode.BadConfig, `--norm renorm needs rMax ≥ 1, dMax ≥ 0, warmup ≥ 0; got ${options.rMax}, ${options.dMax}, ${options.warmup}`);
    }
    const c = this.channels;
    this.lastR = new Float64Array(c).fill(1);
    this.lastD = new Float64Array(c);
    this.moments = emptyMoments(c);
    this.batchVar = new Float64Array(c);
    this.invStd = new Float64Array(c);
    this.gammaEff = new Float32Array(c);
    this.betaEff = new Float32Array(c);
    this.gradSums = new Float64Array(2 * c);
  }


  /** The step the clip schedule is at: the clock's, else the number of training updates so far. */
  get step(): number {
    return this.options.clock ? this.options.clock.step : this.tracked;
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
    const m = this.passes.localMoments(this.moments, x, n, c, s);
    if (m.count === 1) checkTrainingCount(m.count, c, { step: this.step, layer: this.layerIndex, phase: "fwd" });
    this.count = m.count;
    this.savedN = n;
    const xhat = this.xhat.view(n);
    if (m.count === 0) return y;
    biasedVariance(this.batchVar, m);
    inverseStd(this.invStd, this.batchVar, this.conventions.eps);
    // r = σB/σ and d = (μB − μ)/σ with σ = sqrt(runningVar + eps), from the moving
    // statistics BEFORE this step's update (Ioffe, Algorithm 1), clipped; both are
    // stop_gradient: backward treats them as constants.
    const f = warmupFraction(this.options.warmup, this.step);
    const rMax = 1 + (this.options.rMax - 1) * f; // as renormLimits, without an object per step
    const dMax = this.options.dMax * f;
    const eps = this.conventions.eps;
    for (let ch = 0; ch < c; ch++) {
      const sigma = Math.sqrt(this.runningVar[ch]! + eps);
      const sigmaB = Math.sqrt(this.batchVar[ch]! + eps);
      const r = Math.min(rMax, Math.max(1 / rMax, sigmaB / sigma));
      const d = Math.min(dMax, Math.max(-dMax, (m.mean[ch]! - this.runningMean[ch]!) / sigma));
      this.lastR[ch] = r;
      this.lastD[ch] = d;
      const g = this.gamma.value[ch]!;
      this.gammaEff[ch] = g * r;
      this.betaEff[ch] = g * d + this.beta.value[ch]!;
    }
    // With r = 1, d = 0 the effective affine is exactly (γ, β): bit-identical to local BN.
    this.passes.normalizeForward(y, xhat, x, m.mean, this.invStd, this.gammaEff, this.betaEff, n, c, s);
    this.tracked++;
    updateRunningStats(this.runningMean, this.runningVar, m.mean, this.batchVar, m.count, this.conventions, this.tracked);
    return y;
  }

  /**
   * With r, d constant, y = γ'·x̃ + β' (γ' = γ·r, β' = γ·d + β) is BN's affine on x̃,
   * so dx = (γ'/σB)·(dy − mean(dy) − x̃·mean(dy·x̃)); dβ = Σdy and
   * dγ = Σdy·x̂ = r·Σdy·x̃ + d·Σdy with x̂ = r·x̃ + d.
   */
  backward(dy: Float32Array, n: number): Float32Array {
    this.requireTrainingForward(n);
    const c = this.channels;
    const s = this.spatial;
    dy = this.passes.stageGrad(dy, n);
    const dx = this.dx.view(n);
    const xhat = this.xhat.view(n);
    const sums = this.passes.localGradSums(this.gradSums, dy, xhat, n, c, s);
    for (let ch = 0; ch < c; ch++) {
      this.beta.grad[ch] = sums[ch]!;
      this.gamma.grad[ch] = this.lastR[ch]! * sums[c + ch]! + this.lastD[ch]! * sums[ch]!;
    }
    if (this.count === 0) return dx;
    this.passes.normalizeBackward(dx, dy, xhat, sums, this.count, this.invStd, this.gammaEff, n, c, s);
    return dx;
  }
}
