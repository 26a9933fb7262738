// Cross-iteration batch normalization (Yao et al., "Cross-Iteration Batch
// Normalization", CVPR 2021; github.com/Howal/Cross-iterationBatchNorm, CBN.py):
// per-worker BN whose statistics average the current batch's with those of the
// last K − 1 steps, each carried to the current weights by a first-order Taylor
// step (cbn-taylor.ts). Not synchronized: no rounds, like --norm local.
//
// Training step t with window K (μ = E[y], ν = E[y²] per channel, M = N·H·W):
//   past τ: μ'_τ = μ_τ + ∂μ_τ/∂W·(W_t − W_τ) + (b_t − b_τ), ν'_τ likewise with ∂ν_τ/∂W, 2μ_τ
//   keep τ where ν'_τ ≥ μ'_τ² (official code: per channel, both moments dropped);
//   count = 1 + kept;  μ̄ = (μ_t + Σ μ'_τ)/count;  ν̄ likewise;  σ̄² = max(ν̄ − μ̄², 0)
//   y = γ·(x − μ̄)/sqrt(σ̄² + eps) + β        (eps inside the root, as PyTorch BN)
// Gradients flow through μ_t and ν_t only (the compensated past are constants).
// Steps 1..B (burn-in) and any step with no past statistics are exactly local BN.

import type { BnConventions } from "../../shared/config.js";
import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { newValueWeight } from "../../shared/stats.js";
import { BatchNorm } from "./batchnorm.js";
import type { StatsProducer } from "./cbn-taylor.js";
import { BatchBuffer } from "./layer.js";

/** What one past step leaves behind for the next K − 1 steps. */
interface PastStats {
  /** The training step it was measured at (0-based). */
  step: number;
  readonly mean: Float64Array; // (C) μ at that step's weights
  readonly meanSq: Float64Array; // (C) ν
  readonly dmu: Float64Array; // (R) ∂μ_c/∂W_c, the same for every c
  readonly dnu: Float64Array; // (C, R) ∂ν_c/∂W_c
  readonly weight: Float32Array; // (C, R) the producer's weights then
  readonly bias: Float32Array; // (C)
}

export interface CbnOptions {
  /** K: steps averaged, the current one included. */
  readonly window: number;
  /** B: the first B training steps are plain BN and leave nothing in the window. */
  readonly burnin: number;
  /** In a rank block: this copy's index; its samples are rows index·n.. of the producer's input. */
  readonly segment?: number;
}

export class CrossIterationBatchNorm extends BatchNorm {
  /** Training forwards so far (the official code's iter_count); the step when there is no `where`. */
  steps = 0;
  /** Past steps, newest first; at most K − 1. */
  private past: PastStats[] = [];
  /** Entries forgotten by a redone step, reused before allocating (the full window recycles its oldest). */
  private spare: PastStats[] = [];
  /** Per-channel count of steps averaged in the last CBN forward (1 + kept past). */
  readonly windowCount: Float64Array; // (C)
  /** Compensated statistics of the last CBN forward, for tests and inspection. */
  readonly windowMean: Float64Array; // (C) μ̄
  readonly windowVar: Float64Array; // (C) σ̄²
  private readonly cur: PastStats; // this step's moments and Jacobians, before they join the window
  private readonly cbnInvStd: Float64Array; // (C)
  /** 1 where ν̄ − μ̄² ≥ 0, 0 where σ̄² was clamped at 0 and ∂L/∂σ̄² is cut (as torch.clamp's gradient). */
  private readonly live: Float64Array; // (C)
  private readonly xSaved: BatchBuffer; // (N, C, S) the last CBN forward's input
  private readonly dxOut: BatchBuffer; // (N, C, S)
  /** Whether the last training forward took the CBN path (else BatchNorm's). */
  private lastWasCbn = false;
  private lastN = -1;

  constructor(
    name: string,
    layerIndex: number,
    shape: readonly number[], // [C] or [C, H, W]
    conventions: BnConventions,
    readonly producer: StatsProducer,
    readonly options: CbnOptions,
    where: { readonly rank: number; readonly step: number } | null = null,
  ) {
    super(name, layerIndex, shape, conventions, null, where);
    const c = this.channels;
    if (producer.weight.value.length !== c * producer.rows) {
      throw new RangeError(`cbn ${name}: producer ${producer.name} has ${producer.weight.value.length} weights, not ${c} × ${producer.rows}`);
    }
    this.windowCount = new Float64Array(c);
    this.windowMean = new Float64Array(c);
    this.windowVar = new Float64Array(c);
    this.cur = this.newStats();
    this.cbnInvStd = new Float64Array(c);
    this.live = new Float64Array(c);
    this.xSaved = new BatchBuffer(c * this.spatial);
    this.dxOut = new BatchBuffer(c * this.spatial);
  }

  private newStats(): PastStats {
    const c = this.channels, r = this.producer.rows;
    return {
      step: -1,
      mean: new Float64Array(c),
      meanSq: new Float64Array(c),
      dmu: new Float64Array(r),
      dnu: new Float64Array(c * r),
      weight: new Float32Array(c * r),
      bias: new Float32Array(c),
    };
  }

  /** Past steps currently in the window (0..K − 1). */
  get pastCount(): number {
    return this.past.length;
  }

  override forward(x: Float32Array, n: number, train: boolean): Float32Array | Promise<Float32Array> {
    if (!train) return super.forward(x, n, false);
    // The run's step when the worker gives one (so a resume keeps the burn-in), else this layer's count.
    const step = this.where ? this.where.step : this.steps;
    this.steps++;
    this.lastN = n;
    // A step done again (elastic redo) or a rewind: what was measured at or after it is void.
    while (this.past.length > 0 && this.past[0]!.step >= step) this.spare.push(this.past.shift()!);
    this.cur.step = step;
    const active = this.options.window > 1 && step >= this.options.burnin;
    this.lastWasCbn = active && this.past.length > 0;
    if (active) this.measureCurrent(x, n);
    if (!this.lastWasCbn) this.windowCount.fill(1);
    const y = this.lastWasCbn ? this.forwardCbn(x, n) : (super.forward(x, n, true) as Float32Array);
    if (active) this.pushCurrent();
    return y;
  }

  /** This step's μ, ν (float64 sums over the batch) and the producer's Jacobians at its current weights. */
  private measureCurrent(x: Float32Array, n: number): void {
    const c = this.channels, s = this.spatial, m = n * s;
    const cur = this.cur;
    for (let ch = 0; ch < c; ch++) {
      let sum = 0, sumSq = 0;
      for (let i = 0; i < n; i++) {
        const off = (i * c + ch) * s;
        for (let j = off; j < off + s; j++) {
          const v = x[j]!;
          sum += v;
          sumSq += v * v;
        }
      }
      cur.mean[ch] = sum / m;
      cur.meanSq[ch] = sumSq / m;
    }
    this.producer.jacobians(cur.dmu, cur.dnu, x, (this.options.segment ?? 0) * n, n);
    cur.weight.set(this.producer.weight.value);
    cur.bias.set(this.producer.bias.value);
  }

  /** The current step joins the window, newest first; the oldest beyond K − 1 is recycled. */
  private pushCurrent(): void {
    const slot = this.past.length >= this.options.window - 1 ? this.past.pop()! : this.spare.pop() ?? this.newStats();
    const cur = this.cur;
    slot.step = cur.step;
    slot.mean.set(cur.mean);
    slot.meanSq.set(cur.meanSq);
    slot.dmu.set(cur.dmu);
    slot.dnu.set(cur.dnu);
    slot.weight.set(cur.weight);
    slot.bias.set(cur.bias);
    this.past.unshift(slot);
  }

  /** Compensate the window to the current weights, normalize with its statistics, update running stats. */
  private forwardCbn(x: Float32Array, n: number): Float32Array {
    const c = this.channels, s = this.spatial, r = this.producer.rows;
    const w = this.producer.weight.value, b = this.producer.bias.value;
    const cur = this.cur;
    for (let ch = 0; ch < c; ch++) {
      let count = 1, mean = cur.mean[ch]!, meanSq = cur.meanSq[ch]!;
      for (const p of this.past) {
        let dMean = 0, dMeanSq = 0;
        for (let k = 0, off = ch * r; k < r; k++, off++) {
          const dw = w[off]! - p.weight[off]!;
          dMean += p.dmu[k]! * dw;
          dMeanSq += p.dnu[off]! * dw;
        }
        const db = b[ch]! - p.bias[ch]!;
        const mu = p.mean[ch]! + dMean + db;
        const nu = p.meanSq[ch]! + dMeanSq + 2 * p.mean[ch]! * db;
        if (nu - mu * mu < 0) continue; // an impossible compensated pair: dropped, as the official code does
        count++;
        mean += mu;
        meanSq += nu;
      }
      mean /= count;
      meanSq /= count;
      const variance = meanSq - mean * mean;
      this.windowCount[ch] = count;
      this.windowMean[ch] = mean;
      this.windowVar[ch] = Math.max(variance, 0);
      this.live[ch] = variance >= 0 ? 1 : 0;
      this.cbnInvStd[ch] = 1 / Math.sqrt(this.windowVar[ch]! + this.conventions.eps);
    }
    const xs = this.xSaved.view(n);
    xs.set(x.subarray(0, n * c * s));
    const y = this.y.view(n);
    const gamma = this.gamma.value, beta = this.beta.value;
    for (let i = 0; i < n; i++) {
      for (let ch = 0; ch < c; ch++) {
        const off = (i * c + ch) * s;
        const mean = this.windowMean[ch]!, scale = gamma[ch]! * this.cbnInvStd[ch]!, shift = beta[ch]!;
        for (let j = off; j < off + s; j++) y[j] = (xs[j]! - mean) * scale + shift;
      }
    }
    // Running statistics as PyTorch BN updates them, from the compensated μ̄, σ̄²,
    // with Bessel's n/(n − 1) for the count·M values the window stands for.
    this.tracked++;
    const f = newValueWeight(this.conventions, this.tracked);
    for (let ch = 0; ch < c; ch++) {
      const values = this.windowCount[ch]! * n * s;
      const unbias = this.conventions.unbiasedRunningVar && values > 1 ? values / (values - 1) : 1;
      this.runningMean[ch] = (1 - f) * this.runningMean[ch]! + f * this.windowMean[ch]!;
      this.runningVar[ch] = (1 - f) * this.runningVar[ch]! + f * this.windowVar[ch]! * unbias;
    }
    return y;
  }

  override backward(dy: Float32Array, n: number): Float32Array | Promise<Float32Array> {
    if (!this.lastWasCbn) return super.backward(dy, n);
    if (n !== this.lastN) {
      const at = this.where;
      throw new SyncbnError(ErrorCode.BadConfig, `${this.name}: backward without a matching training forward (batch ${n})`, {
        rank: at?.rank,
        step: at?.step,
        layer: this.layerIndex,
        phase: "bwd",
      });
    }
    return this.backwardCbn(dy, n);
  }

  /**
   * With s = 1/sqrt(σ̄² + eps), x̂ = (x − μ̄)·s, and μ̄ = (μ_t + const)/count,
   * ν̄ = (ν_t + const)/count, σ̄² = ν̄ − μ̄²:
   *   ∂L/∂σ̄² = −½·s²·γ·Σ dy·x̂          ∂L/∂μ̄ = −s·γ·Σ dy − 2μ̄·∂L/∂σ̄²
   *   dx_i = γ·s·dy_i + (∂L/∂μ̄ + 2x_i·∂L/∂σ̄²)/(count·M)
   *        = γ·s·dy_i + (2(x_i − μ̄)·∂L/∂σ̄² − s·γ·Σ dy)/(count·M)   (the form computed: no cancellation when |μ̄| ≫ σ̄)
   * With count = 1 this is BN's own dx.
   */
  private backwardCbn(dy: Float32Array, n: number): Float32Array {
    const c = this.channels, s = this.spatial, m = n * s;
    const xs = this.xSaved.view(n);
    const dx = this.dxOut.view(n);
    const gamma = this.gamma.value;
    for (let ch = 0; ch < c; ch++) {
      const mean = this.windowMean[ch]!, invStd = this.cbnInvStd[ch]!;
      let sumDy = 0, sumDyXhat = 0;
      for (let i = 0; i < n; i++) {
        const off = (i * c + ch) * s;
        for (let j = off; j < off + s; j++) {
          sumDy += dy[j]!;
          sumDyXhat += dy[j]! * (xs[j]! - mean) * invStd;
        }
      }
      this.beta.grad[ch] = sumDy;
      this.gamma.grad[ch] = sumDyXhat;
      const g = gamma[ch]!;
      const dVar = -0.5 * invStd * invStd * g * sumDyXhat * this.live[ch]!;
      const per = 1 / (this.windowCount[ch]! * m);
      const shift = -invStd * g * sumDy * per, slope = 2 * dVar * per, scale = g * invStd;
      for (let i = 0; i < n; i++) {
        const off = (i * c + ch) * s;
        for (let j = off; j < off + s; j++) dx[j] = scale * dy[j]! + slope * (xs[j]! - mean) + shift;
      }
    }
    return dx;
  }
}
