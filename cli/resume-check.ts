// What `syncbn train --resume FILE` checks in the launcher, before the coordinator
// or any worker starts: the checkpoint fits the flags (model, norm, batch, seed,
// data, workers, parameter shapes) and leaves steps to train. A refusal is one
// SYNCBN_ERR_CHECKPOINT line, exit 2. The workers check the fit again (worker/train.ts).

import { parseNorm } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import type { Checkpoint } from "../worker/checkpoint.js";
import { buildModel } from "../worker/nn/model.js";
import { conventionsOf, type TrainSettings } from "../worker/settings.js";
import { plural } from "./progress-line.js";

/** Every dataset syncbn reads is 1×28×28 in 10 classes (worker/data/dataset.ts): the shapes follow from model and norm. */
const SAMPLE_SHAPE = [1, 28, 28];
const CLASSES = 10;

/** Training settings that fix the sample order: resuming with others would not continue the same run. */
const ORDER_KEYS = ["batch", "seed", "data", "trainSize"] as const;

export function checkResume(ck: Checkpoint, s: TrainSettings, workers: number, file: string): void {
  const h = ck.header;
  const bad = (what: string): never => {
    throw new SyncbnError(ErrorCode.Checkpoint, `${file} does not fit this run: ${what}`, {}, { beforeStart: true });
  };
  if (s.steps !== null && s.steps <= h.step) {
    bad(`it is at step ${h.step} and --steps ${s.steps} leaves nothing to train; give --steps above ${h.step}`);
  }
  if (h.model !== s.model) bad(`it holds a ${h.model}, this run trains a ${s.model} (--model)`);
  if (h.norm !== s.norm) bad(`it was trained with --norm ${h.norm}, this run uses ${s.norm}`);
  if (h.workers !== undefined && h.workers !== workers) bad(`it was trained by ${plural(h.workers, "worker")}, this run has ${workers} (--workers); the sample order depends on it`);
  const was = JSON.parse(h.training) as Record<string, unknown>;
  for (const k of ORDER_KEYS) {
    const flag = k === "trainSize" ? "train-size" : k;
    if (JSON.stringify(was[k] ?? null) !== JSON.stringify(s[k])) bad(`--${flag} was ${JSON.stringify(was[k] ?? null)}, now ${JSON.stringify(s[k])}`);
  }
  // Same model and norm, yet other shapes: a crafted or foreign file. Building the model costs a few ms.
  const model = buildModel({
    kind: s.model,
    inShape: SAMPLE_SHAPE,
    classes: CLASSES,
    norm: parseNorm(s.norm),
    conventions: conventionsOf(s),
    sync: null,
    seed: 0,
    renorm: { rMax: s.renormRMax, dMax: s.renormDMax, warmup: s.renormWarmup, clock: null },
  });
  const shapesDiffer = h.params.length !== model.params.length || h.params.some((p, i) => p.length !== model.params[i]!.value.length);
  if (shapesDiffer) bad(`its parameter shapes are not those of --model ${s.model} --norm ${s.norm}`);
  if (h.bn.length !== model.bnLayers.length || h.bn.some((b, i) => b.channels !== model.bnLayers[i]!.channels)) {
    bad(`its BN layers are not those of --model ${s.model} --norm ${s.norm}`);
  }
}
