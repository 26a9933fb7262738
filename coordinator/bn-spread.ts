// How far each rank's own BN batch statistics are from the ones sync BN normalizes
// with, per layer: pure functions over (n, mean, M2) the coordinator already
// receives, and a round observer that samples every N-th step off the round's
// critical path. Not the reduction itself (reduce.ts) and not a display.

import { parseNorm } from "../shared/config.js";
import type { Contribution } from "../shared/protocol.js";
import type { CompletedRound, Coordinator, RoundObserver } from "./coordinator.js";

/** One rank's local moments of one BN layer: count per channel, mean (C), M2 = Σ(x − mean)² (C). */
export interface RankMoments {
  count: number;
  mean: Float64Array; // (C)
  m2: Float64Array; // (C)
}

/** Per-channel statistics: mean (C) and a variance (C). */
export interface ChannelStats {
  mean: Float64Array; // (C)
  var: Float64Array; // (C)
}

/**
 * Rank k against the statistics its BN group normalizes with (μ, σ² biased):
 *   meanDev = mean over channels of |μ_k − μ| / sqrt(σ² + eps)
 *   logVar  = mean over channels of ln((σ_k² + eps) / (σ² + eps)),  σ_k² = M2_k / n_k
 * eps is the run's BN eps, so a zero variance gives a finite number: the same
 * sqrt(var + eps) BN divides by. null when n_k ≤ 1: an empty rank has no
 * statistics, and one value per channel has variance 0 by construction (local BN
 * refuses to train on it).
 */
export function rankSpread(local: RankMoments, global: ChannelStats, eps: number): { meanDev: number; logVar: number } | null {
  if (local.count <= 1) return null;
  const c = global.mean.length;
  let dev = 0;
  let logVar = 0;
  for (let ch = 0; ch < c; ch++) {
    const denom = global.var[ch]! + eps;
    dev += Math.abs(local.mean[ch]! - global.mean[ch]!) / Math.sqrt(denom);
    logVar += Math.log((local.m2[ch]! / local.count + eps) / denom);
  }
  return { meanDev: dev / c, logVar: logVar / c };
}

/**
 * Running statistics (what eval normalizes with) against the current batch's:
 * mean over channels of |running_mean − μ| / sqrt(σ² + eps) and of
 * ln((running_var + eps) / (σ² + eps)).
 */
export function runningGap(running: ChannelStats, batch: ChannelStats, eps: number): { meanGap: number; logVar: number } {
  const c = batch.mean.length;
  let gap = 0;
  let logVar = 0;
  for (let ch = 0; ch < c; ch++) {
    const denom = batch.var[ch]! + eps;
    gap += Math.abs(running.mean[ch]! - batch.mean[ch]!) / Math.sqrt(denom);
    logVar += Math.log((running.var[ch]! + eps) / denom);
  }
  return { meanGap: gap / c, logVar: logVar / c };
}

/** One `{"type":"bn"}` line of metrics.jsonl: one BN layer at one sampled step. Arrays are by rank; null = no statistic. */
export interface BnSpreadRecord {
  type: "bn";
  step: number;
  layer: number;
  /** The layer's name as its workers sent it (protocol LayerNames), or null. */
  name: string | null;
  channels: number;
  /** Values per channel each rank contributed (batch · H · W); null if the rank was not in the step. */
  n: (number | null)[];
  meanDev: (number | null)[];
  logVar: (number | null)[];
  /** Mean and max over the ranks with a value. */
  meanDevMean: number | null;
  meanDevMax: number | null;
  /** Mean over the ranks, and the largest |logVar| among them. */
  logVarMean: number | null;
  logVarMaxAbs: number | null;
  /** Running statistics before this step's update vs this step's batch statistics (of the group holding them). */
  runningMeanGap: number | null;
  runningLogVar: number | null;
}

/** The spread of one layer at one step; `refOf[k]` indexes the batch statistics rank k's group normalized with. */
export function layerSpread(
  step: number,
  layer: number,
  ranks: readonly (RankMoments | null)[],
  refs: readonly ChannelStats[],
  refOf: readonly number[],
  running: { stats: ChannelStats; ref: number } | null,
  eps: number,
): BnSpreadRecord {
  const channels = refs[0]?.mean.length ?? 0;
  const meanDev: (number | null)[] = [];
  const logVar: (number | null)[] = [];
  ranks.forEach((m, k) => {
    const s = m ? rankSpread(m, refs[refOf[k]!]!, eps) : null;
    meanDev.push(s ? s.meanDev : null);
    logVar.push(s ? s.logVar : null);
  });
  const dev = meanDev.filter((v): v is number => v !== null);
  const lv = logVar.filter((v): v is number => v !== null);
  const gap = running ? runningGap(running.stats, refs[running.ref]!, eps) : null;
  return {
    type: "bn",
    step,
    layer,
    name: null,
    channels,
    n: ranks.map((m) => (m ? m.count : null)),
    meanDev,
    logVar,
    meanDevMean: dev.length ? dev.reduce((a, b) => a + b, 0) / dev.length : null,
    meanDevMax: dev.length ? Math.max(...dev) : null,
    logVarMean: lv.length ? lv.reduce((a, b) => a + b, 0) / lv.length : null,
    logVarMaxAbs: lv.length ? Math.max(...lv.map(Math.abs)) : null,
    runningMeanGap: gap ? gap.meanGap : null,
    runningLogVar: gap ? gap.logVar : null,
  };
}

/** Why a norm mode gives the coordinator no BN statistics to compare, or null if it does. */
export function bnNote(norm: string, worldSize = 2): string | null {
  const mode = parseNorm(norm);
  const kind = mode.kind;
  // Groups of one worker (group:1, or sync with one worker) normalize locally: workers send no BN rounds.
  if ((kind === "sync" && worldSize > 1) || (kind === "group" && mode.groupSize > 1)) return null;
  if (kind === "sync" || kind === "group") return `--norm ${norm} with ${kind === "sync" ? "one worker" : "groups of one worker"}: every BN layer normalizes with its own batch, so no statistics reach the coordinator and there is no spread to show.`;
  if (kind === "groupnorm" || kind === "none") return `--norm ${norm} has no batch normalization: there are no batch statistics to compare.`;
  return `--norm ${norm}: each worker normalizes with statistics of its own batch and sends none to the coordinator, so the coordinator cannot show their spread here. Run --norm sync (or group:K) to see how far each worker's statistics are from the global batch's.`;
}

/** Default sampling: the spread of every BN layer at steps 1, N, 2N, … (counted as metrics.jsonl counts them: steps completed). */
export const BN_SPREAD_EVERY = 10;

interface LayerSample {
  ranks: (RankMoments | null)[];
  refs: ChannelStats[];
  refOf: number[];
  /** Lowest first member among this layer's rounds: that group holds the running statistics. */
  runningFrom: number;
  running: { stats: ChannelStats; ref: number } | null;
}

/**
 * Watches forward rounds (sync, group:K) and, at every `every`-th step, copies
 * each rank's (n, mean, M2), its group's result and the running statistics
 * before the step's update; when the step's gradient round completes, computes
 * the spread in a later macrotask (setImmediate) and hands one record per layer
 * to `onRecord`. Other steps cost one modulo per round.
 */
export class BnSpreadTracker implements RoundObserver {
  private step = -1;
  private readonly layers = new Map<number, LayerSample>();

  constructor(
    private readonly coordinator: Coordinator,
    private readonly onRecord: (r: BnSpreadRecord) => void,
    readonly every = BN_SPREAD_EVERY,
  ) {}

  afterRound(round: CompletedRound, result: { count: number; data: Float64Array | Float32Array }): void {
    // round.step counts from 0; the line's step is the number of steps completed with this one (1-based).
    if (round.step !== 0 && (round.step + 1) % this.every !== 0) return;
    if (round.phase === "fwd") this.sampleForward(round, result.data as Float64Array);
    else if (round.phase === "grad" && round.step === this.step && this.layers.size > 0) {
      const layers = [...this.layers.entries()].sort((a, b) => a[0] - b[0]);
      const members = round.members;
      const step = this.step;
      this.layers.clear();
      this.step = -1;
      const eps = this.coordinator.runConventions?.eps ?? 0;
      setImmediate(() => {
        for (const [layer, s] of layers) {
          // Only the ranks of the completed step: a rank lost mid-step left stale moments behind.
          const ranks = s.ranks.map((m, k) => (members.includes(k) ? m : null));
          this.onRecord({ ...layerSpread(step + 1, layer, ranks, s.refs, s.refOf, s.running, eps), name: this.coordinator.layerNames?.[layer] ?? null });
        }
      });
    }
  }

  private sampleForward(round: CompletedRound, resultData: Float64Array): void {
    if (round.step !== this.step) {
      this.layers.clear();
      this.step = round.step;
    }
    const world = this.coordinator.worldSize;
    let s = this.layers.get(round.layer);
    if (!s) {
      s = { ranks: new Array<RankMoments | null>(world).fill(null), refs: [], refOf: new Array<number>(world).fill(0), runningFrom: Infinity, running: null };
      this.layers.set(round.layer, s);
    }
    const c = resultData.length / 2;
    const ref = s.refs.length;
    s.refs.push({ mean: resultData.slice(0, c), var: resultData.slice(c) });
    round.members.forEach((rank, i) => {
      const p = round.parts[i] as Contribution | null;
      if (!p) return;
      const d = p.data as Float64Array; // [mean(C), M2(C)]
      s!.ranks[rank] = { count: p.count, mean: d.slice(0, c), m2: d.slice(c) };
      s!.refOf[rank] = ref;
    });
    const first = round.members[0]!;
    if (first < s.runningFrom) {
      s.runningFrom = first;
      // Not yet committed: the step's update is staged until its gradient round.
      const r = this.coordinator.runningStats.layers.get(round.layer);
      const stats = r ? { mean: Float64Array.from(r.mean), var: Float64Array.from(r.var) } : { mean: new Float64Array(c), var: new Float64Array(c).fill(1) };
      s.running = { stats, ref };
    }
  }
}
