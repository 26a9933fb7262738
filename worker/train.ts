// One worker process's data-parallel training loop: the shard of every global
// batch of its rank block [rank, rank+ranks) (one rank by default), forward/backward
// through the model (sync BN rounds inside), one gradient round per step, the
// identical SGD update on every replica, evaluation on its shard of the test set,
// and checkpoints (the lowest rank). Talks to the coordinator only.

import { join } from "node:path";
import { parseNorm, statsGroupSize } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { GradExtra } from "../shared/protocol.js";
import { Rng, deriveSeed } from "../shared/rng.js";
import { ResyncSignal, type CoordinatorClient } from "./client.js";
import type { Resync, RoundResult } from "../shared/protocol.js";
import { readCheckpoint, writeCheckpoint, type Checkpoint } from "./checkpoint.js";
import { gatherBatch, loadDataset } from "./data/dataset.js";
import { evaluate } from "./evaluate.js";
import { SoftmaxCrossEntropy } from "./nn/loss.js";
import { buildModel, type Model } from "./nn/model.js";
import { SGD } from "./nn/sgd.js";
import { conventionsOf, lrScheduleOf, recipeProblems, stepsPerEpoch, type TrainSettings } from "./settings.js";
import { lrAt } from "./nn/lr-schedule.js";
import { Augmenter } from "./data/augment.js";
import { RoundSync } from "./sync.js";
import { BlockSync } from "./block-sync.js";
import { unshuffledOrder } from "./data/order.js";
import { loadInit, readInitFile, writeWeights } from "./weights.js";
import { checkFolderStill, folderIdentity, type FolderIdentity } from "./out-folder.js";

export interface WorkerRun {
  settings: TrainSettings;
  client: CoordinatorClient;
  /** The first rank of the process's block. */
  rank: number;
  /** How many consecutive ranks the process hosts (default 1: today's one rank per process). */
  ranks?: number;
  worldSize: number;
  /** Folder for checkpoints (rank 0 writes); null = none. */
  outDir: string | null;
  /** outDir's identity when it was prepared (default: taken as the run starts); checked before every write. */
  outFolder?: FolderIdentity;
  checkpointEvery: number;
  resume: string | null;
  /** --init: a safetensors file whose weights (and running statistics) the model starts from. */
  init?: string | null;
  fashionMnistDir?: string;
  /** Fault injection (tests): runs halfway through writing the checkpoint after `step` steps. */
  midCheckpointWrite?: (step: number) => void;
  /** Eval progress after step `step` (1-based: steps done), for the launcher's display or a hand-started rank 0's own. */
  onEvalProgress?(step: number, done: number, total: number): void;
  /** Every gradient and eval round's summed result (with the grad round's summed extra), for a worker that shows the run's progress itself. */
  onResult?(result: RoundResult): void;
}

/** Seeds derived from --seed, one stream per purpose. */
const SEED_INIT = 1;
const SEED_SHUFFLE = 2;

export async function trainWorker(run: WorkerRun): Promise<void> {
  const { settings: s, client, rank, worldSize } = run;
  const outFolder = run.outDir ? (run.outFolder ?? outFolderAtStart(run.outDir, rank)) : null;
  const conv = conventionsOf(s);
  const mode = parseNorm(s.norm);
  const data = await loadDataset(s.data, {
    seed: s.seed,
    trainSize: s.trainSize ?? undefined,
    testSize: s.testSize ?? undefined,
    fashionMnistDir: run.fashionMnistDir,
  });
  const sync = new RoundSync(client);
  const blockSize = run.ranks ?? 1;
  const groupSize = statsGroupSize(mode, worldSize);
  // One worker per statistics group: plain BN, no rounds (PyTorch's fallback too).
  const bnSync = groupSize > 1 ? sync : null;
  // A block of R > 1 ranks: R copies of every norm layer, each with its rank's collective.
  const blockSync = blockSize > 1 && groupSize > 1 ? new BlockSync(client, rank, blockSize, groupSize, sync) : null;
  const exactGrads = s.rankGrads === "exact";
  const block = blockSize > 1 ? { first: rank, syncs: blockSync ? blockSync.facades : new Array<null>(blockSize).fill(null), exactGrads } : undefined;
  const model = buildModel({
    kind: s.model,
    inShape: data.train.sampleShape,
    classes: data.train.classes,
    norm: mode,
    conventions: conv,
    sync: bnSync,
    where: sync,
    seed: deriveSeed(s.seed, SEED_INIT),
    // Batch renorm's clip schedule reads the step from the RoundSync the loop sets below.
    renorm: { rMax: s.renormRMax, dMax: s.renormDMax, warmup: s.renormWarmup, clock: sync },
    block,
  });
  if (model.bnLayers.length > 0) {
    const names: string[] = [];
    for (const l of model.bnLayers) names[l.layerIndex] = l.name;
    client.nameLayers(Array.from(names, (n) => n ?? ""));
  }
  const opt = new SGD(model.params, { lr: s.lr, momentum: s.momentum, weightDecay: s.weightDecay, nesterov: s.nesterov });
  const loss = new SoftmaxCrossEntropy(data.train.classes, s.labelSmoothing);
  const spe = stepsPerEpoch(data.train.count, worldSize, s.batch);
  const totalSteps = s.steps ?? s.epochs * spe;
  // Percentage milestones are only steps once the run's length is known: checked again here.
  const recipe = recipeProblems(s, totalSteps);
  if (recipe.length) throw new SyncbnError(ErrorCode.BadConfig, recipe.join("; "), { rank });
  const schedule = lrScheduleOf(s);
  const augmenter = new Augmenter({ kind: s.augment, pad: s.augmentPad, seed: s.seed }, data.train.sampleShape);
  let startStep = 0;
  if (run.resume) {
    const ck = readCheckpoint(run.resume);
    checkCheckpointFits(ck, model, conv.training, s.norm, run.resume);
    if (ck.header.workers !== undefined && ck.header.workers !== worldSize) {
      throw new SyncbnError(ErrorCode.Checkpoint, `${run.resume} does not fit this run: it was trained by ${ck.header.workers} workers, this run has ${worldSize}`, { rank });
    }
    // Checked here too: with --epochs the launcher does not know the total before the data is read.
    if (ck.header.step >= totalSteps) {
      throw new SyncbnError(ErrorCode.Checkpoint, `${run.resume} is at step ${ck.header.step} and this run has ${totalSteps} steps: nothing to train; give --steps above ${ck.header.step}`, { rank });
    }
    loadCheckpoint(ck, model, opt);
    startStep = ck.header.step;
  } else if (run.init) {
    loadInit(model, readInitFile(run.init), run.init, `--model ${s.model} --norm ${s.norm}`);
  }
  // Checkpoint and --init set rank r0's statistics; every rank starts from them, as with one rank per process.
  model.spreadRank0Stats();

  const per = data.train.images.length / data.train.count;
  // The block's ranks run as one batch: rank rank+k's B samples are the k-th slice.
  const n = blockSize * s.batch;
  const x = new Float32Array(n * per); // (R·B, C, H, W)
  const labels = new Uint8Array(n); // (R·B)
  // A block with --rank-grads exact sends its ranks' gradients summed in float64 (Param.grad64);
  // one rank, or a fused block (one GEMM over its R·B samples), sends float32.
  const grads = blockSize > 1 && exactGrads ? new Float64Array(model.gradSize) : new Float32Array(model.gradSize);
  const extra = new Float64Array(GradExtra.length);
  // Thread transport: the summed gradients are copied out of the result frame, whose memory then carries the next contribution.
  const summedGrads = client.reusesResultFrames ? new Float32Array(model.gradSize) : undefined;
  let perm: Uint32Array | null = null;
  let permEpoch = -1;
  let lastWaitMs = 0;
  let lastComputeMs = 0;
  // Elastic mode: ranks still in the run. A lost rank's slot of each global batch is dropped.
  let active = Array.from({ length: worldSize }, (_, r) => r);
  // Every rank's own statistics (R copies per layer in a block).
  const statLayers = model.statsCopies();
  const saved = statLayers.map((l) => ({ mean: new Float64Array(l.channels), var: new Float64Array(l.channels), tracked: 0 }));
  const saveRunningStats = (): void =>
    statLayers.forEach((l, i) => {
      saved[i]!.mean.set(l.runningMean);
      saved[i]!.var.set(l.runningVar);
      saved[i]!.tracked = l.tracked;
    });
  const restoreRunningStats = (): void =>
    statLayers.forEach((l, i) => {
      l.runningMean.set(saved[i]!.mean);
      l.runningVar.set(saved[i]!.var);
      l.tracked = saved[i]!.tracked;
    });
  /** Runs one part of a step until it completes without a resync (a worker lost in elastic mode). */
  const untilStable = async (part: () => Promise<void>, onResync: (r: Resync) => void): Promise<void> => {
    for (;;) {
      try {
        await part();
        return;
      } catch (e) {
        if (!(e instanceof ResyncSignal)) throw e;
        const r = client.acknowledgeResync();
        active = r.active;
        onResync(r);
      }
    }
  };

  for (let step = startStep; step < totalSteps; step++) {
    const epoch = Math.floor(step / spe);
    if (epoch !== permEpoch) {
      perm = s.shuffle === "off"
        ? unshuffledOrder(data.train.count, worldSize, s.batch)
        : new Rng(deriveSeed(s.seed, SEED_SHUFFLE, epoch)).shuffle(Uint32Array.from({ length: data.train.count }, (_, i) => i));
      permEpoch = epoch;
    }
    const offset = (step % spe) * worldSize * s.batch + rank * s.batch;
    gatherBatch(x, labels, data.train, perm!, offset, n);
    augmenter.apply(x, perm!, offset, n, epoch);
    // Stepped per iteration: step t's rate is a function of t alone, so a resume continues the schedule.
    opt.lr = lrAt(schedule, s.lr, step, totalSteps);
    sync.step = step;
    saveRunningStats();
    const trainStep = async (): Promise<void> => {
      const t0 = performance.now();
      const waitBefore = client.waitMs;
      const roundsBefore = waitBefore + (client.startupWaitMs ?? 0);
      const logits = await model.forward(x, n, true);
      // The loss is the mean over the global batch of the ranks still in the run.
      const lr = loss.forward(logits, labels, n, active.length * s.batch);
      await model.backward(loss.backward(n), n);
      model.packGrads(grads);
      extra[GradExtra.lossSum] = lr.lossSum;
      extra[GradExtra.correct] = lr.correct;
      extra[GradExtra.count] = n;
      // Every extra is "per rank, summed over ranks" (the monitor divides by W): a block counts R times.
      extra[GradExtra.syncWaitMs] = lastWaitMs * blockSize;
      extra[GradExtra.computeMs] = lastComputeMs * blockSize;
      extra[GradExtra.totalSteps] = totalSteps * blockSize;
      extra[GradExtra.stepsPerEpoch] = spe * blockSize;
      extra[GradExtra.lr] = active[0]! >= rank && active[0]! < rank + blockSize ? opt.lr : 0;
      const checksum = s.checksumEvery > 0 && step % s.checksumEvery === 0 ? model.checksum() : undefined;
      // One contribution for the block: its R ranks' own gradients, summed by the backward.
      const summed = await client.roundInto(summedGrads, step, "grad", -1, n, grads, extra, checksum);
      lastWaitMs = client.waitMs - waitBefore;
      // The run's first round (start-up, client.startupWaitMs) is neither waiting nor compute.
      lastComputeMs = performance.now() - t0 - (client.waitMs + (client.startupWaitMs ?? 0) - roundsBefore);
      run.onResult?.(summed);
      model.unpackGrads(summed.data as Float32Array);
      opt.step();
    };
    await untilStable(trainStep, (r) => {
      if (r.step !== step) {
        throw new SyncbnError(ErrorCode.RoundKey, `resync asks to redo step ${r.step}, but this worker is in step ${step}`, { rank, step });
      }
      restoreRunningStats();
    });

    const done = step + 1;
    const epochEnd = done % spe === 0 || done === totalSteps;
    if (epochEnd || (s.evalEvery > 0 && done % s.evalEvery === 0)) {
      // Eval shards the test set over the ranks still in the run; a resync redoes the whole evaluation.
      await untilStable(
        () =>
          evaluate({
            model,
            train: data.train,
            test: data.test,
            settings: s,
            client,
            rank: active.indexOf(rank),
            ranks: blockSize,
            worldSize: active.length,
            step,
            // The lowest rank's pace stands for the run's (every shard is the same size but the last).
            onProgress: rank === active[0] && run.onEvalProgress ? (d, t) => run.onEvalProgress!(done, d, t) : undefined,
            onResult: run.onResult,
          }),
        () => {},
      );
    }
    if (rank === active[0] && run.outDir && (done === totalSteps || (run.checkpointEvery > 0 && done % run.checkpointEvery === 0))) {
      // A folder deleted or replaced mid-run gets no checkpoint: the run stops instead (worker/out-folder.ts).
      if (outFolder) checkFolderStill(outFolder, { rank, step: done });
      writeCheckpoint(join(run.outDir, "checkpoint.bin"), makeCheckpoint(model, opt, done, s, conv.training, worldSize), () => run.midCheckpointWrite?.(done));
      writeWeights(join(run.outDir, "weights.safetensors"), model, { norm: s.norm, step: done });
    }
  }
}

/** The identity of the run's output folder (prepared by the launcher); a folder already gone is an output error. */
function outFolderAtStart(dir: string, rank: number): FolderIdentity {
  try {
    return folderIdentity(dir);
  } catch (e) {
    throw new SyncbnError(ErrorCode.Output, `the output folder ${dir} is gone (${(e as Error).message}); nothing is written there`, { rank });
  }
}

function makeCheckpoint(model: Model, opt: SGD, step: number, s: TrainSettings, training: string, workers: number): Checkpoint {
  return {
    header: {
      step,
      workers,
      model: s.model,
      norm: s.norm,
      training,
      params: model.params.map((p) => ({ name: p.name, length: p.value.length })),
      momentumBuffers: opt.state().map((b) => b.length),
      bn: model.bnLayers.map((l) => ({ name: l.name, channels: l.channels, tracked: l.tracked })),
    },
    params: model.params.map((p) => p.value),
    momentum: opt.state(),
    bn: model.bnLayers.map((l) => ({ mean: l.runningMean, var: l.runningVar })),
  };
}

function checkCheckpointFits(ck: Checkpoint, model: Model, training: string, norm: string, file: string): void {
  const h = ck.header;
  const bad = (what: string): never => {
    throw new SyncbnError(ErrorCode.Checkpoint, `${file} does not fit this run: ${what}`);
  };
  if (h.model !== model.kind) bad(`it holds a ${h.model}, this run trains a ${model.kind}`);
  if (h.norm !== norm) bad(`it was trained with --norm ${h.norm}, this run uses ${norm}`);
  if (h.params.length !== model.params.length || h.params.some((p, i) => p.length !== model.params[i]!.value.length)) {
    bad("parameter shapes differ");
  }
  if (h.bn.length !== model.bnLayers.length) bad("BN layer count differs");
  const a = JSON.parse(h.training) as Record<string, unknown>;
  const b = JSON.parse(training) as Record<string, unknown>;
  // Batch, seed and data define the sample order: resuming with others would not continue the same run.
  a.shuffle ??= "on"; // checkpoints from before --shuffle were shuffled
  for (const k of ["batch", "seed", "data", "trainSize", "shuffle"]) {
    if (JSON.stringify(a[k]) !== JSON.stringify(b[k])) bad(`--${k} was ${JSON.stringify(a[k])}, now ${JSON.stringify(b[k])}`);
  }
}

function loadCheckpoint(ck: Checkpoint, model: Model, opt: SGD): void {
  model.params.forEach((p, i) => p.value.set(ck.params[i]!));
  opt.loadState(ck.momentum);
  model.bnLayers.forEach((l, i) => {
    l.runningMean.set(ck.bn[i]!.mean);
    l.runningVar.set(ck.bn[i]!.var);
    l.tracked = ck.header.bn[i]!.tracked;
  });
}
