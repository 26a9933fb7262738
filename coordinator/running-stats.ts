// The coordinator's authoritative copy of every BN layer's running statistics,
// updated from the global batch statistics of each forward round (group 0's in
// group mode) with the run's conventions. This is what checkpoints and eval use.

import type { BnConventions } from "../shared/config.js";
import { updateRunningStats } from "../shared/stats.js";

export interface LayerRunningStats {
  mean: Float64Array; // (C)
  var: Float64Array; // (C)
  /** Number of updates so far (PyTorch's num_batches_tracked). */
  tracked: number;
}

export class RunningStatsTable {
  private conv: BnConventions | null = null;
  readonly layers = new Map<number, LayerRunningStats>();

  configure(conv: BnConventions): void {
    this.conv = conv;
  }

  /** Per layer (its rounds' `layer`), other conventions than the run's: an ONNX node's own momentum (worker/nn/model.ts onnxNodeConventions). */
  private readonly layerConv = new Map<number, BnConventions>();
  configureLayer(layer: number, conv: BnConventions): void {
    this.layerConv.set(layer, conv);
  }

  /** Seed a layer (e.g. from a checkpoint) before any round. */
  set(layer: number, stats: LayerRunningStats): void {
    this.layers.set(layer, { mean: Float64Array.from(stats.mean), var: Float64Array.from(stats.var), tracked: stats.tracked });
  }

  private pending: { step: number; layer: number; count: number; meanVar: Float64Array }[] = [];
  /** Per layer, where a staged update's statistics are kept (the caller's array is a reused frame). */
  private readonly staging = new Map<number, Float64Array>();

  /**
   * Queue a step's update (a copy of meanVar); commit() applies the queue when the
   * step's gradient round completes, discard() drops it when the step is redone
   * (elastic mode). Updates of an earlier step still queued (a run without
   * gradient rounds), or of the same layer, are committed first, so the queue
   * never holds more than one step and one update per layer.
   */
  stage(step: number, layer: number, count: number, meanVar: Float64Array | Float32Array): void {
    if (this.pending.length > 0 && (this.pending[0]!.step !== step || this.pending.some((u) => u.layer === layer))) this.commit();
    let copy = this.staging.get(layer);
    if (!copy || copy.length !== meanVar.length) this.staging.set(layer, (copy = new Float64Array(meanVar.length)));
    copy.set(meanVar);
    this.pending.push({ step, layer, count, meanVar: copy });
  }

  commit(): void {
    for (const u of this.pending) this.update(u.layer, u.count, u.meanVar);
    this.pending = [];
  }

  discard(): void {
    this.pending = [];
  }

  /** meanVar = [mean(C), biased var(C)] of the global batch; no update when count = 0. */
  update(layer: number, count: number, meanVar: Float64Array | Float32Array): void {
    if (!this.conv || count === 0) return;
    const c = meanVar.length / 2;
    let s = this.layers.get(layer);
    if (!s) {
      s = { mean: new Float64Array(c), var: new Float64Array(c).fill(1), tracked: 0 };
      this.layers.set(layer, s);
    }
    s.tracked++;
    // Views, not copies: this runs once per BN layer per step on the coordinator's hot path.
    const d = meanVar instanceof Float64Array ? meanVar : Float64Array.from(meanVar);
    updateRunningStats(s.mean, s.var, d.subarray(0, c), d.subarray(c), count, this.layerConv.get(layer) ?? this.conv, s.tracked);
  }
}
