// The training recipe of issue 24 piece by piece: learning-rate schedules and
// warm-up, label smoothing and Nesterov SGD against PyTorch's numbers
// (test/fixtures/recipe.json, from scripts/make-recipe-fixtures.py: no PyTorch
// needed here), crop-flip augmentation's independence of the worker layout, and
// the flags' ranges and where their values are recorded. Whole runs against
// PyTorch are in torch-parity.test.ts; the CIFAR reader in cifar.test.ts.

import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { afterAll, describe, expect, it } from "vitest";
import { addRunFlags, runSettingsFromFlags, type RunFlags } from "../cli/flags.js";
import { gridFromFlags } from "../cli/sweep-flags.js";
import { DEFAULT_GRID, settingsFor, sharedSettingDiffs } from "../cli/sweep-grid.js";
import { Rng, deriveSeed } from "../shared/rng.js";
import { readCheckpoint } from "../worker/checkpoint.js";
import { Augmenter, drawFor } from "../worker/data/augment.js";
import { gatherBatch, type Dataset } from "../worker/data/dataset.js";
import { unshuffledOrder } from "../worker/data/order.js";
import type { Param } from "../worker/nn/layer.js";
import { SoftmaxCrossEntropy } from "../worker/nn/loss.js";
import { lrAt, type LrSchedule } from "../worker/nn/lr-schedule.js";
import { SGD } from "../worker/nn/sgd.js";
import { conventionsOf } from "../worker/settings.js";
import { relDiff } from "./compare.js";
import { ROOT, runCli } from "./helpers.js";

interface RecipeFixture {
  schedules: { kind: LrSchedule["kind"]; lr: number; totalSteps: number; milestones: number[]; gamma: number; warmup: number; lrs: number[] }[];
  crossEntropy: { labelSmoothing: number; n: number; classes: number; logits: number[]; labels: number[]; loss: number; dlogits: number[] }[];
  nesterov: { lr: number; momentum: number; weightDecay: number; param: number[]; grads: number[][]; after: number[][] };
}

const FIXTURE = JSON.parse(readFileSync(join(ROOT, "test", "fixtures", "recipe.json"), "utf8")) as RecipeFixture;
const TMP = mkdtempSync(join(tmpdir(), "syncbn-recipe-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

/**
 * max|ours − torch| / max|torch| ≤ tol over the tensor (relDiff, as the parity
 * tests): scale-aware, since float32 storage leaves an element that cancels to
 * near 0 (p − target, p − lr·update) with an absolute, not relative, error.
 * The first values are printed side by side on failure.
 */
function expectClose(ours: ArrayLike<number>, torch: ArrayLike<number>, tol: number, what: string): void {
  expect(ours.length, what).toBe(torch.length);
  const head = Array.from({ length: Math.min(3, torch.length) }, (_, i) => `${ours[i]} vs ${torch[i]}`).join(", ");
  expect(relDiff(ours, torch), `${what}: ours vs torch ${head}`).toBeLessThanOrEqual(tol);
}

describe("learning-rate schedules, label smoothing and Nesterov against PyTorch", () => {
  for (const c of FIXTURE.schedules) {
    it(`gives the rates of torch.optim.lr_scheduler for ${c.kind}${c.milestones.length ? ` at ${c.milestones.join(",")} ×${c.gamma}` : ""} with warm-up ${c.warmup}, stepped per iteration`, () => {
      const s: LrSchedule = { kind: c.kind, milestones: c.milestones.map((steps) => ({ steps })), gamma: c.gamma, warmup: { steps: c.warmup } };
      const ours = c.lrs.map((_, t) => lrAt(s, c.lr, t, c.totalSteps));
      expectClose(ours, c.lrs, 1e-6, c.kind);
      // Each rate on its own too: a schedule's small late rates matter as much as its first.
      c.lrs.forEach((lr, t) => expect(Math.abs(ours[t]! - lr), `step ${t}`).toBeLessThanOrEqual(1e-6 * lr));
    });
  }

  it("resolves warm-up and milestones given as percentages of the run's steps", () => {
    const s: LrSchedule = { kind: "step", milestones: [{ percent: 50 }, { percent: 75 }], gamma: 0.1, warmup: { percent: 10 } };
    // 40 steps: warm-up 4 steps, milestones at 20 and 30.
    expect(lrAt(s, 1, 0, 40)).toBe(0.25);
    expect(lrAt(s, 1, 3, 40)).toBe(1);
    expect([lrAt(s, 1, 19, 40), lrAt(s, 1, 20, 40), lrAt(s, 1, 30, 40)]).toEqual([1, 0.1, 0.1 * 0.1]);
  });

  for (const c of FIXTURE.crossEntropy) {
    it(`gives F.cross_entropy's loss and logit gradient with label_smoothing=${c.labelSmoothing} (${c.n} samples, ${c.classes} classes)`, () => {
      const loss = new SoftmaxCrossEntropy(c.classes, c.labelSmoothing);
      const r = loss.forward(Float32Array.from(c.logits), Int32Array.from(c.labels), c.n, c.n);
      expectClose([r.lossSum / c.n], [c.loss], 1e-6, "loss");
      // float32 probabilities and gradients (~6e-8 relative each, against the tensor's scale).
      expectClose(loss.backward(c.n), c.dlogits, 1e-6, "dlogits");
    });
  }

  it("gives torch.optim.SGD(nesterov=True)'s parameters after each step, with momentum and weight decay", () => {
    const c = FIXTURE.nesterov;
    const p: Param = { name: "w", value: Float32Array.from(c.param), grad: new Float32Array(c.param.length) };
    const opt = new SGD([p], { lr: c.lr, momentum: c.momentum, weightDecay: c.weightDecay, nesterov: true });
    c.grads.forEach((g, t) => {
      p.grad.set(g);
      opt.step();
      expectClose(p.value, c.after[t]!, 1e-6, `step ${t}`);
    });
  });

  it("refuses Nesterov without momentum, as PyTorch does", () => {
    const p: Param = { name: "w", value: new Float32Array(2), grad: new Float32Array(2) };
    expect(() => new SGD([p], { lr: 0.1, momentum: 0, weightDecay: 0, nesterov: true })).toThrow(/nesterov needs momentum > 0/);
  });
});

/** A dataset of `count` 3×6×5 images whose pixels say their sample index, channel and place. */
function tinyDataset(count: number): Dataset {
  const shape: [number, number, number] = [3, 6, 5];
  const per = 3 * 6 * 5;
  return {
    name: "tiny/train",
    images: Float32Array.from({ length: count * per }, (_, i) => 1 + i),
    labels: Uint8Array.from({ length: count }, (_, i) => i % 10),
    count,
    sampleShape: shape,
    classes: 10,
  };
}

/**
 * The global batch of `step` as the training loop builds it (worker/train.ts):
 * each process gathers ranks [rank, rank+ranksPerProc) from the epoch's order and
 * augments them; the processes' batches concatenated in rank order.
 */
function globalBatch(ds: Dataset, workers: number, batch: number, ranksPerProc: number, step: number, shuffle: boolean): Float32Array {
  const per = ds.images.length / ds.count;
  const spe = Math.floor(ds.count / (workers * batch));
  const epoch = Math.floor(step / spe);
  const seed = 7;
  const order = shuffle ? new Rng(deriveSeed(seed, 2, epoch)).shuffle(Uint32Array.from({ length: ds.count }, (_, i) => i)) : unshuffledOrder(ds.count, workers, batch);
  const out = new Float32Array(workers * batch * per);
  for (let rank = 0; rank < workers; rank += ranksPerProc) {
    const n = ranksPerProc * batch;
    const x = new Float32Array(n * per);
    const labels = new Uint8Array(n);
    const offset = (step % spe) * workers * batch + rank * batch;
    gatherBatch(x, labels, ds, order, offset, n);
    new Augmenter({ kind: "crop-flip", pad: 2, seed }, ds.sampleShape).apply(x, order, offset, n, epoch);
    out.set(x, rank * batch * per);
  }
  return out;
}

describe("crop-flip augmentation", () => {
  it("augments the same global batch identically with 1 worker × 8, 2 × 4, and 4 ranks packed in one process", () => {
    const ds = tinyDataset(40);
    for (const step of [0, 6]) {
      const one = globalBatch(ds, 1, 8, 1, step, true);
      expect(globalBatch(ds, 2, 4, 1, step, true), `step ${step}, 2 × 4`).toEqual(one);
      expect(globalBatch(ds, 4, 2, 4, step, true), `step ${step}, 4 ranks in one process`).toEqual(one);
      expect(globalBatch(ds, 4, 2, 2, step, true), `step ${step}, 2 processes of 2`).toEqual(one);
    }
  });

  it("crops with zero padding and flips as out(y, x) = in(y + dy − P, x' + dx − P), x' mirrored when flipped", () => {
    const ds = tinyDataset(12);
    const [c, h, w] = ds.sampleShape;
    const per = c * h * w;
    const order = Uint32Array.from({ length: 12 }, (_, i) => i);
    const o = { kind: "crop-flip" as const, pad: 2, seed: 3 };
    const x = ds.images.slice();
    new Augmenter(o, ds.sampleShape).apply(x, order, 0, 12, 5);
    let flips = 0;
    let shifts = 0;
    for (let i = 0; i < 12; i++) {
      const d = drawFor(o, 5, i);
      flips += d.flip ? 1 : 0;
      shifts += d.dx !== 2 || d.dy !== 2 ? 1 : 0;
      for (let ch = 0; ch < c; ch++) for (let y = 0; y < h; y++) for (let xx = 0; xx < w; xx++) {
        const sy = y + d.dy - 2;
        const sx = (d.flip ? w - 1 - xx : xx) + d.dx - 2;
        const want = sy < 0 || sy >= h || sx < 0 || sx >= w ? 0 : ds.images[i * per + ch * h * w + sy * w + sx]!;
        expect(x[i * per + ch * h * w + y * w + xx], `sample ${i} (${ch}, ${y}, ${xx})`).toBe(want);
      }
    }
    // 12 draws: some flip, some not; some shift.
    expect(flips).toBeGreaterThan(0);
    expect(flips).toBeLessThan(12);
    expect(shifts).toBeGreaterThan(0);
  });

  it("draws anew per epoch and per sample, from the seed alone, and leaves the batch alone with --augment none", () => {
    const o = { kind: "crop-flip" as const, pad: 4, seed: 1 };
    const draws = (epoch: number): string => JSON.stringify(Array.from({ length: 16 }, (_, i) => drawFor(o, epoch, i)));
    expect(draws(0)).toBe(draws(0));
    expect(draws(0)).not.toBe(draws(1));
    expect(JSON.stringify(drawFor({ ...o, seed: 2 }, 0, 0))).not.toBe(JSON.stringify(Array.from({ length: 1 }, () => drawFor(o, 0, 0))[0]));
    const ds = tinyDataset(4);
    const x = ds.images.slice();
    new Augmenter({ ...o, kind: "none" }, ds.sampleShape).apply(x, [0, 1, 2, 3], 0, 4, 0);
    expect(x).toEqual(ds.images);
  });
});

/** Parses flags with the real run-flag definitions, in process. */
function parseRunFlags(args: string[]): RunFlags {
  const cmd = addRunFlags(new Command().exitOverride());
  cmd.parse(args, { from: "user" });
  return cmd.opts<RunFlags>();
}

const RECIPE_FLAGS = ["--lr-schedule", "step", "--lr-milestones", "50%,75%", "--lr-gamma", "0.2", "--warmup", "2", "--augment", "crop-flip", "--augment-pad", "3", "--label-smoothing", "0.1", "--nesterov"];

/** Runs the CLI and checks a refusal: one line, exit 2, nothing started. */
async function refused(args: string[], re: RegExp): Promise<void> {
  const out = join(TMP, `refused-${Math.random().toString(36).slice(2)}`);
  const r = await runCli([...args, "--out", out], { timeoutMs: 60_000 });
  const what = args.join(" ");
  expect(r.code, `${what}: ${r.stderr}`).toBe(2);
  const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
  expect(lines, what).toHaveLength(1);
  expect(lines[0], what).toMatch(re);
  expect(existsSync(out), what).toBe(false);
}

describe("the recipe in real runs", () => {
  it("trains the same weights with the whole recipe as 1 worker × 8, 2 × 4 and 4 ranks packed in one process (sync BN, augmentation on)", async () => {
    // 64 samples, 8 per step: 12 steps cross an epoch boundary (new crops and flips).
    const common = ["train", "--transport", "thread", "--model", "mlp", "--norm", "sync", "--steps", "12", "--train-size", "64", "--test-size", "16", "--seed", "5", ...RECIPE_FLAGS];
    const layouts: [string, string[]][] = [
      ["1x8", ["--workers", "1", "--batch", "8"]],
      ["2x4", ["--workers", "2", "--batch", "4"]],
      ["4packed", ["--workers", "4", "--batch", "2", "--ranks-per-proc", "4"]],
      ["1x8-plain", ["--workers", "1", "--batch", "8", "--augment", "none"]],
    ];
    const params = new Map<string, Float32Array[]>();
    for (const [name, flags] of layouts) {
      const out = join(TMP, `layout-${name}`);
      const r = await runCli([...common, ...flags, "--out", out], { timeoutMs: 120_000 });
      expect(r.code, `${name}: ${r.stderr}`).toBe(0);
      params.set(name, readCheckpoint(join(out, "checkpoint.bin")).params);
    }
    const worst = (a: string, b: string): number => Math.max(...params.get(a)!.map((p, i) => relDiff(p, params.get(b)![i]!)));
    expect(worst("2x4", "1x8")).toBeLessThan(1e-4);
    expect(worst("4packed", "1x8")).toBeLessThan(1e-4);
    // …and augmentation really changed the batches.
    expect(worst("1x8-plain", "1x8")).toBeGreaterThan(1e-3);
  }, 300_000);
});

describe("the recipe flags", () => {
  it("record every recipe setting in the run's settings and in the sweep grid, applied to every cell", () => {
    const s = runSettingsFromFlags(parseRunFlags(RECIPE_FLAGS));
    const recipe = {
      lrSchedule: "step",
      lrMilestones: [{ percent: 50 }, { percent: 75 }],
      lrGamma: 0.2,
      lrWarmup: { steps: 2 },
      augment: "crop-flip",
      augmentPad: 3,
      labelSmoothing: 0.1,
      nesterov: true,
    };
    expect(s).toMatchObject(recipe);
    // The canonical JSON a worker's hello and every checkpoint carry.
    expect(JSON.parse(conventionsOf({ ...s, norm: "sync" }).training)).toMatchObject(recipe);
    expect(runSettingsFromFlags(parseRunFlags([]))).toMatchObject({ lrSchedule: "constant", lrWarmup: { steps: 0 }, augment: "none", labelSmoothing: 0, nesterov: false });
    const grid = gridFromFlags({ ...parseRunFlags(RECIPE_FLAGS), workers: 2, batches: [1, 4], norms: ["sync", "local"], seeds: [1], baseLr: 0.1, lrRefBatch: 256, out: "unused", transport: "process", wire: "ws", pinCpus: "auto", threads: "auto" });
    for (const norm of ["sync", "local"]) for (const b of [1, 4]) expect(settingsFor(grid, norm, b, 1)).toMatchObject(recipe);
    // A sweep folder of the old recipe is another sweep: its runs are not compared with these.
    expect(sharedSettingDiffs(DEFAULT_GRID, grid).join("; ")).toMatch(/lrSchedule was "constant", now "step".*labelSmoothing was 0, now 0\.1.*nesterov was false, now true/);
  });

  it("refuses every recipe value outside its range in train and sweep, in one line, exit 2", async () => {
    await refused(["train", "--lr-schedule", "linear"], /--lr-schedule "linear" is invalid: allowed choices are constant, step, cosine/);
    await refused(["train", "--lr-schedule", "step"], /--lr-schedule step needs --lr-milestones/);
    await refused(["train", "--lr-milestones", "10"], /--lr-milestones applies to --lr-schedule step, not constant/);
    await refused(["train", "--lr-schedule", "step", "--lr-milestones", "10,x"], /--lr-milestones must be a comma-separated list of steps/);
    await refused(["train", "--lr-schedule", "step", "--lr-milestones", "50,20"], /--lr-milestones must increase, got 50, 20/);
    await refused(["train", "--lr-gamma", "0"], /--lr-gamma must be a number in \(0, 1\], got "0"/);
    await refused(["train", "--lr-gamma", "1.5"], /--lr-gamma must be a number in \(0, 1\]/);
    await refused(["train", "--warmup", "150%"], /--warmup must be steps in 0\.\.100000000 or a percentage of the run's steps in 0%\.\.100%/);
    await refused(["train", "--warmup", "-1"], /--warmup must be steps/);
    await refused(["train", "--augment", "rotate"], /--augment "rotate" is invalid: allowed choices are none, crop-flip/);
    await refused(["train", "--augment-pad", "65"], /--augment-pad must be an integer in 0\.\.64/);
    await refused(["train", "--label-smoothing", "1"], /--label-smoothing must be a number in \[0, 1\), got "1"/);
    await refused(["train", "--label-smoothing", "-0.1"], /--label-smoothing must be a number in \[0, 1\)/);
    await refused(["train", "--nesterov", "--momentum", "0"], /--nesterov needs --momentum > 0/);
    await refused(["sweep", "--nesterov", "--momentum", "0"], /--nesterov needs --momentum > 0/);
    await refused(["sweep", "--label-smoothing", "2"], /--label-smoothing must be a number in \[0, 1\)/);
    // 64 samples / (2 × 4) = 8 steps: 50% and 55% are both step 4.
    await refused(["train", "--workers", "2", "--batch", "4", "--model", "mlp", "--train-size", "64", "--lr-schedule", "step", "--lr-milestones", "50%,55%"], /--lr-milestones must increase; they fall at steps 4, 4 of this run's 8/);
  }, 240_000);

  it("runs a sweep with the recipe on every cell: recorded in sweep.json and every run's checkpoint, the rate of each step in metrics.jsonl", async () => {
    const out = join(TMP, "sweep");
    const r = await runCli(
      ["sweep", "--transport", "thread", "--workers", "2", "--batches", "2,4", "--norms", "sync", "--model", "mlp", "--steps", "4", "--train-size", "64", "--test-size", "16", "--lr", "0.1", ...RECIPE_FLAGS, "--out", out],
      { timeoutMs: 120_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/per step: step at 50%,75% ×0\.2, linear warm-up 2/);
    const sweep = JSON.parse(readFileSync(join(out, "sweep.json"), "utf8")) as { grid: Record<string, unknown> };
    expect(sweep.grid).toMatchObject({ lrSchedule: "step", lrMilestones: [{ percent: 50 }, { percent: 75 }], lrGamma: 0.2, augment: "crop-flip", augmentPad: 3, labelSmoothing: 0.1, nesterov: true });
    for (const b of [2, 4]) {
      const dir = join(out, "runs", `sync-b${b}-s1`);
      const training = JSON.parse(readCheckpoint(join(dir, "checkpoint.bin")).header.training) as Record<string, unknown>;
      expect(training).toMatchObject({ lrSchedule: "step", augment: "crop-flip", labelSmoothing: 0.1, nesterov: true });
      const lrs = readFileSync(join(dir, "metrics.jsonl"), "utf8").split("\n").filter((l) => l.includes('"type":"step"')).map((l) => (JSON.parse(l) as { lr: number }).lr);
      // 4 steps: warm-up 2 (0.05, then 0.1), ×0.2 from step 2 (50%) and again from step 3 (75%).
      expect(lrs.map((v) => Number(v.toPrecision(12)))).toEqual([0.05, 0.1, 0.02, 0.004]);
    }
    // The same folder with another recipe is refused, naming the setting.
    const again = await runCli(["sweep", "--transport", "thread", "--workers", "2", "--batches", "2", "--norms", "sync", "--model", "mlp", "--steps", "4", "--train-size", "64", "--test-size", "16", "--lr", "0.1", "--out", out], { timeoutMs: 60_000 });
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/other shared settings \(.*lrSchedule was "step", now "constant"/);
  }, 150_000);
});

