// What `syncbn train --resume FILE` checks in the launcher, before the coordinator
// or any worker starts: the checkpoint fits the flags (model, norm, batch, seed,
// data, workers, parameter shapes for the data's image shape) and leaves steps to
// train (--steps, or the steps --epochs makes of the data). A refusal is one
// SYNCBN_ERR_CHECKPOINT line, exit 2. The workers check the fit again (worker/train.ts).

import { parseNorm } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import type { Checkpoint } from "../worker/checkpoint.js";
import type { RunDataPlan } from "./preflight.js";
import { buildModel } from "../worker/nn/model.js";
import { conventionsOf, type TrainSettings } from "../worker/settings.js";
import { plural } from "./progress-line.js";

/** Training settings that fix the sample order: resuming with others would not continue the same run. */
const ORDER_KEYS = ["batch", "seed", "data", "trainSize"] as const;

/** `plan`: the run's data as the launcher's preflight found it (image shape, classes, steps of the run). */
export function checkResume(ck: Checkpoint, s: TrainSettings, workers: number, file: string, plan: Pick<RunDataPlan, "sampleShape" | "classes" | "totalSteps">): void {
  const h = ck.header;
  const bad = (what: string): never => {
    throw new SyncbnError(ErrorCode.Checkpoint, `${file} does not fit this run: ${what}`, {}, { beforeStart: true });
  };
  if (s.steps !== null && s.steps <= h.step) {
    bad(`it is at step ${h.step} and --steps ${s.steps} leaves nothing to train; give --steps above ${h.step}`);
  }
  if (s.steps === null && plan.totalSteps <= h.step) {
    bad(`it is at step ${h.step} and --epochs ${s.epochs} makes ${plan.totalSteps} steps of this data: nothing to train; give --steps above ${h.step}, or more --epochs`);
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
    inShape: plan.sampleShape,
    classes: plan.classes,
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
