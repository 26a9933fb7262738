// BnSync over the coordinator: packs a BN layer's local moments or gradient sums
// into a round and unpacks the result. Payload and result buffers are allocated
// once per layer (the codec copies the payload into the frame at send time, and
// the client decodes the result straight into the layer's result buffer), so a
// steady-state step allocates no statistics buffers.

import type { Moments } from "../shared/stats.js";
import type { BnSync } from "./nn/batchnorm.js";
import type { CoordinatorClient } from "./client.js";

interface LayerBuffers {
  payload: Float64Array; // (2C) [mean(C), M2(C)] or [Σdy(C), Σdy·xhat(C)]
  fwdResult: Float64Array; // (2C) [mean(C), biased var(C)]
  bwdResult: Float64Array; // (2C) [Σdy(C), Σdy·xhat(C)] over the group
  /** Handed back by reduceMoments; valid until this layer's next round. */
  moments: { count: number; mean: Float64Array; variance: Float64Array };
}

export class RoundSync implements BnSync {
  step = 0;
  private readonly layers = new Map<number, LayerBuffers>();

  constructor(readonly client: CoordinatorClient) {}

  get rank(): number {
    return this.client.rank;
  }

  private buffers(layer: number, channels: number): LayerBuffers {
    let b = this.layers.get(layer);
    if (!b || b.payload.length !== 2 * channels) {
      const fwdResult = new Float64Array(2 * channels);
      b = {
        payload: new Float64Array(2 * channels),
        fwdResult,
        bwdResult: new Float64Array(2 * channels),
        moments: { count: 0, mean: fwdResult.subarray(0, channels), variance: fwdResult.subarray(channels) },
      };
      this.layers.set(layer, b);
    }
    return b;
  }

  reduceMoments(layer: number, local: Moments): Promise<{ count: number; mean: Float64Array; variance: Float64Array }> {
    const c = local.mean.length;
    const b = this.buffers(layer, c);
    b.payload.set(local.mean, 0);
    b.payload.set(local.m2, c);
    return this.client.roundInto(b.fwdResult, this.step, "fwd", layer, local.count, b.payload).then((r) => {
      if (r.data !== b.fwdResult) {
        // Not decoded in place (a result of another shape): hand back views of what came.
        const d = r.data as Float64Array; // [mean(C), biased var(C)]
        return { count: r.count, mean: d.subarray(0, c), variance: d.subarray(c) };
      }
      b.moments.count = r.count;
      return b.moments;
    });
  }

  reduceGradSums(layer: number, count: number, sums: Float64Array): Promise<Float64Array> {
    const b = this.buffers(layer, sums.length / 2);
    return this.client.roundInto(b.bwdResult, this.step, "bwd", layer, count, sums).then((r) => r.data as Float64Array);
  }
}
