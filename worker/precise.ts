// PreciseBN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"; fvcore's
// update_bn_stats): with the weights frozen, recompute each running-stats layer's
// statistics as the population statistics of its input over `preciseBatches`
// training batches per worker, merged over the mode's statistics group in one sum
// round. Not training: no backward, no fwd/bwd rounds, no running-stat updates.
//
// Definitions (what this computes and why):
// - Collection runs layer by layer in eval mode: pass p feeds the batches through
//   the layers before norm layer p, whose statistics are already the precise ones
//   of passes < p, and pools the moments of layer p's input. So every layer's
//   statistics describe the inputs it will see at eval, where the layers before it
//   use their precise statistics too. fvcore instead runs one train-mode pass (each
//   layer normalized with the batch's own statistics); that needs a fwd round per
//   layer and batch in sync mode, and at 1 sample per worker a train-mode pass
//   would zero every (N, C) feature. Cost: at most L forwards per batch (L = norm
//   layers: 2 or 3 for mlp and cnn, 6N + 3 for resnet:N), only before evaluations.
// - Population mean and variance pool every collected value with Chan's merge:
//   the exact mean and variance of all n values, however they were split into
//   batches and workers. fvcore averages the per-batch (unbiased) variances: right
//   in expectation for i.i.d. samples, but not the variance of the values seen,
//   and undefined at one value per channel per batch — the small-batch regime this
//   project studies. The stored var is M2/n, times n/(n−1) when the run uses
//   unbiasedRunningVar, matching what running_var holds.
// - Grouping: sync merges all workers, group:K the K workers of rank 0's group,
//   local/ghost/renorm rank 0 alone. Eval then uses these statistics on every
//   worker, as the ema path uses rank 0's (PyTorch DDP's default).

import { parseNorm, type NormMode } from "../shared/config.js";
import { SumRound } from "../shared/protocol.js";
import { Rng, deriveSeed } from "../shared/rng.js";
import { emptyMoments, localMoments, mergeMoments, type Moments } from "../shared/stats.js";
import type { CoordinatorClient } from "./client.js";
import { gatherBatch, type Dataset } from "./data/dataset.js";
import type { RunningStatsLayer } from "./nn/batchnorm.js";
import type { Model } from "./nn/model.js";
import type { TrainSettings } from "./settings.js";

/** Seed stream of the PreciseBN batch order (worker/train.ts uses 1 for init, 2 for shuffling). */
const SEED_PRECISE = 3;

/**
 * This worker's pooled input moments of every running-stats layer over `batches`
 * batches of `batchSize` samples from fill(x, b), layer by layer (see the header).
 * Leaves each layer's running stats set to this worker's population statistics.
 */
export async function collectMoments(
  model: Model,
  batches: number,
  batchSize: number,
  fill: (x: Float32Array, b: number) => void, // x: (batchSize, ...inShape)
  inputSize: number,
  unbiased: boolean,
): Promise<Moments[]> {
  const statLayers = model.bnLayers;
  const pooled = statLayers.map((l) => emptyMoments(l.channels));
  const batch = statLayers.map((l) => emptyMoments(l.channels));
  const x = new Float32Array(batchSize * inputSize); // (B, ...inShape)
  for (let p = 0; p < statLayers.length; p++) {
    const target = statLayers[p]!;
    for (let b = 0; b < batches; b++) {
      fill(x, b);
      const h = await model.inputOf(target, x, batchSize);
      const m = localMoments(batch[p]!, h, batchSize, target.channels, target.spatial);
      mergeMoments(pooled[p]!, m.count, m.mean, m.m2);
    }
    setPopulationStats(target, pooled[p]!, unbiased);
  }
  return pooled;
}

/** runningMean ← mean; runningVar ← M2/n (·n/(n−1) if unbiased). No change when n = 0. */
export function setPopulationStats(layer: RunningStatsLayer, m: Moments, unbiased: boolean): void {
  if (m.count === 0) return;
  const denom = unbiased && m.count > 1 ? m.count - 1 : m.count;
  for (let ch = 0; ch < layer.channels; ch++) {
    layer.runningMean[ch] = m.mean[ch]!;
    layer.runningVar[ch] = m.m2[ch]! / denom;
  }
}

/**
 * Payload layout of the PreciseStats sum round: one slot per member of rank 0's
 * statistics group, slot r = per layer [count, mean(C), M2(C)]. Rank r writes slot
 * r and zeros elsewhere; x + 0 is exact in float64, so the elementwise sum is an
 * all-gather of every member's (count, mean, M2), bit for bit, and each worker
 * can Chan-merge them in rank order — the same exact merge as a fwd round. (Sums
 * of count·mean and M2 alone cannot be merged exactly: the cross term needs the
 * members' means, and raw Σx² would cancel.)
 */
export function slotSize(layers: readonly RunningStatsLayer[]): number {
  return layers.reduce((a, l) => a + 1 + 2 * l.channels, 0);
}

export function packSlot(out: Float64Array, offset: number, moments: readonly Moments[]): void {
  let off = offset;
  for (const m of moments) {
    const c = m.mean.length;
    out[off] = m.count;
    out.set(m.mean, off + 1);
    out.set(m.m2, off + 1 + c);
    off += 1 + 2 * c;
  }
}

/** Chan-merges slots 0..members−1 of a gathered payload in rank order, per layer. */
export function mergeSlots(data: Float64Array, members: number, layers: readonly RunningStatsLayer[]): Moments[] {
  const size = slotSize(layers);
  const out = layers.map((l) => emptyMoments(l.channels));
  for (let r = 0; r < members; r++) {
    let off = r * size;
    layers.forEach((l, i) => {
      const c = l.channels;
      mergeMoments(out[i]!, data[off]!, data.subarray(off + 1, off + 1 + c), data.subarray(off + 1 + c, off + 1 + 2 * c));
      off += 1 + 2 * c;
    });
  }
  return out;
}

/**
 * Members of rank 0's statistics group: statsGroupSize without its divisibility
 * check, since elastic mode may leave K not dividing the ranks still in the run;
 * then this takes the first K of them, all samples of the same training set.
 */
function groupOfRank0(mode: NormMode, worldSize: number): number {
  if (mode.kind === "sync") return worldSize;
  if (mode.kind === "group") return Math.min(mode.groupSize, worldSize);
  return 1;
}

export interface PreciseContext {
  model: Model;
  train: Dataset;
  settings: TrainSettings;
  client: CoordinatorClient;
  /** Position among the ranks in the run of the process's first rank, and their number (elastic mode may have dropped some). */
  rank: number;
  /** Ranks of the process's block (positions rank..rank+ranks−1); default 1. */
  ranks?: number;
  worldSize: number;
  /** The eval's step: the key of the sum round and the seed of the batch order. */
  step: number;
}

/**
 * Sets every running-stats layer's statistics, identically on every worker, to the
 * PreciseBN population statistics of rank 0's statistics group. Ranks outside that
 * group only join the round (nothing they collected would be used).
 */
export async function applyPreciseStats(ctx: PreciseContext): Promise<void> {
  const { model, train, settings: s, client, rank, worldSize, step } = ctx;
  const layers = model.bnLayers;
  const members = groupOfRank0(parseNorm(s.norm), worldSize);
  const size = slotSize(layers);
  const payload = new Float64Array(members * size); // members × [count, mean(C), M2(C)] per layer
  let collected = 0;
  // A block collects for each of its ranks in the group in turn, one slot each: a collection
  // depends only on the weights and the batches (each pass uses the statistics the earlier passes set).
  const blockEnd = Math.min(members, rank + (ctx.ranks ?? 1));
  if (rank < members) {
    const per = train.images.length / train.count;
    const chunks = Math.floor(train.count / s.batch); // disjoint batches per pass over the permutation
    const perm = new Rng(deriveSeed(s.seed, SEED_PRECISE, step)).shuffle(Uint32Array.from({ length: train.count }, (_, i) => i));
    const labels = new Uint8Array(s.batch);
    for (let q = rank; q < blockEnd; q++) {
      const fill = (x: Float32Array, b: number): void => {
        const chunk = (b * members + q) % chunks;
        gatherBatch(x, labels, train, perm, chunk * s.batch, s.batch);
      };
      const moments = await collectMoments(model, s.preciseBatches, s.batch, fill, per, s.unbiasedRunningVar);
      packSlot(payload, q * size, moments);
      collected += s.preciseBatches * s.batch;
    }
  }
  const r = await client.round(step, "sum", SumRound.PreciseStats, collected, payload);
  const merged = mergeSlots(r.data as Float64Array, members, layers);
  layers.forEach((l, i) => setPopulationStats(l, merged[i]!, s.unbiasedRunningVar));
}
