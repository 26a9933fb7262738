// BnSync over the coordinator: packs a BN layer's local moments or gradient sums
// into a round and unpacks the result. Payload buffers are allocated once per
// layer; msgpackr copies them at send time, so reuse is safe.

import type { Moments } from "../shared/stats.js";
import type { BnSync } from "./nn/batchnorm.js";
import type { CoordinatorClient } from "./client.js";

export class RoundSync implements BnSync {
  step = 0;
  private readonly payloads = new Map<number, Float64Array>();

  constructor(readonly client: CoordinatorClient) {}

  get rank(): number {
    return this.client.rank;
  }

  private payload(layer: number, size: number): Float64Array {
    let p = this.payloads.get(layer);
    if (!p || p.length !== size) {
      p = new Float64Array(size);
      this.payloads.set(layer, p);
    }
    return p;
  }

  async reduceMoments(layer: number, local: Moments): Promise<{ count: number; mean: Float64Array; variance: Float64Array }> {
    const c = local.mean.length;
    const p = this.payload(layer, 2 * c); // [mean(C), M2(C)]
    p.set(local.mean, 0);
    p.set(local.m2, c);
    const r = await this.client.round(this.step, "fwd", layer, local.count, p);
    const d = r.data as Float64Array; // [mean(C), biased var(C)]
    return { count: r.count, mean: d.subarray(0, c), variance: d.subarray(c) };
  }

  async reduceGradSums(layer: number, count: number, sums: Float64Array): Promise<Float64Array> {
    const r = await this.client.round(this.step, "bwd", layer, count, sums);
    return r.data as Float64Array;
  }
}
