// What the launcher checks before it starts a coordinator or any worker: the data
// a run names (folder, IDX files, their headers and sizes, via worker/data), its
// --train-size/--test-size against the data set, and one global batch against the
// training set, and the model built once against the data's image shape (images
// too small for --model cnn). A problem found here is a refusal: one line, exit 2 (main.ts).
// Not the checkpoint checks of --resume, nor the settings' own validation.

import { parseNorm, type BnConventions } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { probeDataset } from "../worker/data/dataset.js";
import { buildModel, type Model } from "../worker/nn/model.js";
import { trainFlopsPerSample } from "./layout.js";
import { stepsPerEpoch, type TrainSettings } from "../worker/settings.js";

// One probe per data source and sizes in this process: a sweep checks its data once, not per run.
const probes = new Map<string, Promise<{ train: number; test: number; sampleShape: [number, number, number]; classes: number }>>();

export interface RunDataPlan {
  /** Training / test samples the run will use. */
  train: number;
  test: number;
  /** Steps of the whole run: --steps, or epochs × steps per epoch. */
  totalSteps: number;
  /** One sample's (C, H, W) and the number of classes, as the data holds them. */
  sampleShape: [number, number, number];
  classes: number;
  /** Training FLOPs of one sample through the model (cli/layout.ts), for the default layout. */
  trainFlopsPerSample: number;
  /** Per BN layer (the `layer` of its rounds), its conventions (null: a layer without them). */
  layerConventions: (BnConventions | null)[];
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
    // The model is built here once against the data's shape (an ONNX one imported): its refusals, e.g.
    // images too small for cnn's two poolings, come before any worker starts, not as workers that exit.
    const renorm = { rMax: s.renormRMax, dMax: s.renormDMax, warmup: s.renormWarmup, clock: null };
    let model: Model;
    try {
      model = buildModel({ kind: s.model, inShape: counts.sampleShape, classes: counts.classes, norm: parseNorm(s.norm), conventions: { eps: s.bnEps, momentum: s.bnMomentum, momentumStyle: s.bnMomentumStyle, unbiasedRunningVar: s.unbiasedRunningVar }, sync: null, seed: s.seed, renorm });
    } catch (e) {
      // The model names itself and the minimum; the user also needs to know which data the images came from.
      if (e instanceof SyncbnError && e.code === ErrorCode.BadConfig) throw new SyncbnError(e.code, `${e.detail} (the images of --data ${s.data})`, e.context);
      throw e;
    }
    // The training loop takes W·B samples per step and drops the remainder of an epoch.
    const perEpoch = stepsPerEpoch(counts.train, workers, s.batch);
    // Each BN layer's conventions: an ONNX node may carry its own momentum, which the coordinator's copy of the running statistics follows too.
    const layerConventions = model.bnLayers.map((l) => (l as { conventions?: BnConventions }).conventions ?? null);
    return { ...counts, totalSteps: s.steps ?? s.epochs * perEpoch, trainFlopsPerSample: trainFlopsPerSample(model), layerConventions };
  } catch (e) {
    // Found before anything started: main.ts exits 2 on it.
    if (e instanceof SyncbnError && !e.beforeStart) throw new SyncbnError(e.code, e.detail, e.context, { beforeStart: true });
    throw e;
  }
}
