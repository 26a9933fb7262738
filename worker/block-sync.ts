// The statistics collective of a process that hosts a block of R consecutive ranks
// [r0, r0+R): one BnSync facade per rank (copy k of a SegmentedNorm uses rank
// r0+k's). The copies call it in rank order within one loop; once all R have, the
// block either merges its whole statistics groups locally (no network) with the
// coordinator's arithmetic, or sends ONE round with the R segments (a block inside
// one group) and hands the one result to every copy. Not used for R = 1.

import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { chanMergeStep, finishMerge, type Moments } from "../shared/stats.js";
import type { CoordinatorClient } from "./client.js";
import type { BnSync } from "./nn/batchnorm.js";

type GroupMoments = { count: number; mean: Float64Array; variance: Float64Array };

interface Waiter<T> {
  resolve(v: T): void;
  reject(e: unknown): void;
}

interface LayerBuffers {
  payload: Float64Array; // (R·2C): per rank [mean(C), M2(C)] or [Σdy(C), Σdy·xhat(C)]
  counts: Float64Array; // (R): per rank count of the last fwd
  fwdResult: Float64Array; // (G·2C): per group of the block [mean(C), biased var(C)]; G = 1 for a round
  bwdResult: Float64Array; // (G·2C): per group [Σdy(C), Σdy·xhat(C)]
  moments: GroupMoments[]; // (G): views of fwdResult
  fwdWaiters: Waiter<GroupMoments>[];
  bwdWaiters: Waiter<Float64Array>[];
}

/** Whether a block [first, first+size) lies inside one group of K ranks, or is a union of whole groups (else it splits one). */
export function blockLayout(first: number, size: number, groupSize: number): "inside" | "whole" | "splits" {
  if (first % groupSize === 0 && size % groupSize === 0) return "whole";
  if (Math.floor(first / groupSize) === Math.floor((first + size - 1) / groupSize)) return "inside";
  return "splits";
}

export class BlockSync {
  private readonly layers = new Map<number, LayerBuffers>();
  /** Ranks per statistics group merged here; 0 when the block sends rounds. */
  private readonly localGroup: number;
  readonly facades: BnSync[];

  constructor(
    readonly client: CoordinatorClient,
    readonly first: number,
    readonly size: number,
    /** K: ranks per statistics group (statsGroupSize of the mode); > 1. */
    groupSize: number,
    /** The training loop's step (RoundSync). */
    readonly clock: { readonly step: number },
  ) {
    const layout = blockLayout(first, size, groupSize);
    if (layout === "splits") {
      throw new SyncbnError(ErrorCode.BadConfig, `ranks ${first}..${first + size - 1} of one process split a statistics group of ${groupSize} ranks; give --ranks-per-proc a divisor or a multiple of ${groupSize}`);
    }
    this.localGroup = layout === "whole" ? groupSize : 0;
    const self = this;
    this.facades = Array.from({ length: size }, (_, k) => ({
      get step() {
        return self.clock.step;
      },
      rank: first + k,
      block: this,
      reduceMoments: (layer: number, local: Moments) => self.reduceMoments(k, layer, local),
      reduceGradSums: (layer: number, count: number, sums: Float64Array) => self.reduceGradSums(k, layer, count, sums),
    }));
  }

  private buffers(layer: number, channels: number): LayerBuffers {
    let b = this.layers.get(layer);
    if (!b || b.payload.length !== this.size * 2 * channels) {
      const groups = this.localGroup > 0 ? this.size / this.localGroup : 1;
      const fwdResult = new Float64Array(groups * 2 * channels);
      b = {
        payload: new Float64Array(this.size * 2 * channels),
        counts: new Float64Array(this.size),
        fwdResult,
        bwdResult: new Float64Array(groups * 2 * channels),
        moments: Array.from({ length: groups }, (_, g) => ({
          count: 0,
          mean: fwdResult.subarray(g * 2 * channels, g * 2 * channels + channels),
          variance: fwdResult.subarray(g * 2 * channels + channels, (g + 1) * 2 * channels),
        })),
        fwdWaiters: [],
        bwdWaiters: [],
      };
      this.layers.set(layer, b);
    }
    return b;
  }

  private reduceMoments(k: number, layer: number, local: Moments): Promise<GroupMoments> {
    const c = local.mean.length;
    const b = this.buffers(layer, c);
    b.payload.set(local.mean, k * 2 * c);
    b.payload.set(local.m2, k * 2 * c + c);
    b.counts[k] = local.count;
    const p = new Promise<GroupMoments>((resolve, reject) => b.fwdWaiters.push({ resolve, reject }));
    if (k === this.size - 1) this.finishMoments(layer, c, b);
    return p;
  }

  private finishMoments(layer: number, c: number, b: LayerBuffers): void {
    const waiters = b.fwdWaiters.splice(0);
    if (waiters.length !== this.size) {
      const e = new SyncbnError(ErrorCode.BadConfig, `layer ${layer}: ${waiters.length} of ${this.size} ranks of the block contributed moments`, { rank: this.ranks(), step: this.clock.step, layer, phase: "fwd" });
      for (const w of waiters) w.reject(e);
      return;
    }
    if (this.localGroup > 0) {
      const k = this.localGroup;
      for (let g = 0; g < b.moments.length; g++) {
        b.moments[g]!.count = mergeMomentsInto(b.fwdResult.subarray(g * 2 * c, (g + 1) * 2 * c), b.payload, b.counts, g * k, k);
      }
      waiters.forEach((w, i) => w.resolve(b.moments[Math.floor(i / k)]!));
      return;
    }
    this.momentsRound(layer, c, b).then(
      (m) => {
        for (const w of waiters) w.resolve(m);
      },
      (e: unknown) => {
        for (const w of waiters) w.reject(e);
      },
    );
  }

  /** The block's one fwd round, every rank's part in b.payload and b.counts: the group's moments. */
  private momentsRound(layer: number, c: number, b: LayerBuffers): Promise<GroupMoments> {
    // Every rank of the block has the same count (the same per-rank batch): the round's `count`.
    const count = b.counts[0]!;
    if (b.counts.some((n) => n !== count)) {
      return Promise.reject(
        new SyncbnError(ErrorCode.BadConfig, `layer ${layer}: the ranks of a block that sends rounds must have equal batches, got counts ${Array.from(b.counts).join(", ")}`, { rank: this.ranks(), step: this.clock.step, layer, phase: "fwd" }),
      );
    }
    return this.client.roundInto(b.fwdResult, this.clock.step, "fwd", layer, count, b.payload).then((r) => {
      let m = b.moments[0]!;
      if (r.data !== b.fwdResult) {
        const d = r.data as Float64Array; // [mean(C), biased var(C)], not decoded in place
        m = { count: r.count, mean: d.subarray(0, c), variance: d.subarray(c) };
      }
      m.count = r.count;
      return m;
    });
  }

  private reduceGradSums(k: number, layer: number, count: number, sums: Float64Array): Promise<Float64Array> {
    const c = sums.length / 2;
    const b = this.buffers(layer, c);
    b.payload.set(sums, k * 2 * c);
    b.counts[k] = count;
    const p = new Promise<Float64Array>((resolve, reject) => b.bwdWaiters.push({ resolve, reject }));
    if (k === this.size - 1) this.finishGradSums(layer, c, b);
    return p;
  }

  private finishGradSums(layer: number, c: number, b: LayerBuffers): void {
    const waiters = b.bwdWaiters.splice(0);
    if (waiters.length !== this.size) {
      const e = new SyncbnError(ErrorCode.BadConfig, `layer ${layer}: ${waiters.length} of ${this.size} ranks of the block contributed gradient sums`, { rank: this.ranks(), step: this.clock.step, layer, phase: "bwd" });
      for (const w of waiters) w.reject(e);
      return;
    }
    if (this.localGroup > 0) {
      const k = this.localGroup;
      const groups = this.size / k;
      const views: Float64Array[] = [];
      for (let g = 0; g < groups; g++) {
        // float64 sums from zero in rank order: the coordinator's bwd arithmetic.
        const out = b.bwdResult.subarray(g * 2 * c, (g + 1) * 2 * c);
        out.fill(0);
        for (let r = g * k; r < (g + 1) * k; r++) {
          for (let i = 0; i < 2 * c; i++) out[i]! += b.payload[r * 2 * c + i]!;
        }
        views.push(out);
      }
      waiters.forEach((w, i) => w.resolve(views[Math.floor(i / k)]!));
      return;
    }
    this.client.roundInto(b.bwdResult, this.clock.step, "bwd", layer, b.counts[0]!, b.payload).then(
      (r) => {
        for (const w of waiters) w.resolve(r.data as Float64Array);
      },
      (e: unknown) => {
        for (const w of waiters) w.reject(e);
      },
    );
  }

  /** Whether the block sends one round for all its ranks (they lie inside one statistics group), rather than merging whole groups here. */
  get sendsRounds(): boolean {
    return this.localGroup === 0;
  }

  /**
   * The layer's per-rank parts for a caller that writes every rank's at once (SegmentedNorm's
   * fused path): payload (R·2C), rank k's [mean(C), M2(C)] or [Σdy(C), Σdy·xhat(C)] at k·2C, and
   * counts (R); then sendMoments or sendGradSums. Only when sendsRounds.
   */
  parts(layer: number, channels: number): { payload: Float64Array; counts: Float64Array } {
    return this.buffers(layer, channels);
  }

  /** The fwd round of the whole block, every part written (parts()): what reduceMoments gives each rank. */
  sendMoments(layer: number, channels: number): Promise<GroupMoments> {
    return this.momentsRound(layer, channels, this.buffers(layer, channels));
  }

  /** The bwd round of the whole block, every part written (parts()): what reduceGradSums gives each rank. */
  sendGradSums(layer: number, channels: number): Promise<Float64Array> {
    const b = this.buffers(layer, channels);
    return this.client.roundInto(b.bwdResult, this.clock.step, "bwd", layer, b.counts[0]!, b.payload).then((r) => r.data as Float64Array);
  }

  private ranks(): number[] {
    return Array.from({ length: this.size }, (_, k) => this.first + k);
  }
}

/**
 * Chan merge of ranks [from, from+n) of payload (per rank [mean(C), M2(C)], counts)
 * in rank order into out = [mean(C), biased var(C)]; returns the group count. The
 * coordinator's steps (shared/stats.ts chanMergeStep, finishMerge), so a group merged
 * here is bit-identical to one the coordinator merges.
 */
export function mergeMomentsInto(out: Float64Array, payload: Float64Array, counts: Float64Array, from: number, n: number): number {
  const w = out.length;
  let count = 0;
  for (let r = from; r < from + n; r++) count = chanMergeStep(out, count, payload.subarray(r * w, (r + 1) * w), counts[r]!);
  finishMerge(out, count);
  return count;
}
