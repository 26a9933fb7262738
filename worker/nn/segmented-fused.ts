// SegmentedNorm's fused path: a block of R BatchNorm copies whose ranks lie in one
// statistics group (sync, or group:K with the block inside a group), so every copy
// normalizes with the same global statistics. Each rank's moments and gradient sums
// are made on its own segment, straight into the block's round (BlockSync.parts),
// and the normalize and dx passes run once over the whole R·B batch: they are
// per-element with per-channel constants, the same for every copy, so the bits are
// those of the R copies one by one (test/ranks-per-proc.test.ts). What it saves is
// the per-copy work in TypeScript: R promises, views and copies per layer and pass.
// Not for GhostBatchNorm or BatchRenorm, nor for the WebAssembly passes (which stage
// x into their own memory per call): those keep the copies' own path.

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { inverseStd, type Moments } from "../../shared/stats.js";
import type { BlockSync } from "../block-sync.js";
import type { BatchNorm } from "./batchnorm.js";
import type { NormPasses } from "./kernels/norm-passes.js";
import { BatchBuffer } from "./layer.js";

export class FusedBlockNorm {
  private readonly xhat: BatchBuffer; // (R·B, C, S), from a training forward to its backward
  private readonly invStd: Float64Array; // (C)
  private readonly passes: NormPasses;
  private readonly channels: number;
  private readonly spatial: number;
  /** Batch of the last training forward (R·B); −1: none yet. */
  private lastTrainN = -1;

  constructor(
    private readonly copies: readonly BatchNorm[],
    private readonly block: BlockSync,
  ) {
    const c0 = copies[0]!;
    this.passes = c0.kernels;
    this.channels = c0.channels;
    this.spatial = c0.spatial;
    this.xhat = new BatchBuffer(this.channels * this.spatial);
    this.invStd = new Float64Array(this.channels);
  }

  /** The R copies' training forward over y (R·B, C, S) ← x, b samples a rank; resolves to y. */
  async forward(y: Float32Array, x: Float32Array, n: number, b: number): Promise<Float32Array> {
    const c = this.channels, s = this.spatial, len = b * c * s;
    const c0 = this.copies[0]!;
    const layer = c0.layerIndex;
    const { payload, counts } = this.block.parts(layer, c);
    for (let k = 0; k < this.copies.length; k++) {
      const part: Moments = { count: 0, mean: payload.subarray(k * 2 * c, k * 2 * c + c), m2: payload.subarray(k * 2 * c + c, (k + 1) * 2 * c) };
      const m = this.passes.localMoments(part, x.subarray(k * len, (k + 1) * len), b, c, s);
      if (m.mean !== part.mean) part.mean.set(m.mean);
      if (m.m2 !== part.m2) part.m2.set(m.m2);
      counts[k] = m.count;
    }
    const g = await this.block.sendMoments(layer, c);
    let counted = false;
    for (const ck of this.copies) counted = ck.adoptBatchStats(g.count, g.mean, g.variance);
    const xhat = this.xhat.view(n);
    this.lastTrainN = n;
    if (!counted) return y; // nothing anywhere: no normalization
    inverseStd(this.invStd, c0.batchVar, c0.conventions.eps);
    this.passes.normalizeForward(y, xhat, x, c0.batchMean, this.invStd, c0.gamma.value, c0.beta.value, n, c, s);
    return y;
  }

  /** The R copies' backward into dx (R·B, C, S); each copy's dγ, dβ are its own rank's (SegmentedNorm sums them). */
  async backward(dx: Float32Array, dy: Float32Array, n: number, b: number): Promise<Float32Array> {
    const c0 = this.copies[0]!;
    const layer = c0.layerIndex;
    if (this.lastTrainN !== n) {
      throw new SyncbnError(ErrorCode.BadConfig, `${c0.name}: backward without a matching training forward (batch ${n})`, { rank: c0.sync?.rank, step: c0.sync?.step, layer, phase: "bwd" });
    }
    const c = this.channels, s = this.spatial, len = b * c * s;
    const xhat = this.xhat.view(n);
    const { payload, counts } = this.block.parts(layer, c);
    for (let k = 0; k < this.copies.length; k++) {
      const part = payload.subarray(k * 2 * c, (k + 1) * 2 * c);
      const local = this.passes.localGradSums(part, dy.subarray(k * len, (k + 1) * len), xhat.subarray(k * len, (k + 1) * len), b, c, s);
      if (local !== part) part.set(local);
      counts[k] = b * s;
      this.copies[k]!.setLocalParamGrads(part);
    }
    const global = await this.block.sendGradSums(layer, c);
    if (c0.batchCount !== 0) this.passes.normalizeBackward(dx, dy, xhat, global, c0.batchCount, this.invStd, c0.gamma.value, n, c, s);
    return dx;
  }
}
