// What the launcher checks before it starts a coordinator or any worker: the data
// a run names (folder, IDX files, their headers and sizes, via worker/data), its
// --train-size/--test-size against the data set, and one global batch against the
// training set. A problem found here is a refusal: one line, exit 2 (main.ts).
// Not the checkpoint checks of --resume, nor the settings' own validation.

import { parseNorm, TORCH_CONVENTIONS } from "../shared/config.js";
import { SyncbnError } from "../shared/errors.js";
import { probeDataset } from "../worker/data/dataset.js";
import { buildModel, isOnnxKind } from "../worker/nn/model.js";
import { stepsPerEpoch, type TrainSettings } from "../worker/settings.js";

// One probe per data source and sizes in this process: a sweep checks its data once, not per run.
const probes = new Map<string, Promise<{ train: number; test: number; sampleShape: [number, number, number]; classes: number }>>();

export interface RunDataPlan {
  /** Training / test samples the run will use. */
  train: number;
  test: number;
  /** Steps of the whole run: --steps, or epochs × steps per epoch. */
  totalSteps: number;
  /** (C, H, W) of a sample and the number of classes (CIFAR: 3×32×32, 10 or 100). */
  sampleShape: [number, number, number];
  classes: number;
}

/** Checks s's data for a run of `workers` workers; throws the one-line error that would otherwise stop the workers. */
export async function checkRunData(s: TrainSettings, workers: number, fashionMnistDir: string | undefined): Promise<RunDataPlan> {
  try {
    const key = JSON.stringify([s.data, s.trainSize, s.testSize, fashionMnistDir ?? null]);
    let probe = probes.get(key);
    if (!probe) {
      probe = probeDataset(s.data, { seed: s.seed, trainSize: s.trainSize ?? undefined, testSize: s.testSize ?? undefined, fashionMnistDir });
      probes.set(key, probe);
    }
    const counts = await probe;
    // An ONNX model is imported here once against the data's shape: its refusals come before any worker starts.
    if (isOnnxKind(s.model)) {
      const renorm = { rMax: s.renormRMax, dMax: s.renormDMax, warmup: s.renormWarmup, clock: null };
      buildModel({ kind: s.model, inShape: counts.sampleShape, classes: counts.classes, norm: parseNorm(s.norm), conventions: { ...TORCH_CONVENTIONS, eps: s.bnEps }, sync: null, seed: s.seed, renorm });
    }
    // The training loop takes W·B samples per step and drops the remainder of an epoch.
    const perEpoch = stepsPerEpoch(counts.train, workers, s.batch);
    return { ...counts, totalSteps: s.steps ?? s.epochs * perEpoch };
  } catch (e) {
    // Found before anything started: main.ts exits 2 on it.
    if (e instanceof SyncbnError && !e.beforeStart) throw new SyncbnError(e.code, e.detail, e.context, { beforeStart: true });
    throw e;
  }
}
