// The native step kernels (native/norm.cc, elementwise.cc; --kernels native)
// against the WebAssembly passes and the TypeScript twins, bit for bit: BN's
// moments, normalize, gradient sums, dx and eval normalize on odd shapes, NaN/±Inf/−0
// inputs and an empty batch; whole BN, ghost BN, renorm and GroupNorm layers (rank
// segments too) step after step;
// max pooling, ReLU, the residual add, gradient accumulation and the SGD update (plain, momentum,
// Nesterov, decay off); the addon's bounds checks. If the addon is missing these
// tests FAIL unless SYNCBN_NATIVE=off says this machine runs without it (then they
// skip; the fallback itself is native-off.test.ts, which runs everywhere).

import { afterEach, describe, expect, it } from "vitest";
import type { BnConventions } from "../shared/config.js";
import { Rng } from "../shared/rng.js";
import { biasedVariance, emptyMoments, inverseStd } from "../shared/stats.js";
import { BatchNorm } from "../worker/nn/batchnorm.js";
import { GhostBatchNorm } from "../worker/nn/ghost.js";
import { GroupNorm } from "../worker/nn/groupnorm.js";
import { Add, GraphBuilder } from "../worker/nn/graph.js";
import { setKernelBackend, stepKernelBackend, type KernelBackend } from "../worker/nn/kernels/backend.js";
import { disableNative, nativeKernels } from "../worker/nn/kernels/native.js";
import { NormNative } from "../worker/nn/kernels/norm-native.js";
import { normPasses, type NormPasses } from "../worker/nn/kernels/norm-passes.js";
import type { Layer, Param } from "../worker/nn/layer.js";
import { MaxPool2d } from "../worker/nn/maxpool.js";
import { ReLU } from "../worker/nn/relu.js";
import { BatchRenorm } from "../worker/nn/renorm.js";
import { SGD } from "../worker/nn/sgd.js";
import { data, expectBits, layerRun, onBackend } from "./step-kernels.js";

const off = process.env.SYNCBN_NATIVE === "off";
if (off) disableNative("SYNCBN_NATIVE=off");

const CONV: BnConventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true };

afterEach(() => setKernelBackend("wasm"));

/** One pass of every kind on `p`, each output copied: [mean, m2, y, xhat, sums, dx, yEval]. */
function allPasses(p: NormPasses, n: number, c: number, s: number, seed: number, hostile: boolean): (Float32Array | Float64Array)[] {
  const rng = new Rng(seed), len = n * c * s;
  const x = data(rng, len, hostile, 0.5), dy = data(rng, len, hostile), xe = data(rng, len, hostile);
  const gamma = data(rng, c, false), beta = data(rng, c, false);
  const rm = Float64Array.from(data(rng, c, false)), rv = Float64Array.from(data(rng, c, false), (v) => Math.abs(v) + 0.1);
  const xs = p.stageInput(x, n);
  const m = p.localMoments(emptyMoments(c), xs, n, c, s);
  const invStd = inverseStd(new Float64Array(c), biasedVariance(new Float64Array(c), m), 1e-5);
  const y = p.y.view(n), xhat = p.xhat.view(n);
  p.normalizeForward(y, xhat, xs, m.mean, invStd, gamma, beta, n, c, s);
  const out: (Float32Array | Float64Array)[] = [m.mean.slice(), m.m2.slice(), y.slice(), xhat.slice()];
  const dys = p.stageGrad(dy, n);
  const sums = p.localGradSums(new Float64Array(2 * c), dys, xhat, n, c, s).slice();
  const dx = p.dx.view(n);
  p.normalizeBackward(dx, dys, xhat, sums, Math.max(1, n * s), invStd, gamma, n, c, s);
  out.push(sums, dx.slice());
  const xes = p.stageInput(xe, n), ye = p.y.view(n);
  p.normalizeEval(ye, xes, rm, rv, gamma, beta, 1e-5, n, c, s);
  out.push(ye.slice());
  return out;
}

const NAMES = ["mean", "m2", "y", "xhat", "grad sums", "dx", "eval y"];
const shapes = [
  { n: 3, c: 5, s: 1 }, { n: 4, c: 3, s: 7 }, { n: 2, c: 6, s: 49 }, { n: 5, c: 4, s: 256 }, { n: 1, c: 2, s: 13 },
  { n: 7, c: 1, s: 3 }, { n: 32, c: 64, s: 1 }, { n: 9, c: 7, s: 2 }, { n: 3, c: 16, s: 1024 }, { n: 0, c: 4, s: 9 },
];

describe.skipIf(off)("native BN passes: the wasm and TypeScript bits", () => {
  for (const { n, c, s } of shapes) {
    for (const hostile of [false, true]) {
      it(`(${n}, ${c}, ${s})${hostile ? " with NaN, ±Inf, −0, ±3e38" : ""}${n === 0 ? " (empty batch)" : ""}`, () => {
        const per = c * s;
        const got = allPasses(normPasses("native", per, c), n, c, s, 7 + n + c + s, hostile);
        expect(normPasses("native", per, c).backend).toBe("native");
        for (const ref of ["wasm", "js"] as const) {
          const want = allPasses(normPasses(ref, per, c), n, c, s, 7 + n + c + s, hostile);
          got.forEach((g, k) => expectBits(`${NAMES[k]} native vs ${ref}`, g, want[k]!));
        }
      });
    }
  }
});

describe.skipIf(off)("native BN and elementwise passes split over the pool's threads: the same bits", () => {
  // Big enough to split (a part takes at least 32K elements of a BN pass, 64K of relu/add), odd where a split could show.
  const big = [{ n: 32, c: 16, s: 784 }, { n: 7, c: 13, s: 1031 }, { n: 32, c: 64, s: 49 }, { n: 3, c: 5, s: 30011 }];
  for (const { n, c, s } of big) {
    it(`BN passes on (${n}, ${c}, ${s}) with NaN, ±Inf, −0 on 2, 3 and 7 threads: wasm's bits`, () => {
      const per = c * s, seed = 3 + c;
      const want = allPasses(normPasses("wasm", per, c), n, c, s, seed, true);
      for (const t of [2, 3, 7]) {
        const got = allPasses(new NormNative(nativeKernels()!, per, t), n, c, s, seed, true);
        got.forEach((g, k) => expectBits(`${NAMES[k]} on ${t} threads vs wasm`, g, want[k]!));
      }
    });
  }

  it("relu, its backward, add and addInto on 1, 2 and 5 threads, on a window of an array", () => {
    const k = nativeKernels()!, len = 300_007, rng = new Rng(9);
    const a = data(rng, len + 3, true), b = data(rng, len + 3, true), g = data(rng, len, true);
    const run = (t: number): Float32Array[] => {
      const y = new Float32Array(len + 5).fill(7), dx = new Float32Array(len), sum = new Float32Array(len), acc = b.slice(3);
      k.relu(y.subarray(2), a.subarray(3), len, t);
      k.reluBackward(dx, g, y.subarray(2), len, t);
      k.add(sum, a.subarray(3), b.subarray(3), len, t);
      k.addInto(acc, g, len, t);
      return [y, dx, sum, acc];
    };
    const one = run(1);
    expect(one[0]![1]).toBe(7); // the window's edges untouched
    expect(one[0]![len + 2]).toBe(7);
    for (const t of [2, 5]) run(t).forEach((x, i) => expectBits(`elementwise output ${i} on ${t} threads`, x, one[i]!));
  });

  it("refuses a thread count outside 1..256", () => {
    const k = nativeKernels()!, f = new Float32Array(4);
    expect(() => k.relu(f, f, 4, 0)).toThrow(/threads must be in 1\.\.256/);
    expect(() => k.bnMoments(new Float64Array(1), new Float64Array(1), f, 1, 1, 4, 257)).toThrow(/threads must be in 1\.\.256/);
    expect(() => k.addInto(f, f, 4, 1, 2 as never)).toThrow(/expected 3 or 4 arguments/);
  });
});

describe.skipIf(off)("native step kernels in the layers: wasm's bits", () => {
  const layers: [string, () => Layer][] = [
    ["BatchNorm (8, 16, 9×9)", () => new BatchNorm("bn", 0, [16, 9, 9], CONV, null)],
    ["BatchNorm on (N, C) input", () => new BatchNorm("bn", 0, [33], CONV, null)],
    ["GhostBatchNorm, ghost batch 4", () => new GhostBatchNorm("gbn", 0, [6, 5, 5], CONV, 4)],
    ["BatchRenorm", () => new BatchRenorm("brn", 0, [5, 7, 3], CONV, { rMax: 3, dMax: 5, warmup: 0 })],
    ["ReLU", () => new ReLU("relu", [7, 5, 3])],
    ["MaxPool2d 2×2 stride 2 on 7×9 (floor)", () => new MaxPool2d("pool", 3, 7, 9, 2, 2)],
    ["MaxPool2d 3×3 stride 1 (overlapping windows add up in dx)", () => new MaxPool2d("pool", 2, 6, 5, 3, 1)],
    ["GroupNorm, 3 groups of 2 channels at 5×5", () => new GroupNorm("gn", [6, 5, 5], 3, 1e-5)],
    ["GroupNorm on (N, C) input, 4 groups", () => new GroupNorm("gn", [12], 4, 1e-5)],
    ["GroupNorm with 4 rank segments of 2 samples", () => {
      const l = new GroupNorm("gn", [4, 3, 3], 2, 1e-5);
      l.setRankSegments(4);
      return l;
    }],
  ];
  for (const [label, make] of layers) {
    it(label, () => {
      const nat = onBackend("native", () => layerRun(make, 8, 3, 11));
      const wasm = onBackend("wasm", () => layerRun(make, 8, 3, 11));
      const js = onBackend("js", () => layerRun(make, 8, 3, 11));
      nat.forEach((a, k) => expectBits(`${label} output ${k} vs wasm`, a, wasm[k]!));
      nat.forEach((a, k) => expectBits(`${label} output ${k} vs js`, a, js[k]!));
    });
  }

  it("MaxPool2d with ties, NaN, ±Inf and −0: the same maxima, argmax and dx", () => {
    const run = (backend: KernelBackend): Float32Array[] => {
      const pool = new MaxPool2d("pool", 2, 6, 6, 2, 2, backend), rng = new Rng(4);
      const x = data(rng, 3 * 72, true).map((v) => Math.round(v * 2) / 2); // many ties
      x[5] = NaN;
      x[6] = NaN;
      x.fill(-Infinity, 24, 36);
      return [(pool.forward(x, 3, true) as Float32Array).slice(), (pool.backward(data(rng, 3 * 18, false), 3) as Float32Array).slice()];
    };
    const nat = run("native"), wasm = run("wasm"), js = run("js");
    nat.forEach((a, k) => expectBits(`pool output ${k} vs wasm`, a, wasm[k]!));
    nat.forEach((a, k) => expectBits(`pool output ${k} vs js`, a, js[k]!));
  });

  it("the layers pick the native passes only when native is requested", () => {
    expect(onBackend("native", () => stepKernelBackend())).toBe("native");
    expect(onBackend("wasm", () => stepKernelBackend())).toBe("wasm");
    expect(onBackend("js", () => stepKernelBackend())).toBe("js");
  });

  it("the residual add and gradient accumulation of a graph (a value read by two nodes)", async () => {
    const run = async (backend: KernelBackend): Promise<Float32Array[]> => {
      setKernelBackend(backend);
      const g = new GraphBuilder([4, 3, 3]);
      const a = g.layer(new ReLU("r1", [4, 3, 3]), g.input);
      const b = g.layer(new BatchNorm("bn", 0, [4, 3, 3], CONV, null), a);
      const sum = g.apply(new Add("add", [4, 3, 3]), a, b); // a is read by bn and add: its gradient is summed
      const graph = g.finish(g.layer(new ReLU("r2", [4, 3, 3]), sum));
      setKernelBackend("wasm");
      const rng = new Rng(5), out: Float32Array[] = [];
      for (let t = 0; t < 3; t++) {
        out.push((await graph.forward(data(rng, 6 * 36, true), 6, true)).slice());
        await graph.backward(data(rng, 6 * 36, true), 6);
        for (const op of graph.ops) for (const p of op.params()) out.push(p.grad.slice());
      }
      return out;
    };
    const nat = await run("native"), js = await run("js");
    expect(nat.length).toBe(3 * 3);
    nat.forEach((a, k) => expectBits(`graph output/grad ${k} native vs js`, a, js[k]!));
  });
});

/** Params of three kinds: decayed weights, γ without decay, an empty one. */
function params(seed: number): Param[] {
  const rng = new Rng(seed), mk = (name: string, len: number, decay?: boolean): Param =>
    ({ name, value: data(rng, len, false), grad: data(rng, len, true), ...(decay === undefined ? {} : { decay }) });
  return [mk("w", 1031), mk("gamma", 17, false), mk("empty", 0)];
}

describe.skipIf(off)("native SGD: sgd.ts's bits", () => {
  const cases = [
    { label: "plain (momentum 0)", momentum: 0, nesterov: false },
    { label: "momentum 0.9", momentum: 0.9, nesterov: false },
    { label: "Nesterov 0.9", momentum: 0.9, nesterov: true },
  ];
  for (const c of cases) {
    it(c.label, () => {
      const run = (native: boolean): Float32Array[] => {
        const ps = params(3);
        const opt = new SGD(ps, { lr: 0.1, momentum: c.momentum, weightDecay: 5e-4, nesterov: c.nesterov }, native);
        for (let t = 0; t < 4; t++) {
          opt.lr = 0.1 / (t + 1);
          opt.step();
        }
        return [...ps.map((p) => p.value), ...opt.state()];
      };
      const nat = run(true), js = run(false);
      nat.forEach((a, k) => expectBits(`${c.label}: array ${k}`, a, js[k]!));
      expect(nat[0]!.some((v, i) => v !== params(3)[0]!.value[i])).toBe(true); // it did step
    });
  }
});

describe.skipIf(off)("the addon's argument checks", () => {
  const k = nativeKernels()!;
  it("refuses short arrays and wrong types with a RangeError naming the argument", () => {
    const f = new Float32Array(10), d = new Float64Array(2);
    expect(() => k.relu(f, new Float32Array(5), 10)).toThrow(/x: 5 elements, needs 10/);
    expect(() => k.bnMoments(d, d, f, 2, 3, 2)).toThrow(/mean: 2 elements, needs 3/);
    expect(() => k.bnGradSums(d, f, f.subarray(1), 1, 1, 10)).toThrow(/xhat: 9 elements, needs 10/);
    expect(() => k.add(f, f, d as unknown as Float32Array, 1)).toThrow(/b: expected a Float32Array/);
    expect(() => k.sgdStep(f, new Float32Array(9), f, 0.1, 0.9, 0, 1)).toThrow(/grad: 9 elements, needs 10/);
    expect(() => k.sgdStep(f, f, new Float32Array(3), 0.1, 0.9, 0, 1)).toThrow(/buf: 3 elements, needs 10/);
    expect(() => k.relu(f, f, -1)).toThrow(/len: expected a count/);
    expect(() => k.bnMoments(d, d, f, 2 ** 40, 2 ** 40, 2 ** 40)).toThrow(/sizes out of range/); // n·c·s would wrap
    expect(() => k.maxpoolForward(f, new Int32Array(4), f, 1, 2 ** 33, 2, 1, 1, 1, 1)).toThrow(/inH: out of range/);
    expect(() => k.maxpoolForward(f, new Int32Array(4), f, 1, 2, 2, 3, 1, 1, 1)).toThrow(/windows do not fit/);
    expect(() => k.maxpoolBackward(f, f, Int32Array.from([0, 10]), 2, 10)).toThrow(/argmax lies outside dx/);
    expect(() => k.maxpoolBackward(f, f, f as unknown as Int32Array, 2, 10)).toThrow(/argmax: expected an Int32Array/);
  });
  it("works on subarray windows (the graph's and ghost BN's views)", () => {
    const x = Float32Array.from([-1, 2, -3, 4, NaN, -0]), y = new Float32Array(6).fill(9);
    k.relu(y.subarray(1), x.subarray(2), 4);
    expectBits("relu window", y, Float32Array.from([9, 0, 4, NaN, 0, 9]));
  });
});
