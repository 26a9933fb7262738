// Tests for cross-iteration BN (--norm cbn:K, worker/nn/cbn.ts): seven training
// steps of a conv+CBN+linear+CBN net against a float64 PyTorch reimplementation
// (scripts/make-cbn-fixtures.py), the --norm parser and its one-line refusals,
// the refusal of a norm layer with no conv or linear before it, and the unit
// checks of the window (burn-in, recycling). Real-process runs are in cbn-runs.test.ts.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { MAX_CBN_WINDOW, TORCH_CONVENTIONS, parseNorm } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { Rng } from "../shared/rng.js";
import { CrossIterationBatchNorm } from "../worker/nn/cbn.js";
import { statsProducer } from "../worker/nn/cbn-taylor.js";
import { Conv2d } from "../worker/nn/conv2d.js";
import { Flatten } from "../worker/nn/flatten.js";
import { GraphBuilder, type Graph, type Value } from "../worker/nn/graph.js";
import { KERNEL_BACKENDS, kernelBackend, setKernelBackend } from "../worker/nn/kernels/backend.js";
import type { Param } from "../worker/nn/layer.js";
import { Linear } from "../worker/nn/linear.js";
import { buildModel } from "../worker/nn/model.js";
import { ReLU } from "../worker/nn/relu.js";
import { ROOT } from "./helpers.js";

interface FixtureStep {
  y: number[];
  grads: Record<string, number[]>;
  bn: { running_mean: number[]; running_var: number[]; count: number[] }[];
}
interface Fixture {
  shapes: { n: number; cin: number; c1: number; side: number; f2: number };
  window: number;
  burnin: number;
  lr: number;
  eps: number;
  momentum: number;
  params: Record<string, number[]>;
  batches: number[][];
  targets: number[][];
  steps: FixtureStep[];
  nocomp: number[][];
}

const FIXTURE = JSON.parse(readFileSync(join(ROOT, "test", "fixtures", "cbn", "cbn.json"), "utf8")) as Fixture;

/** max |a − b| / max(1, max |b|): absolute for O(1) values, relative for large ones. */
function scaledDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let d = 0, m = 1;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / m;
}

/** The fixture's net in syncbn layers: conv → CBN → ReLU → flatten → linear → CBN. */
function buildNet(f: Fixture): { graph: Graph; params: Param[]; bns: CrossIterationBatchNorm[] } {
  const { cin, c1, side, f2 } = f.shapes;
  const rng = new Rng(1);
  const g = new GraphBuilder([cin, side, side]);
  const bns: CrossIterationBatchNorm[] = [];
  const cbn = (name: string, v: Value): Value => {
    const l = new CrossIterationBatchNorm(name, bns.length, [...v.shape], { ...TORCH_CONVENTIONS, eps: f.eps, momentum: f.momentum }, statsProducer(name, g.producerOf(v), f.window), {
      window: f.window,
      burnin: f.burnin,
    });
    bns.push(l);
    return g.layer(l, v);
  };
  let v = g.layer(new Conv2d("conv1", cin, c1, 3, 1, 1, side, side, rng), g.input);
  v = g.layer(new ReLU("relu", [c1, side, side]), cbn("bn1", v));
  v = g.layer(new Flatten("flatten", v.shape), v);
  v = cbn("bn2", g.layer(new Linear("fc", c1 * side * side, f2, rng), v));
  const graph = g.finish(v);
  const params = graph.ops.flatMap((op) => op.params());
  for (const p of params) {
    const init = f.params[p.name];
    if (!init) throw new Error(`fixture has no ${p.name}`);
    p.value.set(init);
  }
  return { graph, params, bns };
}

describe("cross-iteration BN against a float64 PyTorch reimplementation", () => {
  // Measured (6 Dec 2026; worst of the two kernel backends): outputs agree to 8.6e-7,
  // gradients to 1.5e-6 (scaled by their largest entry), running statistics to 2.7e-7, over 7 steps. Float32
  // activations and parameters (2^-24 ≈ 6e-8 per rounding) through a conv, two
  // normalizations and seven SGD steps give errors of this size. 1e-4 leaves room
  // for the other kernel backend's summation order, yet is 2,500 times below what
  // dropping the Taylor terms changes (0.25, the nocomp check), and zeroing the
  // bias term alone or the 1/count of dx fails it (2e-2 and 0.7, tried by hand).
  const TOL = 1e-4;

  it.each(KERNEL_BACKENDS)("matches the reference's outputs, gradients, window counts and running statistics at every step (%s kernels)", async (backend) => {
    const f = FIXTURE;
    const before = kernelBackend();
    setKernelBackend(backend);
    const { graph, params, bns } = buildNet(f);
    const built = kernelBackend();
    setKernelBackend(before);
    expect(built, "this runtime cannot run the wasm kernels").toBe(backend);
    const n = f.shapes.n;
    const worst = { y: 0, grad: 0, stats: 0, nocomp: Infinity };
    for (let t = 0; t < f.steps.length; t++) {
      const want = f.steps[t]!;
      const y = await graph.forward(Float32Array.from(f.batches[t]!), n, true);
      worst.y = Math.max(worst.y, scaledDiff(y, want.y));
      // The Taylor terms matter here: without them the outputs move by far more than the tolerance.
      if (t >= 2) worst.nocomp = Math.min(worst.nocomp, scaledDiff(y, f.nocomp[t]!));
      await graph.backward(Float32Array.from(f.targets[t]!), n);
      for (const p of params) {
        const d = scaledDiff(p.grad, want.grads[p.name]!);
        expect(d, `step ${t + 1} grad ${p.name}`).toBeLessThan(TOL);
        worst.grad = Math.max(worst.grad, d);
      }
      bns.forEach((bn, i) => {
        const s = want.bn[i]!;
        // Which past steps each channel kept (ν' ≥ μ'²) is exact, not approximate.
        expect(Array.from(bn.windowCount), `step ${t + 1} ${bn.name} counts`).toEqual(s.count);
        worst.stats = Math.max(worst.stats, scaledDiff(bn.runningMean, s.running_mean), scaledDiff(bn.runningVar, s.running_var));
      });
      for (const p of params) for (let i = 0; i < p.value.length; i++) p.value[i] = Math.fround(p.value[i]! - f.lr * p.grad[i]!);
    }
    console.log(`cbn vs PyTorch float64, ${backend} kernels, ${f.steps.length} steps: max scaled diff y ${worst.y.toExponential(2)}, grads ${worst.grad.toExponential(2)}, running stats ${worst.stats.toExponential(2)}; without Taylor terms y moves ≥ ${worst.nocomp.toExponential(2)}`);
    expect(worst.y).toBeLessThan(TOL);
    expect(worst.stats).toBeLessThan(TOL);
    expect(worst.nocomp).toBeGreaterThan(100 * TOL);
    // The fixture exercises both a kept and a dropped past step.
    const counts = f.steps.flatMap((s) => s.bn.flatMap((b) => b.count));
    expect(new Set(counts)).toEqual(new Set([1, 2, 3]));
  });
});

describe("--norm cbn:K parsing", () => {
  it("accepts cbn:K and cbn:K:B with K in 1..32 and B ≥ 0", () => {
    expect(parseNorm("cbn:4")).toEqual({ kind: "cbn", window: 4, burnin: 0 });
    expect(parseNorm("cbn:1")).toEqual({ kind: "cbn", window: 1, burnin: 0 });
    expect(parseNorm(`cbn:${MAX_CBN_WINDOW}:100`)).toEqual({ kind: "cbn", window: MAX_CBN_WINDOW, burnin: 100 });
    expect(parseNorm("cbn:8:0")).toEqual({ kind: "cbn", window: 8, burnin: 0 });
  });

  it.each(["cbn", "cbn:", "cbn:0", `cbn:${MAX_CBN_WINDOW + 1}`, "cbn:2.5", "cbn:-1", "cbn:x", "cbn:1e1", "cbn:4:-1", "cbn:4:1.5", "cbn:4:", "cbn:4:2:1"])(
    "refuses %s in one BadConfig line naming the range",
    (text) => {
      let err: unknown;
      try {
        parseNorm(text);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SyncbnError);
      expect((err as SyncbnError).code).toBe(ErrorCode.BadConfig);
      expect((err as SyncbnError).message).toMatch(/K in 1\.\.32/);
      expect((err as SyncbnError).message).not.toContain("\n");
    },
  );
});

describe("the CBN model builder", () => {
  const conventions = TORCH_CONVENTIONS;
  const build = (kind: "mlp" | "cnn" | "resnet:1") =>
    buildModel({ kind, inShape: kind === "mlp" ? [1, 28, 28] : [3, 32, 32], classes: 10, norm: parseNorm("cbn:4:10"), conventions, sync: null, seed: 1 });

  it("puts a CBN layer after every conv and linear layer of mlp, cnn and resnet:1, each reading its producer's weights", () => {
    for (const [kind, count] of [["mlp", 2], ["cnn", 3], ["resnet:1", 9]] as const) {
      const m = build(kind);
      expect(m.bnLayers.length, kind).toBe(count);
      for (const l of m.bnLayers) {
        expect(l).toBeInstanceOf(CrossIterationBatchNorm);
        const cbn = l as CrossIterationBatchNorm;
        expect(cbn.options).toMatchObject({ window: 4, burnin: 10 });
        expect(cbn.producer.weight.value.length).toBe(cbn.channels * cbn.producer.rows);
        expect(m.params).toContain(cbn.producer.weight);
      }
    }
  });

  it("refuses, in one line, a norm layer whose input is not a conv or linear output", () => {
    const g = new GraphBuilder([4]);
    const v = g.layer(new ReLU("relu0", [4]), g.input);
    const call = (): unknown => statsProducer("bn9", g.producerOf(v), 4);
    expect(call).toThrow(SyncbnError);
    expect(call).toThrow(/--norm cbn:4: norm layer bn9 reads the output of relu0, not a conv or linear layer/);
    expect(() => statsProducer("bn0", g.producerOf(g.input), 4)).toThrow(/reads the model input/);
  });
});

describe("the conv kernels' CBN sums", () => {
  it.each(KERNEL_BACKENDS)("give Σ p and Σ y·pᵀ over a segment of the last training batch as a naive float64 loop does (%s kernels, stride 2)", (backend) => {
    const [cin, cout, k, stride, pad, h, w, n, first, count] = [3, 4, 3, 2, 1, 7, 6, 5, 2, 3];
    const conv = new Conv2d("c", cin, cout, k, stride, pad, h, w, new Rng(3), backend);
    const x = Float32Array.from({ length: n * cin * h * w }, (_, i) => Math.sin(i * 0.91) + 0.2);
    const y = Float32Array.from(conv.forward(x, n, true));
    const { outH, outW } = conv.geometry;
    const rows = cin * k * k;
    const colSums = new Float64Array(rows), yColSums = new Float64Array(cout * rows);
    conv.statsSums(colSums, yColSums, first, count);
    const wantCol = new Float64Array(rows), wantY = new Float64Array(cout * rows);
    for (let i = first; i < first + count; i++) {
      for (let oh = 0; oh < outH; oh++) {
        for (let ow = 0; ow < outW; ow++) {
          for (let ci = 0; ci < cin; ci++) {
            for (let kh = 0; kh < k; kh++) {
              for (let kw = 0; kw < k; kw++) {
                const ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
                const p = ih < 0 || ih >= h || iw < 0 || iw >= w ? 0 : x[((i * cin + ci) * h + ih) * w + iw]!;
                const r = (ci * k + kh) * k + kw;
                wantCol[r]! += p;
                for (let c = 0; c < cout; c++) wantY[c * rows + r]! += y[((i * cout + c) * outH + oh) * outW + ow]! * p;
              }
            }
          }
        }
      }
    }
    expect(scaledDiff(colSums, wantCol)).toBeLessThan(1e-6);
    expect(scaledDiff(yColSums, wantY)).toBeLessThan(1e-6);
    // Not the whole batch: samples outside the segment would change the sums.
    const all = new Float64Array(rows);
    conv.statsSums(all, new Float64Array(cout * rows), 0, n);
    expect(scaledDiff(all, wantCol)).toBeGreaterThan(1e-2);
    expect(() => conv.statsSums(all, new Float64Array(cout * rows), 3, 3)).toThrow(/after a training forward of 5/);
  });
});

describe("the CBN window", () => {
  /** A conv (1 → 2 channels) and its CBN layer; returns a step function. */
  function convCbn(window: number, burnin: number, where: { rank: number; step: number } | null = null) {
    const rng = new Rng(7);
    const g = new GraphBuilder([1, 4, 4]);
    const conv = g.layer(new Conv2d("c", 1, 2, 3, 1, 1, 4, 4, rng), g.input);
    const bn = new CrossIterationBatchNorm("bn", 0, [2, 4, 4], TORCH_CONVENTIONS, statsProducer("bn", g.producerOf(conv), window), { window, burnin }, where);
    const graph = g.finish(g.layer(bn, conv));
    const params = graph.ops.flatMap((op) => op.params());
    /** One SGD step on input t; returns a copy of the forward output. */
    const step = async (t: number): Promise<Float32Array> => {
      const x = Float32Array.from({ length: 3 * 16 }, (_, i) => Math.sin(i * 0.7 + t) + 0.1 * t);
      const y = Float32Array.from(await graph.forward(x, 3, true));
      await graph.backward(Float32Array.from({ length: 3 * 32 }, (_, i) => Math.cos(i + t)), 3);
      return y;
    };
    const update = (): void => {
      for (const p of params) for (let i = 0; i < p.value.length; i++) p.value[i] = Math.fround(p.value[i]! - 0.1 * p.grad[i]!);
    };
    return { bn, step, update };
  }

  it("forgets a step's own measurement when the step is done again (elastic redo), giving the first attempt's output", async () => {
    const where = { rank: 0, step: 0 };
    const { bn, step, update } = convCbn(4, 0, where);
    for (; where.step < 3; where.step++) {
      await step(where.step);
      update();
    }
    const first = await step(where.step);
    expect(bn.pastCount).toBe(3);
    const again = await step(where.step); // the same step, weights not updated in between
    expect(bn.pastCount).toBe(3);
    expect(Array.from(again)).toEqual(Array.from(first));
    // Without the forgetting the window would hold the step twice and normalize otherwise.
    expect(bn.windowCount[0]).toBeLessThanOrEqual(4);
  });

  it("holds nothing during burn-in, then fills to K − 1 past steps and stays there", async () => {
    const { bn, step, update } = convCbn(3, 2);
    const seen: number[] = [];
    for (let t = 0; t < 6; t++) {
      await step(t);
      update();
      seen.push(bn.pastCount);
    }
    // Steps 1–2 plain BN (burn-in), step 3 plain BN with an empty window, then 1, 2, 2 past steps.
    expect(seen).toEqual([0, 0, 1, 2, 2, 2]);
    expect(bn.tracked).toBe(6);
  });

  it("keeps no past steps with K = 1", async () => {
    const { bn, step } = convCbn(1, 0);
    for (let t = 0; t < 3; t++) await step(t);
    expect(bn.pastCount).toBe(0);
  });
});
