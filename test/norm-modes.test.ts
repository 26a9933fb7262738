// Tests for the normalization modes beyond sync/local BN (DESIGN.md §4): ghost BN,
// batch renorm and GroupNorm against naive float64 twins and central differences
// of those twins, the equivalences that define them (ghost:batch = local, renorm
// with rMax = 1, dMax = 0 = BN, group:W = sync and group:1 = local through real
// processes), and the model builder for every mode. PreciseBN is in precise.test.ts.

import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TORCH_CONVENTIONS, parseNorm, type BnConventions } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { Rng } from "../shared/rng.js";
import { readCheckpoint, type Checkpoint } from "../worker/checkpoint.js";
import { BatchNorm } from "../worker/nn/batchnorm.js";
import { GhostBatchNorm } from "../worker/nn/ghost.js";
import { GroupNorm } from "../worker/nn/groupnorm.js";
import type { Layer } from "../worker/nn/layer.js";
import { buildModel } from "../worker/nn/model.js";
import { BatchRenorm, renormLimits, type RenormOptions } from "../worker/nn/renorm.js";
import { runCli } from "./helpers.js";

const CONV: BnConventions = TORCH_CONVENTIONS;

function normals(rng: Rng, len: number, mean = 0, scale = 1): Float32Array {
  return Float32Array.from({ length: len }, () => mean + scale * rng.normal());
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** A naive float64 twin of a norm layer's training forward: y from (x, γ, β). */
type Twin = (x: Float64Array, gamma: Float64Array, beta: Float64Array) => Float64Array;

/** One BN over the given element indices of channel data: x̂ = (x − μ)/sqrt(var + eps). */
function normalizeSet(out: Float64Array, x: Float64Array, idx: number[], eps: number): void {
  const mu = idx.reduce((a, i) => a + x[i]!, 0) / idx.length;
  const v = idx.reduce((a, i) => a + (x[i]! - mu) ** 2, 0) / idx.length;
  for (const i of idx) out[i] = (x[i]! - mu) / Math.sqrt(v + eps);
}

/** Indices of channel ch over samples [from, to) of (N, C, S). */
function channelIdx(ch: number, from: number, to: number, c: number, s: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) for (let j = 0; j < s; j++) out.push((i * c + ch) * s + j);
  return out;
}

function affine(xhat: Float64Array, gamma: Float64Array, beta: Float64Array, c: number, s: number): Float64Array {
  const y = new Float64Array(xhat.length);
  for (let k = 0; k < xhat.length; k++) {
    const ch = Math.floor(k / s) % c;
    y[k] = gamma[ch]! * xhat[k]! + beta[ch]!;
  }
  return y;
}

function ghostTwin(n: number, c: number, s: number, g: number, eps: number): Twin {
  return (x, gamma, beta) => {
    const xhat = new Float64Array(x.length);
    for (let from = 0; from < n; from += g) for (let ch = 0; ch < c; ch++) normalizeSet(xhat, x, channelIdx(ch, from, from + g, c, s), eps);
    return affine(xhat, gamma, beta, c, s);
  };
}

/** Batch renorm with r, d held constant (Ioffe 2017: stop_gradient on both). */
function renormTwin(n: number, c: number, s: number, r: Float64Array, d: Float64Array, eps: number): Twin {
  return (x, gamma, beta) => {
    const xhat = new Float64Array(x.length);
    for (let ch = 0; ch < c; ch++) {
      const idx = channelIdx(ch, 0, n, c, s);
      normalizeSet(xhat, x, idx, eps);
      for (const i of idx) xhat[i] = r[ch]! * xhat[i]! + d[ch]!;
    }
    return affine(xhat, gamma, beta, c, s);
  };
}

function groupNormTwin(n: number, c: number, s: number, groups: number, eps: number): Twin {
  return (x, gamma, beta) => {
    const xhat = new Float64Array(x.length);
    const cg = c / groups;
    for (let i = 0; i < n; i++) {
      for (let g = 0; g < groups; g++) {
        const idx: number[] = [];
        for (let ch = g * cg; ch < (g + 1) * cg; ch++) for (let j = 0; j < s; j++) idx.push((i * c + ch) * s + j);
        normalizeSet(xhat, x, idx, eps);
      }
    }
    return affine(xhat, gamma, beta, c, s);
  };
}

interface NormUnderTest extends Layer {
  gamma: { value: Float32Array; grad: Float32Array };
  beta: { value: Float32Array; grad: Float32Array };
}

/**
 * Runs the layer's training forward and backward on L = Σ y·w, then checks y
 * against the twin and dx, dγ, dβ against central differences of the twin's L
 * (float64, step 1e-5, every entry).
 */
async function expectMatchesTwin(layer: NormUnderTest, twinOf: () => Twin, x: Float32Array, n: number, rng: Rng): Promise<void> {
  const y = Float32Array.from(await layer.forward(x, n, true));
  const twin = twinOf(); // after the forward: renorm's r, d are those of this forward
  const w = Float64Array.from(normals(rng, y.length));
  const dx = Float32Array.from(await layer.backward(Float32Array.from(w), n));
  const x64 = Float64Array.from(x);
  const g64 = Float64Array.from(layer.gamma.value);
  const b64 = Float64Array.from(layer.beta.value);
  expect(maxAbsDiff(y, twin(x64, g64, b64))).toBeLessThan(1e-5);
  const loss = (): number => twin(x64, g64, b64).reduce((a, v, i) => a + v * w[i]!, 0);
  const h = 1e-5;
  const check = (v: Float64Array, analytic: Float32Array, what: string): void => {
    for (let i = 0; i < v.length; i++) {
      const orig = v[i]!;
      v[i] = orig + h;
      const up = loss();
      v[i] = orig - h;
      const down = loss();
      v[i] = orig;
      const numeric = (up - down) / (2 * h);
      if (Math.abs(numeric - analytic[i]!) > 1e-4 + 1e-3 * Math.abs(numeric)) {
        expect.fail(`${what}[${i}]: analytic ${analytic[i]} vs numeric ${numeric}`);
      }
    }
  };
  check(x64, dx, "dx");
  check(g64, layer.gamma.grad, "dγ");
  check(b64, layer.beta.grad, "dβ");
}

function randomAffine(layer: NormUnderTest, rng: Rng): void {
  layer.gamma.value.set(normals(rng, layer.gamma.value.length, 1, 0.3));
  layer.beta.value.set(normals(rng, layer.beta.value.length, 0, 0.5));
}

function renormOptions(over: Partial<RenormOptions> = {}): RenormOptions {
  return { rMax: 3, dMax: 5, warmup: 0, clock: null, ...over };
}

/** Forward, backward and running stats of two layers on the same data must agree exactly. */
async function expectSameAsBatchNorm(a: NormUnderTest & { runningMean: Float64Array; runningVar: Float64Array }, bn: BatchNorm, rng: Rng, n: number, per: number): Promise<void> {
  for (let step = 0; step < 3; step++) {
    const x = normals(rng, n * per, 2, 3);
    const dy = normals(rng, n * per);
    const ya = Float32Array.from(await a.forward(x, n, true));
    const yb = Float32Array.from(await bn.forward(x, n, true));
    expect(maxAbsDiff(ya, yb)).toBe(0);
    const dxa = Float32Array.from(await a.backward(dy, n));
    const dxb = Float32Array.from(await bn.backward(dy, n));
    expect(maxAbsDiff(dxa, dxb)).toBe(0);
    expect(maxAbsDiff(a.gamma.grad, bn.gamma.grad)).toBe(0);
    expect(maxAbsDiff(a.beta.grad, bn.beta.grad)).toBe(0);
    expect(maxAbsDiff(a.runningMean, bn.runningMean)).toBe(0);
    expect(maxAbsDiff(a.runningVar, bn.runningVar)).toBe(0);
  }
}

describe("ghost batch norm (ghost:G)", () => {
  it("normalizes each ghost batch of G samples with its own statistics, and its dx, dγ, dβ match finite differences", async () => {
    const rng = new Rng(21);
    const [n, c, h, w, g] = [6, 3, 2, 2, 2];
    const layer = new GhostBatchNorm("bn", 0, [c, h, w], CONV, g);
    randomAffine(layer, rng);
    await expectMatchesTwin(layer, () => ghostTwin(n, c, h * w, g, CONV.eps), normals(rng, n * c * h * w, 1, 2), n, rng);
  });

  it("matches finite differences on (N, C) input with ghost batches of 2 samples", async () => {
    const rng = new Rng(22);
    const [n, c, g] = [8, 5, 2];
    const layer = new GhostBatchNorm("bn", 0, [c], CONV, g);
    randomAffine(layer, rng);
    await expectMatchesTwin(layer, () => ghostTwin(n, c, 1, g, CONV.eps), normals(rng, n * c), n, rng);
  });

  it("equals local BN bit for bit when G is the whole per-worker batch", async () => {
    const rng = new Rng(23);
    const [n, c, s] = [4, 3, 5];
    const ghost = new GhostBatchNorm("bn", 0, [c, s], CONV, n);
    const bn = new BatchNorm("bn", 0, [c, s], CONV, null);
    randomAffine(ghost, rng);
    bn.gamma.value.set(ghost.gamma.value);
    bn.beta.value.set(ghost.beta.value);
    await expectSameAsBatchNorm(ghost, bn, rng, n, c * s);
  });

  it("updates the running statistics once per step from the mean of the ghost batches' means and variances (Keras virtual_batch_size)", async () => {
    const rng = new Rng(24);
    const [n, c, g] = [6, 2, 3];
    const conv: BnConventions = { ...CONV, momentum: 0.25 };
    const layer = new GhostBatchNorm("bn", 0, [c], conv, g);
    const x = normals(rng, n * c, 1, 2);
    await layer.forward(x, n, true);
    expect(layer.tracked).toBe(1);
    for (let ch = 0; ch < c; ch++) {
      let meanOfMeans = 0;
      let meanOfVars = 0;
      for (let from = 0; from < n; from += g) {
        const vals = Array.from({ length: g }, (_, i) => x[(from + i) * c + ch]!);
        const mu = vals.reduce((a, v) => a + v, 0) / g;
        meanOfMeans += mu / (n / g);
        meanOfVars += vals.reduce((a, v) => a + (v - mu) ** 2, 0) / g / (n / g);
      }
      expect(layer.runningMean[ch]).toBeCloseTo(0.25 * meanOfMeans, 12);
      // torch convention: unbiased with the ghost batch's count G.
      expect(layer.runningVar[ch]).toBeCloseTo(0.75 + 0.25 * meanOfVars * (g / (g - 1)), 12);
    }
  });

  it("runs eval batches of any size with the running statistics", async () => {
    const layer = new GhostBatchNorm("bn", 0, [2], CONV, 4);
    layer.runningMean.set([1, -1]);
    layer.runningVar.set([4, 0.25]);
    const y = await layer.forward(Float32Array.of(3, 0, 1, -1, 5, -2), 3, false);
    const k0 = 1 / Math.sqrt(4 + CONV.eps), k1 = 1 / Math.sqrt(0.25 + CONV.eps);
    expect(maxAbsDiff(y, [2 * k0, 1 * k1, 0, 0, 4 * k0, -1 * k1])).toBeLessThan(1e-6);
  });

  it("refuses a training batch that G does not divide, and a (N, C) ghost batch of one sample, with BadConfig errors", () => {
    const layer = new GhostBatchNorm("bn", 0, [2], CONV, 4);
    expect(() => layer.forward(new Float32Array(12), 6, true)).toThrow(/ghost:4 needs G to divide the per-worker batch, got a training batch of 6/);
    const make = (): GhostBatchNorm => new GhostBatchNorm("bn2", 1, [8], CONV, 1);
    expect(make).toThrow(SyncbnError);
    expect(make).toThrow(/layer bn2 has \(N, 8\) input.*use G ≥ 2/);
  });
});

describe("batch renormalization (renorm)", () => {
  it("matches finite differences with r and d held constant (Ioffe 2017) when both are clipped", async () => {
    const rng = new Rng(31);
    const [n, c, h, w] = [4, 3, 2, 2];
    const layer = new BatchRenorm("bn", 0, [c, h, w], CONV, renormOptions({ rMax: 1.5, dMax: 0.5 }));
    randomAffine(layer, rng);
    const x = normals(rng, n * c * h * w, 1, 2);
    // Moving statistics far from the batch's in channel 0 (r and d clip), near them in channel 2 (neither clips).
    const ch2 = channelIdx(2, 0, n, c, h * w).map((i) => x[i]!);
    const mu2 = ch2.reduce((a, v) => a + v, 0) / ch2.length;
    const var2 = ch2.reduce((a, v) => a + (v - mu2) ** 2, 0) / ch2.length;
    layer.runningMean.set([3, 0.2, mu2 - 0.3]);
    layer.runningVar.set([0.1, 1, 1.4 * var2]);
    await expectMatchesTwin(layer, () => renormTwin(n, c, h * w, Float64Array.from(layer.lastR), Float64Array.from(layer.lastD), CONV.eps), x, n, rng);
    expect(layer.lastR[0]).toBe(1.5);
    expect(layer.lastD[0]).toBe(-0.5);
    expect(Math.abs(layer.lastR[2]! - 1)).toBeLessThan(0.5);
    expect(Math.abs(layer.lastD[2]!)).toBeLessThan(0.5);
  });

  it("computes r = σB/σ and d = (μB − μ)/σ from the moving statistics before this step's update", async () => {
    const layer = new BatchRenorm("bn", 0, [1], CONV, renormOptions());
    layer.runningMean.set([1]);
    layer.runningVar.set([4 - CONV.eps]); // σ = 2
    await layer.forward(Float32Array.of(0, 2, 4, 6), 4, true); // μB = 3, varB = 5
    expect(layer.lastR[0]).toBeCloseTo(Math.sqrt(5 + CONV.eps) / 2, 12);
    expect(layer.lastD[0]).toBeCloseTo((3 - 1) / 2, 12);
    // Then the usual update, torch style: m = 0.1, unbiased var 20/3.
    expect(layer.runningMean[0]).toBeCloseTo(0.9 * 1 + 0.1 * 3, 12);
    expect(layer.runningVar[0]).toBeCloseTo(0.9 * (4 - CONV.eps) + 0.1 * (20 / 3), 12);
  });

  it("equals plain BN in training, bit for bit, when rMax = 1 and dMax = 0", async () => {
    const rng = new Rng(32);
    const [n, c, s] = [5, 4, 3];
    const renorm = new BatchRenorm("bn", 0, [c, s], CONV, renormOptions({ rMax: 1, dMax: 0 }));
    const bn = new BatchNorm("bn", 0, [c, s], CONV, null);
    randomAffine(renorm, rng);
    bn.gamma.value.set(renorm.gamma.value);
    bn.beta.value.set(renorm.beta.value);
    await expectSameAsBatchNorm(renorm, bn, rng, n, c * s);
  });

  it("relaxes the clips linearly from (1, 0) at step 0 to (rMax, dMax) at the end of the warm-up, reading the step from its clock", async () => {
    const o = { rMax: 3, dMax: 5, warmup: 100 };
    expect(renormLimits(o, 0)).toEqual({ rMax: 1, dMax: 0 });
    expect(renormLimits(o, 50)).toEqual({ rMax: 2, dMax: 2.5 });
    expect(renormLimits(o, 100)).toEqual({ rMax: 3, dMax: 5 });
    expect(renormLimits(o, 1000)).toEqual({ rMax: 3, dMax: 5 });
    expect(renormLimits({ ...o, warmup: 0 }, 0)).toEqual({ rMax: 3, dMax: 5 });
    const clock = { step: 0 };
    const layer = new BatchRenorm("bn", 0, [1], CONV, renormOptions({ ...o, clock }));
    layer.runningMean.set([1000]); // 10σ away, σ ≫ σB: r and d sit on their clips
    layer.runningVar.set([1e4]);
    const x = Float32Array.of(0, 1, 2, 3);
    await layer.forward(x, 4, true);
    expect(layer.lastR[0]).toBe(1);
    expect(Math.abs(layer.lastD[0]!)).toBe(0);
    clock.step = 50;
    layer.runningMean.set([1000]); // undo the first step's update
    layer.runningVar.set([1e4]);
    await layer.forward(x, 4, true);
    expect([layer.lastR[0], layer.lastD[0]]).toEqual([0.5, -2.5]);
  });

  it("uses the moving statistics in eval mode", async () => {
    const layer = new BatchRenorm("bn", 0, [1], CONV, renormOptions());
    layer.runningMean.set([2]);
    layer.runningVar.set([9]);
    const y = await layer.forward(Float32Array.of(5, -1), 2, false);
    expect(maxAbsDiff(y, [3 / Math.sqrt(9 + CONV.eps), -3 / Math.sqrt(9 + CONV.eps)])).toBeLessThan(1e-6);
  });
});

describe("group normalization (groupnorm:G)", () => {
  it("normalizes each sample's channel groups over channels × H·W, and its dx, dγ, dβ match finite differences", async () => {
    const rng = new Rng(41);
    const [n, c, h, w, groups] = [3, 6, 2, 3, 3];
    const layer = new GroupNorm("gn", [c, h, w], groups, CONV.eps);
    randomAffine(layer, rng);
    await expectMatchesTwin(layer, () => groupNormTwin(n, c, h * w, groups, CONV.eps), normals(rng, n * c * h * w, 3, 2), n, rng);
  });

  it("groups the features of (N, C) input and matches finite differences there too", async () => {
    const rng = new Rng(42);
    const [n, c, groups] = [2, 8, 2];
    const layer = new GroupNorm("gn", [c], groups, CONV.eps);
    randomAffine(layer, rng);
    await expectMatchesTwin(layer, () => groupNormTwin(n, c, 1, groups, CONV.eps), normals(rng, n * c), n, rng);
  });

  it("gives each sample the same output in training and eval, alone or in a batch", async () => {
    const rng = new Rng(43);
    const layer = new GroupNorm("gn", [4, 3], 2, CONV.eps);
    randomAffine(layer, rng);
    const x = normals(rng, 3 * 12, 1, 3);
    const train = Float32Array.from(await layer.forward(x, 3, true));
    const evalY = Float32Array.from(await layer.forward(x, 3, false));
    const alone = Float32Array.from(await layer.forward(x.subarray(12, 24), 1, false));
    expect(maxAbsDiff(train, evalY)).toBe(0);
    expect(maxAbsDiff(alone, train.subarray(12, 24))).toBe(0);
  });

  it("refuses G that does not divide C with a BadConfig error naming the layer and C", () => {
    const make = (): GroupNorm => new GroupNorm("bn2", [12, 4, 4], 5, CONV.eps);
    expect(make).toThrow(SyncbnError);
    expect(make).toThrow(/groupnorm:5: layer bn2 has C = 12 channels.*1, 2, 3, 4, 6, 12/);
    try {
      make();
    } catch (e) {
      expect((e as SyncbnError).code).toBe(ErrorCode.BadConfig);
    }
  });
});

describe("model builder", () => {
  const build = (kind: "mlp" | "cnn", norm: string) =>
    buildModel({
      kind,
      inShape: [1, 28, 28],
      classes: 10,
      norm: parseNorm(norm),
      conventions: CONV,
      sync: null,
      seed: 1,
      renorm: renormOptions(),
    });

  it("puts the layer of every --norm mode where the reference models have BN; only layers with running statistics are bnLayers", () => {
    const expectKinds = (kind: "mlp" | "cnn", norm: string, cls: unknown, bnLayers: number, normLayers: number): void => {
      const m = build(kind, norm);
      expect(m.layers.filter((l) => l instanceof (cls as typeof BatchNorm)).length, `${kind} ${norm}`).toBe(normLayers);
      expect(m.bnLayers.length, `${kind} ${norm}`).toBe(bnLayers);
    };
    for (const [kind, count] of [["mlp", 2], ["cnn", 3]] as const) {
      expectKinds(kind, "sync", BatchNorm, count, count);
      expectKinds(kind, "local", BatchNorm, count, count);
      expectKinds(kind, "group:2", BatchNorm, count, count);
      expectKinds(kind, "ghost:2", GhostBatchNorm, count, count);
      expectKinds(kind, "renorm", BatchRenorm, count, count);
      expectKinds(kind, "groupnorm:8", GroupNorm, 0, count);
      const none = build(kind, "none");
      expect(none.bnLayers.length).toBe(0);
      expect(none.layers.map((l) => l.name).filter((n) => n.startsWith("bn"))).toEqual([]);
    }
    expect(build("cnn", "ghost:2").bnLayers.map((l) => [l.name, l.channels, l.spatial])).toEqual([["bn1", 16, 784], ["bn2", 32, 196], ["bn3", 64, 1]]);
  });

  it("refuses groupnorm:G when G does not divide some norm layer's channels", () => {
    expect(() => build("cnn", "groupnorm:32")).toThrow(/layer bn1 has C = 16 channels/);
  });
});

describe("group:K through real processes", () => {
  const TRAIN = ["--model", "mlp", "--train-size", "512", "--test-size", "128", "--batch", "4", "--steps", "6", "--checksum-every", "1"];

  async function trainCheckpoint(norm: string, workers: number): Promise<Checkpoint> {
    const out = mkdtempSync(join(tmpdir(), "syncbn-norm-"));
    const r = await runCli(["train", "--workers", String(workers), "--norm", norm, ...TRAIN, "--out", out]);
    expect(r.code, `--norm ${norm}:\n${r.stdout}\n${r.stderr}`).toBe(0);
    return readCheckpoint(join(out, "checkpoint.bin"));
  }

  function expectSameState(a: Checkpoint, b: Checkpoint): void {
    expect(a.params.length).toBe(b.params.length);
    a.params.forEach((p, i) => expect(maxAbsDiff(p, b.params[i]!), a.header.params[i]!.name).toBe(0));
    a.bn.forEach((s, i) => {
      expect(maxAbsDiff(s.mean, b.bn[i]!.mean)).toBe(0);
      expect(maxAbsDiff(s.var, b.bn[i]!.var)).toBe(0);
    });
  }

  it("gives the parameters of sync with K = W and of local with K = 1, bit for bit (4 workers)", async () => {
    const [group4, sync, group1, local] = [
      await trainCheckpoint("group:4", 4),
      await trainCheckpoint("sync", 4),
      await trainCheckpoint("group:1", 4),
      await trainCheckpoint("local", 4),
    ];
    expectSameState(group4, sync);
    expectSameState(group1, local);
    // The comparison can fail: sync and local training do differ.
    expect(maxAbsDiff(sync.params[0]!, local.params[0]!)).toBeGreaterThan(1e-6);
  });
});
