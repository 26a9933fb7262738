// The default study (cli/study-preset.ts): `syncbn sweep --model resnet:3 --data
// fashion-mnist` with no grid or budget flag takes the preset's grid and budget,
// each flag given replaces its own part only, other models and data keep today's
// defaults, the estimate is printed before anything runs (--dry-run stops there),
// and sweep.json and the report record the preset.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DEFAULT_GRID } from "../cli/sweep-grid.js";
import { STUDY_PRESET, applyStudyPreset, presetText } from "../cli/study-preset.js";
import { runCli, scratchDir } from "./helpers.js";

const TMP = scratchDir("study-preset");
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

/** A Fashion-MNIST-shaped folder (uncompressed IDX files) with `train` and `test` 28×28 images. */
function idxFolder(name: string, train: number, test: number): string {
  const dir = join(TMP, name);
  mkdirSync(dir, { recursive: true });
  const idx = (magic: number, dims: number[], fill: (i: number) => number): Buffer => {
    const n = dims.reduce((a, b) => a * b, 1);
    const b = Buffer.alloc(4 + 4 * dims.length + n);
    b.writeUInt32BE(magic, 0);
    dims.forEach((d, i) => b.writeUInt32BE(d, 4 + 4 * i));
    for (let i = 0; i < n; i++) b[4 + 4 * dims.length + i] = fill(i);
    return b;
  };
  for (const [prefix, n] of [["train", train], ["t10k", test]] as const) {
    writeFileSync(join(dir, `${prefix}-images-idx3-ubyte`), idx(0x803, [n, 28, 28], (i) => (i * 7 + (i >> 9)) % 256));
    writeFileSync(join(dir, `${prefix}-labels-idx1-ubyte`), idx(0x801, [n], (i) => (i * 3) % 10));
  }
  return dir;
}

const studyGrid = () => ({ ...structuredClone(DEFAULT_GRID), model: "resnet:3" as const, data: "fashion-mnist" });

describe("the study preset", () => {
  it("sets the whole grid and budget of resnet:3 on fashion-mnist when no flag was given", () => {
    const g = studyGrid();
    const p = applyStudyPreset(g, () => false)!;
    expect(g).toMatchObject({
      workers: 8,
      norms: ["local", "sync", "groupnorm:8", "renorm", "cbn:8"],
      batches: [2, 4, 8, 16, 32],
      seeds: [1, 2, 3],
      epochs: 4,
      steps: null,
      trainSize: null,
      testSize: null,
      lr: 0.2,
      lrRefBatch: 256,
      lrSchedule: "cosine",
      lrWarmup: { percent: 5 },
      augment: "none",
    });
    expect(p.applied).toEqual(STUDY_PRESET);
    expect(p.overriddenBy).toEqual([]);
    expect(presetText(p)).toBe("the default study (resnet:3 on fashion-mnist)");
  });

  it("leaves each part a flag was given for to the flag, and says which", () => {
    const g = { ...studyGrid(), seeds: [7], trainSize: 5000, lr: 0.05 };
    const given = new Set(["seeds", "trainSize", "baseLr"]);
    const p = applyStudyPreset(g, (a) => given.has(a))!;
    expect(g.seeds).toEqual([7]);
    expect(g.trainSize).toBe(5000);
    expect(g.lr).toBe(0.05);
    expect(g.batches).toEqual([2, 4, 8, 16, 32]);
    expect(g.epochs).toBe(4);
    expect(p.overriddenBy).toEqual(["--seeds", "--train-size", "--base-lr"]);
    expect(Object.keys(p.applied)).not.toContain("seeds");
    expect(presetText(p)).toBe("the default study (resnet:3 on fashion-mnist), 9 of its 12 parts (--seeds, --train-size, --base-lr as given)");
  });

  it("does not apply to other models or data, nor when every part was given", () => {
    for (const g of [{ ...studyGrid(), model: "mlp" as const }, { ...studyGrid(), data: "synthetic" }, { ...studyGrid(), model: "resnet:1" as const }]) {
      const before = structuredClone(g);
      expect(applyStudyPreset(g, () => false)).toBeNull();
      expect(g).toEqual(before);
    }
    expect(applyStudyPreset(studyGrid(), () => true)).toBeNull();
  });
});

describe("syncbn sweep --model resnet:3 --data fashion-mnist", () => {
  const fmnist = idxFolder("fmnist", 8192, 1000);
  const env = { SYNCBN_FASHION_MNIST_DIR: fmnist };

  it("announces the study's grid, preset, learning rates, budget and estimated time, and with --dry-run runs and writes nothing", async () => {
    const out = join(TMP, "dry");
    const r = await runCli(["sweep", "--model", "resnet:3", "--data", "fashion-mnist", "--dry-run", "--out", out], { env, timeoutMs: 90_000 });
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split("\n");
    expect(lines[0]).toBe("syncbn sweep: 75 runs = 5 norm modes (local, sync, groupnorm:8, renorm, cbn:8) × 5 per-worker batches (2, 4, 8, 16, 32) × 3 seeds (1, 2, 3); 8 workers, --model resnet:3, --data fashion-mnist");
    expect(lines[1]).toBe("  preset: the default study (resnet:3 on fashion-mnist)");
    expect(r.stdout).toContain("linear scaling, lr = 0.2 × global batch / 256; per step: cosine, linear warm-up 5%");
    expect(r.stdout).toContain("batch 2/worker → lr 0.0125, batch 4/worker → lr 0.025, batch 8/worker → lr 0.05, batch 16/worker → lr 0.1, batch 32/worker → lr 0.2");
    expect(r.stdout).toContain("budget per run: 4 epochs of 60000 training samples");
    const estimate = lines.findIndex((l) => /^ {2}estimated time: (\d+h\d\dm|\d+m\d\ds) on 2 cores/.test(l));
    const dry = lines.findIndex((l) => l.startsWith("dry run: nothing started"));
    expect(estimate).toBeGreaterThan(1);
    expect(dry).toBeGreaterThan(estimate);
    expect(r.stdout).not.toMatch(/^run 1\//m);
    expect(existsSync(out)).toBe(false);
  }, 120_000);

  it("takes the grid flags given and the preset's budget for the rest", async () => {
    const r = await runCli(["sweep", "--model", "resnet:3", "--data", "fashion-mnist", "--batches", "2,32", "--norms", "sync,local", "--seeds", "1", "--dry-run", "--out", join(TMP, "dry2")], { env, timeoutMs: 90_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("4 runs = 2 norm modes (sync, local) × 2 per-worker batches (2, 32) × 1 seed (1); 8 workers");
    expect(r.stdout).toContain("preset: the default study (resnet:3 on fashion-mnist), 9 of its 12 parts (--norms, --batches, --seeds as given)");
    expect(r.stdout).toContain("budget per run: 4 epochs of 60000 training samples");
  }, 120_000);

  it("keeps the mlp default as it was (no preset)", async () => {
    const r = await runCli(["sweep", "--data", "fashion-mnist", "--dry-run", "--out", join(TMP, "dry3")], { env, timeoutMs: 90_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("20 runs = 4 norm modes (local, sync, groupnorm:8, renorm) × 5 per-worker batches (1, 2, 4, 8, 16) × 1 seed (1); 8 workers, --model mlp");
    expect(r.stdout).not.toContain("preset:");
    expect(r.stdout).toContain("budget per run: 1 epoch of 8192 training samples");
  }, 120_000);

  it("records the preset in sweep.json and the report of a real run", async () => {
    const out = join(TMP, "real");
    const small = ["--workers", "2", "--norms", "sync", "--batches", "2", "--seeds", "1", "--epochs", "1", "--train-size", "32", "--test-size", "16"];
    const r = await runCli(["sweep", "--model", "resnet:3", "--data", "fashion-mnist", ...small, "--out", out], { env, timeoutMs: 150_000 });
    expect(r.code, r.stderr).toBe(0);
    const file = JSON.parse(readFileSync(join(out, "sweep.json"), "utf8")) as { grid: Record<string, unknown>; preset: { name: string; applied: Record<string, unknown>; overriddenBy: string[] } };
    expect(file.preset.name).toBe("the default study (resnet:3 on fashion-mnist)");
    expect(file.preset.applied).toEqual({ lr: 0.2, lrRefBatch: 256, lrSchedule: "cosine", lrWarmup: { percent: 5 }, augment: "none" });
    expect(file.preset.overriddenBy).toEqual(["--workers", "--norms", "--batches", "--seeds", "--epochs", "--train-size", "--test-size"]);
    expect(file.grid).toMatchObject({ lrSchedule: "cosine", lr: 0.2, trainSize: 32 });
    const md = readFileSync(join(out, "results.md"), "utf8");
    expect(md).toContain("Preset: the default study (resnet:3 on fashion-mnist), 5 of its 12 parts (--workers, --norms, --batches, --seeds, --epochs, --train-size, --test-size as given).");
    expect(md).toMatch(/Budget adequacy: not checked/);
    expect(readFileSync(join(out, "report.html"), "utf8")).toContain("<tr><th>preset</th><td>the default study (resnet:3 on fashion-mnist), 5 of its 12 parts");
  }, 180_000);
});
