// The default small-batch study: what `syncbn sweep --model resnet:3 --data
// fashion-mnist` runs when no grid or budget flag says otherwise (issue 24). A
// set of SweepGrid fields, each with the flags that override it, applied to the
// grid the flags made. Not the flags themselves (sweep-flags.ts) nor the runs.

import type { SweepGrid } from "./sweep-grid.js";

/**
 * The study (docs/study.md has the probe runs behind the budget):
 * - 8 workers × 2…32 samples per worker: global batches 16…256, the range of
 *   Wu & He's Figure 1 (GroupNorm, 2018) scaled to 8 workers;
 * - modes local, sync, groupnorm:8 (16/32/64 channels → 2, 4, 8 channels per group:
 *   at resnet:3's first stage as at ResNet-50's with G = 32), renorm and cbn:8
 *   (Yao et al.'s window of 8 iterations; no burn-in, the official default, as a
 *   burn-in in steps would be a different share of each batch's run);
 * - 3 seeds, for error bars;
 * - the same samples for every batch: 4 epochs of all 60000 training images, tested
 *   on all 10000 test images; lr 0.1 per 128 samples (He et al.'s CIFAR ResNet rate)
 *   scaled linearly with the global batch (Goyal et al. 2017), with a linear warm-up
 *   over the first 5% of the steps and a cosine decay to 0 (every batch ends at a low
 *   rate); no augmentation (it slows the convergence a few epochs need, and a few
 *   epochs do not overfit).
 * The budget is the one the probe runs call for, not the one that fits 20 minutes:
 * at 2 epochs of 20000 images sync BN reached 89.4% at 2 per worker and 77.0% at
 * 32 (global 256 took about 4× the samples for the same training accuracy), a
 * spread of 12.5 points; twice the samples took 32 per worker to 87.1%. 4 epochs of
 * 60000 give every batch 6× the first probes' samples.
 */
export const STUDY_PRESET = {
  workers: 8,
  norms: ["local", "sync", "groupnorm:8", "renorm", "cbn:8"],
  batches: [2, 4, 8, 16, 32],
  seeds: [1, 2, 3],
  epochs: 4,
  trainSize: null,
  testSize: null,
  lr: 0.2,
  lrRefBatch: 256,
  lrSchedule: "cosine",
  lrWarmup: { percent: 5 },
  augment: "none",
} satisfies Partial<SweepGrid>;

type PresetField = keyof typeof STUDY_PRESET;

/** The sweep flags (commander attribute, flag as typed) that replace each part of the preset. */
const OVERRIDDEN_BY: Record<PresetField, [string, string][]> = {
  workers: [["workers", "--workers"]],
  norms: [["norms", "--norms"]],
  batches: [["batches", "--batches"]],
  seeds: [["seeds", "--seeds"]],
  epochs: [["epochs", "--epochs"], ["steps", "--steps"]],
  trainSize: [["trainSize", "--train-size"], ["allData", "--all-data"]],
  testSize: [["testSize", "--test-size"]],
  lr: [["baseLr", "--base-lr"], ["lr", "--lr"]],
  lrRefBatch: [["lrRefBatch", "--lr-ref-batch"]],
  lrSchedule: [["lrSchedule", "--lr-schedule"]],
  lrWarmup: [["warmup", "--warmup"]],
  augment: [["augment", "--augment"]],
};

/** The model and data the preset is the default of. */
export const STUDY_MODEL = "resnet:3";
export const STUDY_DATA = "fashion-mnist";

/** What sweep.json and the report record of a preset: its name, the fields it set, and the flags that replaced the rest. */
export interface PresetRecord {
  name: string;
  applied: Partial<SweepGrid>;
  /** Flags given on the command line that replaced a part of the preset, e.g. ["--seeds"]. */
  overriddenBy: string[];
}

export const STUDY_PRESET_NAME = "the default study (resnet:3 on fashion-mnist)";

/**
 * Sets the preset's fields on `grid` (in place) where no flag of that part was
 * given (`given(attribute)`), when the grid is resnet:3 on Fashion-MNIST; returns
 * what it did, or null when the preset does not apply (another model or data, or
 * every part given by flags).
 */
export function applyStudyPreset(grid: SweepGrid, given: (attribute: string) => boolean): PresetRecord | null {
  if (grid.model !== STUDY_MODEL || grid.data !== STUDY_DATA) return null;
  const applied: Partial<SweepGrid> = {};
  const overriddenBy: string[] = [];
  for (const field of Object.keys(STUDY_PRESET) as PresetField[]) {
    const flags = OVERRIDDEN_BY[field].filter(([attribute]) => given(attribute)).map(([, flag]) => flag);
    if (flags.length) {
      overriddenBy.push(...flags.filter((f) => !overriddenBy.includes(f)));
      continue;
    }
    const value = structuredClone(STUDY_PRESET[field]);
    Object.assign(grid, { [field]: value });
    Object.assign(applied, { [field]: value });
  }
  if (Object.keys(applied).length === 0) return null;
  return { name: STUDY_PRESET_NAME, applied, overriddenBy };
}

/** One line for the sweep's start and the report: which preset, and what the command's own flags replaced. */
export function presetText(p: PresetRecord): string {
  const set = Object.keys(p.applied).length;
  const all = Object.keys(STUDY_PRESET).length;
  return `${p.name}${set < all ? `, ${set} of its ${all} parts (${p.overriddenBy.join(", ")} as given)` : ""}`;
}
