// The default layout (cli/layout.ts): training FLOPs from a model's layer shapes,
// threads with ranks packed to the cores for small steps, one process per rank for
// big ones, explicit flags kept; and a default run against the old default (one
// process per rank), bit for bit, with the choice printed and recorded.

import { mkdtempSync, readFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { chooseLayout, forwardFlopsPerSample, trainFlopsPerSample, THREADS_BELOW_FLOPS_PER_RANK_STEP } from "../cli/layout.js";
import { parseNorm, TORCH_CONVENTIONS } from "../shared/config.js";
import { buildModel, type ModelKind } from "../worker/nn/model.js";
import { runCli } from "./helpers.js";

const model = (kind: ModelKind, inShape: number[]) =>
  buildModel({ kind, inShape, classes: 10, norm: parseNorm("sync"), conventions: TORCH_CONVENTIONS, sync: null, seed: 1 });

const FASHION = [1, 28, 28];
const CIFAR = [3, 32, 32];
const none = { needsProcesses: null };

describe("FLOPs of a model from its layer shapes", () => {
  it("counts 2 per multiply-add of cnn's convolutions and linear layers on 28×28 images, and 3 forwards for a training step", () => {
    // conv1 1→16 3×3 at 28×28, conv2 16→32 3×3 at 14×14, fc1 32·7·7→64, fc2 64→10.
    const expected = 2 * (16 * 1 * 9 * 28 * 28 + 32 * 16 * 9 * 14 * 14 + 32 * 7 * 7 * 64 + 64 * 10);
    const m = model("cnn", FASHION);
    expect(forwardFlopsPerSample(m)).toBe(expected);
    expect(trainFlopsPerSample(m)).toBe(3 * expected);
  });

  it("counts mlp's three linear layers", () => {
    expect(forwardFlopsPerSample(model("mlp", FASHION))).toBe(2 * (784 * 256 + 256 * 128 + 128 * 10));
  });

  it("puts resnet:3 (ResNet-20) on 32×32 images near its published 41 MFLOP multiply-adds per sample", () => {
    const macs = forwardFlopsPerSample(model("resnet:3", CIFAR)) / 2;
    expect(macs).toBeGreaterThan(39e6);
    expect(macs).toBeLessThan(43e6);
  });
});

describe("the default layout", () => {
  it("runs cnn × 8 on 4 ranks as 2 threads × 2 ranks on 2 cores, and says why", () => {
    const l = chooseLayout(none, 4, "sync", trainFlopsPerSample(model("cnn", FASHION)), 8, 2);
    expect(l).toMatchObject({ transport: "thread", ranksPerProc: 2 });
    expect(l.description).toMatch(/^2 threads × 2 ranks \(auto: 6\.7 MFLOP\/sample × 8 = 53\.6 MFLOP per rank-step, below 16\.0 GFLOP: threads/);
  });

  it("runs resnet:3 at 32 samples per rank on threads, and keeps one process per rank from 16 GFLOP per rank-step (packing above 8 ranks as before)", () => {
    const flops = trainFlopsPerSample(model("resnet:3", CIFAR));
    expect(flops * 32).toBeLessThan(THREADS_BELOW_FLOPS_PER_RANK_STEP);
    expect(chooseLayout(none, 4, "sync", flops, 32, 2)).toMatchObject({ transport: "thread", ranksPerProc: 2 });
    expect(flops * 96).toBeGreaterThan(THREADS_BELOW_FLOPS_PER_RANK_STEP);
    const l = chooseLayout(none, 4, "sync", flops, 96, 2);
    expect(l).toMatchObject({ transport: "process", ranksPerProc: 1 });
    expect(l.description).toMatch(/^4 processes × 1 rank \(auto: .* GFLOP per rank-step, from 16\.0 GFLOP: compute-bound, one process per rank\)$/);
    expect(chooseLayout(none, 16, "sync", flops, 96, 2)).toMatchObject({ transport: "process", ranksPerProc: 8 });
  });

  it("packs threads without splitting a group:K group (6 ranks of group:2 on 2 cores: 4 + 2, not 3 + 3)", () => {
    expect(chooseLayout(none, 6, "group:2", 1e6, 8, 2)).toMatchObject({ transport: "thread", ranksPerProc: 4 });
    expect(chooseLayout(none, 6, "group:2", 1e6, 8, 2).description).toMatch(/^2 threads × 4 ranks \(the last 2\)/);
  });

  it("takes --transport and --ranks-per-proc as given, deciding only the one not given", () => {
    const small = 1e6;
    expect(chooseLayout({ ...none, transport: "process" }, 4, "sync", small, 8, 2)).toMatchObject({ transport: "process", ranksPerProc: 1 });
    expect(chooseLayout({ ...none, ranksPerProc: 1 }, 4, "sync", small, 8, 2)).toMatchObject({ transport: "thread", ranksPerProc: 1 });
    expect(chooseLayout({ ...none, transport: "thread" }, 4, "sync", 1e9, 32, 2)).toMatchObject({ transport: "thread", ranksPerProc: 1 });
    const given = chooseLayout({ ...none, transport: "process", ranksPerProc: 4 }, 4, "sync", small, 8, 2);
    expect(given).toEqual({ transport: "process", ranksPerProc: 4, description: "1 process × 4 ranks (as given)" });
    expect(() => chooseLayout({ ...none, ranksPerProc: 3 }, 4, "group:2", small, 8, 2)).toThrow(/splits a --norm group:2 group of 2 ranks/);
  });

  it("takes one process per rank when the run needs processes, whatever its size", () => {
    const l = chooseLayout({ needsProcesses: "--on-worker-loss continue" }, 4, "sync", 1e6, 8, 2);
    expect(l).toMatchObject({ transport: "process", ranksPerProc: 1 });
    expect(l.description).toContain("worker processes for --on-worker-loss continue");
  });
});

describe("a default run", () => {
  it("prints and records its layout, and ends with the weights of one process per rank, bit for bit", async () => {
    const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-layout-${p}-`));
    const args = ["train", "--model", "cnn", "--workers", "4", "--batch", "4", "--steps", "8", "--train-size", "256", "--test-size", "32", "--seed", "7"];
    const dirs = { auto: tmp("auto"), old: tmp("old") };
    const [auto, old] = await Promise.all([
      runCli([...args, "--out", dirs.auto], { timeoutMs: 120_000 }),
      runCli([...args, "--out", dirs.old, "--transport", "process", "--ranks-per-proc", "1"], { timeoutMs: 120_000 }),
    ]);
    expect(auto.code, auto.stderr).toBe(0);
    expect(old.code, old.stderr).toBe(0);
    const cores = availableParallelism();
    const perThread = Math.ceil(4 / cores);
    const threads = Math.ceil(4 / perThread);
    const line = `layout: ${threads} thread${threads > 1 ? "s" : ""} × ${perThread} rank${perThread > 1 ? "s" : ""} (auto: 6.7 MFLOP/sample × 4 = 26.8 MFLOP per rank-step`;
    expect(auto.stdout).toContain(line);
    expect(old.stdout).toContain("layout: 4 processes × 1 rank (as given)");
    const settings = (d: string): Record<string, unknown> => (JSON.parse(readFileSync(join(d, "summary.json"), "utf8")) as { settings: Record<string, unknown> }).settings;
    expect(settings(dirs.auto)).toMatchObject({ transport: "thread", ranksPerProcess: perThread });
    expect(settings(dirs.auto).layout).toBe(/^layout: (.*)$/m.exec(auto.stdout)?.[1]);
    expect(settings(dirs.old)).toMatchObject({ transport: "process", ranksPerProcess: 1, layout: "4 processes × 1 rank (as given)" });
    const weights = (d: string): Buffer => readFileSync(join(d, "weights.safetensors"));
    expect(weights(dirs.auto).equals(weights(dirs.old)), "the default layout's weights differ from one process per rank").toBe(true);
  }, 180_000);
});
