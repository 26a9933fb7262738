// Evaluation on the test set, each worker on a contiguous shard, summed in one
// round. Decides which statistics eval mode uses: the running averages (ema,
// rank 0's where they differ per worker) or PreciseBN population statistics
// (worker/precise.ts), which replace the running averages only for this eval.

import { parseNorm, type NormMode } from "../shared/config.js";
import { SumRound, type RoundResult } from "../shared/protocol.js";
import type { CoordinatorClient } from "./client.js";
import type { Dataset } from "./data/dataset.js";
import { SoftmaxCrossEntropy } from "./nn/loss.js";
import type { Model } from "./nn/model.js";
import { applyPreciseStats } from "./precise.js";
import type { TrainSettings } from "./settings.js";

export interface EvalContext {
  model: Model;
  train: Dataset;
  test: Dataset;
  settings: TrainSettings;
  client: CoordinatorClient;
  /** Position among the ranks still in the run of the process's first rank, and their number (elastic mode may drop ranks). */
  rank: number;
  /** Ranks of the process's block (positions rank..rank+ranks−1); default 1. */
  ranks?: number;
  worldSize: number;
  /** The last completed step: the `step` of the eval rounds. */
  step: number;
  /** After each eval batch: this shard's progress scaled to the whole test set (done of total samples, an estimate from this process's pace). */
  onProgress?(done: number, total: number): void;
  /** The eval round's summed result [lossSum, correct, count], for a worker that shows the run (hand-started rank 0). */
  onResult?(result: RoundResult): void;
}

/** Modes whose running statistics differ per worker: every worker's own batches feed them. */
export function runningStatsPerWorker(mode: NormMode): boolean {
  return mode.kind === "local" || mode.kind === "group" || mode.kind === "ghost" || mode.kind === "renorm" || mode.kind === "cbn";
}

/** One line for the run summary saying which statistics eval mode used. */
export function describeEvalStatistics(mode: NormMode, evalStats: "ema" | "precise", preciseBatches: number, perWorkerBatch: number): string {
  if (mode.kind === "none" || mode.kind === "groupnorm") return "none: this --norm mode keeps no running statistics";
  if (evalStats === "precise") {
    const merged =
      mode.kind === "sync"
        ? "merged over all workers"
        : mode.kind === "group"
          ? `merged over rank 0's group of ${mode.groupSize} workers`
          : "of rank 0 (statistics differ per worker in this mode; eval uses rank 0's, as PyTorch DDP does)";
    return `PreciseBN: population statistics of ${preciseBatches} training batches × ${perWorkerBatch} samples per worker, ${merged}, recomputed before each eval with weights frozen`;
  }
  return runningStatsPerWorker(mode)
    ? "running averages (ema) of rank 0: statistics differ per worker in this mode, and eval uses rank 0's, as PyTorch DDP does"
    : "running averages (ema), identical on every worker";
}

/**
 * Test-set evaluation in eval mode. ema: when running statistics differ per
 * worker (local, group, ghost, renorm), rank 0's are broadcast first, as PyTorch
 * DDP evaluates with rank 0's buffers. precise: every worker evaluates with the
 * PreciseBN statistics, then gets its running averages back, so training goes on
 * exactly as it would have without this evaluation.
 */
export async function evaluate(ctx: EvalContext): Promise<void> {
  const { model, test, settings: s, client, rank, worldSize, step } = ctx;
  const mode = parseNorm(s.norm);
  // precise: the running averages are put back even when a round fails or a resync
  // (elastic mode) interrupts, so a redone evaluation starts from them again.
  const saved = s.evalStats === "precise" ? model.bnLayers.map((l) => ({ mean: Float64Array.from(l.runningMean), var: Float64Array.from(l.runningVar) })) : [];
  try {
    if (s.evalStats === "precise" && model.bnLayers.length > 0) {
      await applyPreciseStats(ctx);
    } else if (runningStatsPerWorker(mode) && worldSize > 1 && model.bnLayers.length > 0) {
      await broadcastRank0Stats(ctx);
    }
    const per = test.images.length / test.count;
    const shard = Math.ceil(test.count / worldSize);
    // A block evaluates the contiguous union of its ranks' shards.
    const from = Math.min(test.count, rank * shard);
    const to = Math.min(test.count, from + shard * (ctx.ranks ?? 1));
    const loss = new SoftmaxCrossEntropy(test.classes);
    let lossSum = 0;
    let correct = 0;
    for (let i = from; i < to; i += s.evalBatch) {
      const n = Math.min(s.evalBatch, to - i);
      const logits = await model.forward(test.images.subarray(i * per, (i + n) * per), n, false);
      const r = loss.forward(logits, test.labels.subarray(i, i + n), n, n);
      lossSum += r.lossSum;
      correct += r.correct;
      ctx.onProgress?.(Math.round(((i + n - from) / (to - from)) * test.count), test.count);
    }
    const summed = await client.round(step, "sum", SumRound.Eval, to - from, Float64Array.of(lossSum, correct, to - from));
    ctx.onResult?.(summed);
  } finally {
    saved.forEach((m, i) => {
      model.bnLayers[i]!.runningMean.set(m.mean);
      model.bnLayers[i]!.runningVar.set(m.var);
    });
  }
}

/** Every worker's running statistics ← rank 0's, through one sum round (others send zeros). */
async function broadcastRank0Stats(ctx: EvalContext): Promise<void> {
  const { model, client, rank, step } = ctx;
  const size = model.bnLayers.reduce((a, l) => a + 2 * l.channels, 0);
  const buf = new Float64Array(size); // [mean(C), var(C)] per BN layer; zeros from ranks > 0
  if (rank === 0) {
    // The process of position 0: its layers' statistics are its first rank's.
    let off = 0;
    for (const l of model.bnLayers) {
      buf.set(l.runningMean, off);
      buf.set(l.runningVar, off + l.channels);
      off += 2 * l.channels;
    }
  }
  const r = (await client.round(step, "sum", SumRound.BroadcastStats, 0, buf)).data as Float64Array;
  let off = 0;
  for (const l of model.bnLayers) {
    l.runningMean.set(r.subarray(off, off + l.channels));
    l.runningVar.set(r.subarray(off + l.channels, off + 2 * l.channels));
    off += 2 * l.channels;
  }
  model.spreadRank0Stats();
}
