// Tests for PreciseBN (--eval-stats precise, worker/precise.ts): the collected
// statistics are the exact population statistics of each layer's inputs, the
// gathered payload merges exactly across a statistics group, and end to end it
// changes evaluation but not training. Not a test of the ema path or of BN itself.

import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TORCH_CONVENTIONS, parseNorm } from "../shared/config.js";
import { Rng } from "../shared/rng.js";
import { emptyMoments, localMoments, type Moments } from "../shared/stats.js";
import { readCheckpoint, type Checkpoint } from "../worker/checkpoint.js";
import { describeEvalStatistics } from "../worker/evaluate.js";
import { BatchNorm } from "../worker/nn/batchnorm.js";
import type { Layer } from "../worker/nn/layer.js";
import { buildModel, type Model } from "../worker/nn/model.js";
import { collectMoments, mergeSlots, packSlot, setPopulationStats, slotSize } from "../worker/precise.js";
import { runCli } from "./helpers.js";

function normals(rng: Rng, len: number, mean = 0, scale = 1): Float32Array {
  return Float32Array.from({ length: len }, () => mean + scale * rng.normal());
}

/** Exact mean and biased variance per channel of (N, C, S) values, naive float64. */
function exactStats(x: ArrayLike<number>, n: number, c: number, s: number): { mean: number[]; var: number[] } {
  const mean: number[] = [];
  const variance: number[] = [];
  for (let ch = 0; ch < c; ch++) {
    const vals: number[] = [];
    for (let i = 0; i < n; i++) for (let j = 0; j < s; j++) vals.push(x[(i * c + ch) * s + j]!);
    const mu = vals.reduce((a, v) => a + v, 0) / vals.length;
    mean.push(mu);
    variance.push(vals.reduce((a, v) => a + (v - mu) ** 2, 0) / vals.length);
  }
  return { mean, var: variance };
}

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rel: number, what: string): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < actual.length; i++) {
    const tol = rel * Math.max(1, Math.abs(expected[i]!));
    if (Math.abs(actual[i]! - expected[i]!) > tol) expect.fail(`${what}[${i}]: ${actual[i]} vs exact ${expected[i]}`);
  }
}

/** Eval-mode forward of all samples through the layers before `stop`. */
async function inputOf(model: Model, stop: Layer, x: Float32Array, n: number): Promise<Float32Array> {
  let h = x;
  for (const l of model.layers) {
    if (l === stop) return Float32Array.from(h);
    h = await l.forward(h, n, false);
  }
  throw new Error("layer not in model");
}

function randomizeNorms(model: Model, rng: Rng): void {
  for (const l of model.bnLayers) {
    const bn = l as unknown as BatchNorm;
    bn.gamma.value.set(normals(rng, l.channels, 1, 0.3));
    bn.beta.value.set(normals(rng, l.channels, 0, 0.3));
    l.runningMean.set(normals(rng, l.channels, 0, 5)); // an EMA that is far off
    l.runningVar.fill(7);
  }
}

describe("PreciseBN statistics", () => {
  for (const [kind, inShape, norm] of [["mlp", [1, 4, 4], "local"], ["cnn", [1, 8, 8], "ghost:3"]] as const) {
    it(`sets every ${kind} norm layer to the exact population mean and variance of its inputs over the collected batches (--norm ${norm})`, async () => {
      const rng = new Rng(5);
      const model = buildModel({ kind, inShape, classes: 10, norm: parseNorm(norm), conventions: TORCH_CONVENTIONS, sync: null, seed: 3 });
      randomizeNorms(model, rng);
      const per = (inShape as readonly number[]).reduce((a, b) => a * b, 1);
      const [batches, B] = [4, 3];
      const all = normals(rng, batches * B * per, 0.5, 1); // (batches·B, ...inShape)
      const fill = (x: Float32Array, b: number): void => x.set(all.subarray(b * B * per, (b + 1) * B * per));
      const moments = await collectMoments(model, batches, B, fill, per, true);
      // Layer by layer: the exact statistics of all batches' inputs, with the layers
      // before it in eval mode on their (already checked) precise statistics.
      for (const [i, l] of model.bnLayers.entries()) {
        const h = await inputOf(model, l, all, batches * B);
        const exact = exactStats(h, batches * B, l.channels, l.spatial);
        const n = batches * B * l.spatial;
        expect(moments[i]!.count).toBe(n);
        expectClose(l.runningMean, exact.mean, 1e-9, `${l.name} mean`);
        expectClose(l.runningVar, exact.var.map((v) => (v * n) / (n - 1)), 1e-9, `${l.name} var`);
      }
    });
  }

  it("merges the gathered slots of a statistics group exactly into the statistics of all its members' values, even with |mean| ≫ std", () => {
    const rng = new Rng(9);
    const layers = [new BatchNorm("bn1", 0, [3, 2], TORCH_CONVENTIONS, null), new BatchNorm("bn2", 1, [2], TORCH_CONVENTIONS, null)];
    const size = slotSize(layers);
    expect(size).toBe(1 + 6 + 1 + 4);
    const members = 3;
    const sizes = [5, 0, 2]; // rank 1 has no samples: it contributes nothing
    const data = sizes.map((n) => layers.map((l) => normals(rng, n * l.channels * l.spatial, 1e4, 1)));
    // Each rank packs its slot; the coordinator sums the payloads elementwise in rank order.
    const sum = new Float64Array(members * size);
    sizes.forEach((n, r) => {
      const payload = new Float64Array(members * size);
      const moments = layers.map((l, i) => localMoments(emptyMoments(l.channels), data[r]![i]!, n, l.channels, l.spatial));
      packSlot(payload, r * size, moments);
      for (let k = 0; k < sum.length; k++) sum[k]! += payload[k]!;
    });
    const merged = mergeSlots(sum, members, layers);
    layers.forEach((l, i) => {
      const total = sizes.reduce((a, b) => a + b, 0);
      const concat = Float32Array.from(sizes.flatMap((_, r) => Array.from(data[r]![i]!)));
      const exact = exactStats(concat, total, l.channels, l.spatial);
      expect(merged[i]!.count).toBe(total * l.spatial);
      expectClose(merged[i]!.mean, exact.mean, 1e-12, `${l.name} mean`);
      expectClose(Array.from(merged[i]!.m2, (m) => m / merged[i]!.count), exact.var, 1e-9, `${l.name} var`);
    });
    // One member (local, ghost, renorm): rank 0's statistics alone.
    const rank0 = mergeSlots(sum, 1, layers);
    expectClose(rank0[0]!.mean, exactStats(data[0]![0]!, 5, 3, 2).mean, 1e-12, "rank 0 mean");
  });

  it("stores M2/(n−1) with unbiasedRunningVar and M2/n without, and leaves a layer with no values alone", () => {
    const bn = new BatchNorm("bn", 0, [1], TORCH_CONVENTIONS, null);
    const m: Moments = { count: 4, mean: Float64Array.of(2), m2: Float64Array.of(12) };
    setPopulationStats(bn, m, true);
    expect([bn.runningMean[0], bn.runningVar[0]]).toEqual([2, 4]);
    setPopulationStats(bn, m, false);
    expect(bn.runningVar[0]).toBe(3);
    setPopulationStats(bn, emptyMoments(1), true);
    expect([bn.runningMean[0], bn.runningVar[0]]).toEqual([2, 3]);
  });
});

describe("the summary's eval-statistics line", () => {
  it("names PreciseBN and whose statistics eval used, or says the mode keeps none", () => {
    const line = (norm: string, stats: "ema" | "precise"): string => describeEvalStatistics(parseNorm(norm), stats, 20, 8);
    expect(line("sync", "precise")).toBe("PreciseBN: population statistics of 20 training batches × 8 samples per worker, merged over all workers, recomputed before each eval with weights frozen");
    expect(line("group:2", "precise")).toContain("merged over rank 0's group of 2 workers");
    expect(line("renorm", "precise")).toContain("of rank 0 (statistics differ per worker");
    expect(line("ghost:2", "ema")).toContain("running averages (ema) of rank 0");
    expect(line("sync", "ema")).toBe("running averages (ema), identical on every worker");
    expect(line("groupnorm:4", "precise")).toBe("none: this --norm mode keeps no running statistics");
  });
});

describe("--eval-stats precise end to end", () => {
  const TRAIN = ["--workers", "2", "--model", "mlp", "--train-size", "512", "--test-size", "128", "--batch", "4", "--steps", "6", "--eval-every", "3", "--precise-batches", "3"];

  async function train(norm: string, evalStats: string): Promise<{ ck: Checkpoint; testLoss: number; stdout: string }> {
    const out = mkdtempSync(join(tmpdir(), "syncbn-precise-"));
    const r = await runCli(["train", "--norm", norm, "--eval-stats", evalStats, ...TRAIN, "--out", out]);
    expect(r.code, `--norm ${norm} --eval-stats ${evalStats}:\n${r.stdout}\n${r.stderr}`).toBe(0);
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as { testLoss: number };
    return { ck: readCheckpoint(join(out, "checkpoint.bin")), testLoss: summary.testLoss, stdout: r.stdout };
  }

  for (const norm of ["sync", "local"]) {
    it(`evaluates with recomputed statistics and leaves training and the running averages untouched (--norm ${norm}, 2 workers)`, async () => {
      const ema = await train(norm, "ema");
      const precise = await train(norm, "precise");
      expect(precise.stdout.match(/^eval after step \d+/gm)?.length).toBe(2);
      expect(Number.isFinite(precise.testLoss)).toBe(true);
      expect(precise.testLoss).not.toBe(ema.testLoss);
      precise.ck.params.forEach((p, i) => expect(Array.from(p), precise.ck.header.params[i]!.name).toEqual(Array.from(ema.ck.params[i]!)));
      precise.ck.bn.forEach((s, i) => {
        expect(Array.from(s.mean)).toEqual(Array.from(ema.ck.bn[i]!.mean));
        expect(Array.from(s.var)).toEqual(Array.from(ema.ck.bn[i]!.var));
      });
    });
  }
});
