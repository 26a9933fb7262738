// Evaluation on the test set, each worker on a contiguous shard, summed in one
// round. Decides which statistics eval mode uses: the running averages (ema,
// rank 0's where they differ per worker) or PreciseBN population statistics.

import { parseNorm } from "../shared/config.js";
import { SumRound } from "../shared/protocol.js";
import type { CoordinatorClient } from "./client.js";
import type { Dataset } from "./data/dataset.js";
import { SoftmaxCrossEntropy } from "./nn/loss.js";
import type { Model } from "./nn/model.js";
import type { TrainSettings } from "./settings.js";

export interface EvalContext {
  model: Model;
  train: Dataset;
  test: Dataset;
  settings: TrainSettings;
  client: CoordinatorClient;
  rank: number;
  worldSize: number;
  /** The last completed step: the `step` of the eval rounds. */
  step: number;
}

/**
 * Test-set evaluation in eval mode. When running statistics differ per worker
 * (local/group modes), rank 0's are broadcast first, as PyTorch DDP evaluates
 * with rank 0's buffers.
 */
export async function evaluate(ctx: EvalContext): Promise<void> {
  const { model, test, settings: s, client, rank, worldSize, step } = ctx;
  const kind = parseNorm(s.norm).kind;
  const broadcastRank0Stats = kind === "local" || kind === "group";
  if (broadcastRank0Stats && worldSize > 1 && model.bnLayers.length > 0) {
    const size = model.bnLayers.reduce((a, l) => a + 2 * l.channels, 0);
    const buf = new Float64Array(size); // [mean(C), var(C)] per BN layer; zeros from ranks > 0
    if (rank === 0) {
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
  }
  const per = test.images.length / test.count;
  const shard = Math.ceil(test.count / worldSize);
  const from = Math.min(test.count, rank * shard);
  const to = Math.min(test.count, from + shard);
  const loss = new SoftmaxCrossEntropy(test.classes);
  let lossSum = 0;
  let correct = 0;
  for (let i = from; i < to; i += s.evalBatch) {
    const n = Math.min(s.evalBatch, to - i);
    const logits = await model.forward(test.images.subarray(i * per, (i + n) * per), n, false);
    const r = loss.forward(logits, test.labels.subarray(i, i + n), n, n);
    lossSum += r.lossSum;
    correct += r.correct;
  }
  await client.round(step, "sum", SumRound.Eval, to - from, Float64Array.of(lossSum, correct, to - from));
}

