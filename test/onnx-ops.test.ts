// The ONNX ops of issue 25, one by one and together: every activation against
// PyTorch's float64 y and dx at chosen points, kinks included; finite differences
// of the activations, broadcasting Add/Sub/Mul/Div, Concat and grouped conv; grouped
// conv against a dense conv with zero blocks; dropout's training semantics (mask
// statistics, 1/(1−p), reproducible per seed/rank/step, a rank block = its ranks);
// padded pools; PReLU. Whole imported models: onnx-ops-import.test.ts. No PyTorch needed here.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Rng } from "../shared/rng.js";
import { Activation, type ActivationKind } from "../worker/nn/activations.js";
import { BroadcastBinary, Concat, type BinaryKind, type Operand } from "../worker/nn/broadcast.js";
import { conv2dBackwardNaive, conv2dForwardNaive, convGeometry } from "../worker/nn/conv2d.js";
import { Dropout, type DropoutClock } from "../worker/nn/dropout.js";
import type { Op } from "../worker/nn/graph.js";
import { GroupedConv2d } from "../worker/nn/grouped-conv.js";
import { KERNEL_BACKENDS } from "../worker/nn/kernels/backend.js";
import { sizeOf } from "../worker/nn/layer.js";
import { normals, relDiff } from "./compare.js";
import { ROOT } from "./helpers.js";
import { AvgPool2dExclusive, Pad2d } from "../worker/nn/pad-pool.js";
import { MaxPool2d } from "../worker/nn/maxpool.js";
import { PReLU } from "../worker/nn/prelu.js";
import { IndexMap, permuteMap, sliceMap, sliceRange } from "../worker/nn/index-map.js";

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

/**
 * Central differences of L = Σ op(xs)·r with respect to every element of xs[k],
 * against the op's dx. The step is divided by the difference actually stored.
 */
async function expectOpGradsMatch(op: Op, xs: Float32Array[], n: number, rng: Rng, rtol = 2e-3, atol = 2e-4): Promise<void> {
  const y0 = await op.forward(xs, n, true);
  const r = normals(rng, y0.length);
  const dxs = (await op.backward(r, n)).map((d) => Float32Array.from(d));
  const params = op.params();
  const grads = params.map((p) => Float32Array.from(p.grad));
  const loss = async (): Promise<number> => dot(await op.forward(xs, n, true), r);
  const check = async (what: string, v: Float32Array, analytic: Float32Array): Promise<void> => {
    expect(analytic.length, what).toBe(v.length);
    const stride = Math.max(1, Math.floor(v.length / 97));
    for (let i = 0; i < v.length; i += stride) {
      const orig = v[i]!;
      v[i] = orig + 1e-2;
      const up = v[i]!, fUp = await loss();
      v[i] = orig - 1e-2;
      const down = v[i]!, fDown = await loss();
      v[i] = orig;
      const numeric = (fUp - fDown) / (up - down);
      const err = Math.abs(numeric - analytic[i]!);
      if (err > atol + rtol * Math.max(Math.abs(numeric), Math.abs(analytic[i]!))) expect.fail(`${op.name} ${what}[${i}]: analytic ${analytic[i]} vs numeric ${numeric}`);
    }
  };
  for (const [k, x] of xs.entries()) await check(`x${k}`, x, dxs[k]!);
  for (const [k, p] of params.entries()) await check(p.name, p.value, grads[k]!);
}

/** A layer as a one-input op. */
function asOp(layer: Activation | GroupedConv2d | Dropout | Pad2d | AvgPool2dExclusive | PReLU | IndexMap): Op {
  return {
    name: layer.name, inShapes: [layer.inShape], outShape: layer.outShape, params: () => layer.params(),
    forward: (xs, n, train) => layer.forward(xs[0]!, n, train),
    backward: (dy, n) => [layer.backward(dy, n)],
  };
}

/** Values at least `gap` away from every kink, so a ±1e-2 step never crosses one. */
function awayFrom(x: Float32Array, kinks: number[], gap = 0.05): Float32Array {
  for (let i = 0; i < x.length; i++) for (const k of kinks) if (Math.abs(x[i]! - k) < gap) x[i] = k + (x[i]! >= k ? gap : -gap);
  return x;
}

const KINDS: { name: string; kind: ActivationKind; kinks: number[] }[] = [
  { name: "sigmoid", kind: { op: "sigmoid" }, kinks: [] },
  { name: "tanh", kind: { op: "tanh" }, kinks: [] },
  { name: "softplus", kind: { op: "softplus" }, kinks: [] },
  { name: "elu", kind: { op: "elu", alpha: 0.5 }, kinks: [0] },
  { name: "erf", kind: { op: "erf" }, kinks: [] },
  { name: "hardsigmoid", kind: { op: "hardsigmoid", alpha: Math.fround(1 / 6), beta: 0.5 }, kinks: [-3, 3] },
  { name: "hardswish", kind: { op: "hardswish" }, kinks: [-3, 3] },
  { name: "leakyrelu", kind: { op: "leakyrelu", alpha: Math.fround(0.1) }, kinks: [0] },
  { name: "relu6", kind: { op: "clip", min: 0, max: 6 }, kinks: [0, 6] },
];

describe("activations", () => {
  const torch = JSON.parse(readFileSync(join(ROOT, "test", "fixtures", "onnx-ops", "pointwise.json"), "utf8")) as Record<string, { y: number[]; dx: number[] }> & { x: number[]; dy: number[] };

  for (const { name, kind } of KINDS) {
    it(`gives ${name}'s y and dx within 1e-6 of PyTorch's float64 ones at ${torch.x.length} points, its kinks included`, () => {
      const x = Float32Array.from(torch.x), dy = Float32Array.from(torch.dy), n = x.length;
      const layer = new Activation(name, [1], kind);
      const y = Float32Array.from(layer.forward(x, n, true));
      const dx = layer.backward(dy, n);
      for (let i = 0; i < n; i++) {
        // x is float32 here, float64 there: at most a float32 rounding of x apart (slopes ≤ 1.5).
        expect(Math.abs(y[i]! - torch[name]!.y[i]!), `y at x=${torch.x[i]}`).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(torch[name]!.y[i]!)));
        expect(Math.abs(dx[i]! - torch[name]!.dx[i]!), `dx at x=${torch.x[i]}`).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(torch[name]!.dx[i]!)));
      }
    });

    it(`has a ${name} dx that matches finite differences away from its kinks`, async () => {
      const rng = new Rng(3);
      const x = awayFrom(normals(rng, 3 * 2 * 5 * 5, 4), KINDS.find((k) => k.name === name)!.kinks);
      await expectOpGradsMatch(asOp(new Activation(name, [2, 5, 5], kind)), [x], 3, rng);
    });
  }

  it("passes NaN through Clip and clamps ±Infinity to the bounds", () => {
    const y = new Activation("clip", [4], { op: "clip", min: -1, max: 2 }).forward(Float32Array.of(NaN, -Infinity, Infinity, 0.5), 1, false);
    expect(Array.from(y)).toEqual([NaN, -1, 2, 0.5]);
  });
});

describe("broadcasting arithmetic and Concat", () => {
  const cases: { label: string; a: Operand; b: Operand }[] = [
    { label: "two activations of one shape", a: { shape: [3, 4, 4] }, b: { shape: [3, 4, 4] } },
    { label: "an activation by a per-channel activation (squeeze-excite)", a: { shape: [3, 4, 4] }, b: { shape: [3, 1, 1] } },
    { label: "a per-channel activation by an activation", a: { shape: [3, 1, 4] }, b: { shape: [3, 4, 1] } },
    { label: "an activation and a per-channel constant", a: { shape: [3, 4, 4] }, b: { shape: [3, 1, 1], values: Float32Array.of(0.7, -1.3, 2.1) } },
    { label: "a scalar constant and an activation", a: { shape: [1, 1, 1], values: Float32Array.of(1.7) }, b: { shape: [3, 4, 4] } },
  ];
  for (const kind of ["Add", "Sub", "Mul", "Div"] as BinaryKind[]) {
    for (const c of cases) {
      it(`computes ${kind} of ${c.label} as numpy broadcasting does, with gradients that match finite differences`, async () => {
        const rng = new Rng(11);
        const n = 2;
        const op = new BroadcastBinary(kind, kind, c.a, c.b);
        // Divisors kept away from 0: |x| ≥ 0.5.
        const acts = [c.a, c.b].filter((o) => !o.values).map((o) => normals(rng, n * sizeOf(o.shape)).map((v) => (kind === "Div" ? Math.sign(v) * (0.5 + Math.abs(v)) : v)));
        const y = Float32Array.from(await op.forward(acts, n, true));
        // Reference: index arithmetic written out, per output coordinate.
        const out = op.outShape as number[];
        let k = 0;
        const A = c.a.values ?? acts[k++]!, B = c.b.values ?? acts[k++]!;
        const at = (o: Operand, data: Float32Array, s: number, coord: number[]): number => {
          let idx = 0;
          for (let d = 0; d < coord.length; d++) idx = idx * o.shape[d]! + (o.shape[d] === 1 ? 0 : coord[d]!);
          return data[(o.values ? 0 : s * sizeOf(o.shape)) + idx]!;
        };
        const f = { Add: (p: number, q: number) => p + q, Sub: (p: number, q: number) => p - q, Mul: (p: number, q: number) => p * q, Div: (p: number, q: number) => p / q }[kind];
        for (let s = 0; s < n; s++) {
          for (let j = 0; j < sizeOf(out); j++) {
            const coord = [Math.floor(j / (out[1]! * out[2]!)), Math.floor(j / out[2]!) % out[1]!, j % out[2]!];
            expect(y[s * sizeOf(out) + j]).toBe(Math.fround(f(at(c.a, A, s, coord), at(c.b, B, s, coord))));
          }
        }
        await expectOpGradsMatch(op, acts, n, rng);
      });
    }
  }

  it("refuses shapes that do not broadcast", () => {
    expect(() => new BroadcastBinary("bad", "Mul", { shape: [3, 4, 4] }, { shape: [2, 1, 1] })).toThrow(/do not broadcast/);
  });

  it("concatenates along the channel axis and hands each input its slice of dy", async () => {
    const rng = new Rng(5);
    const op = new Concat("cat", [[2, 3, 3], [1, 3, 3], [4, 3, 3]], 0);
    expect(op.outShape).toEqual([7, 3, 3]);
    const xs = [normals(rng, 2 * 18), normals(rng, 2 * 9), normals(rng, 2 * 36)];
    const y = await op.forward(xs, 2, true);
    expect(Array.from(y.subarray(63 + 18, 63 + 27))).toEqual(Array.from(xs[1]!.subarray(9, 18))); // sample 1, channel 2 = input 1's channel 0
    await expectOpGradsMatch(op, xs, 2, rng);
    const vec = new Concat("cat1", [[5], [3]], 0);
    expect(Array.from(await vec.forward([Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), Float32Array.of(-1, -2, -3, -4, -5, -6)], 2, false))).toEqual([1, 2, 3, 4, 5, -1, -2, -3, 6, 7, 8, 9, 10, -4, -5, -6]);
  });
});

describe("grouped and depthwise convolution", () => {
  const shapes = [
    { label: "depthwise 3×3 stride 2", cin: 4, cout: 4, groups: 4, k: 3, s: 2, p: 1, bias: false },
    { label: "2 groups, 3×3, bias", cin: 4, cout: 6, groups: 2, k: 3, s: 1, p: 1, bias: true },
    { label: "3 groups of 1×1, depth multiplier 2", cin: 3, cout: 6, groups: 3, k: 1, s: 1, p: 0, bias: true },
  ];
  for (const backend of KERNEL_BACKENDS) {
    for (const c of shapes) {
      it(`equals a dense conv whose off-group weights are zero, forward and backward (${c.label}, ${backend} kernels)`, async () => {
        const rng = new Rng(21);
        const n = 3, H = 6, W = 5;
        const conv = new GroupedConv2d("g", c.cin, c.cout, c.groups, c.k, c.s, c.p, H, W, rng, backend, c.bias);
        const cinG = c.cin / c.groups, coutG = c.cout / c.groups, kk = c.k * c.k;
        const dense = new Float64Array(c.cout * c.cin * kk);
        for (let o = 0; o < c.cout; o++) {
          const gi = Math.floor(o / coutG);
          for (let i = 0; i < cinG; i++) for (let t = 0; t < kk; t++) dense[(o * c.cin + gi * cinG + i) * kk + t] = conv.weight.value[(o * cinG + i) * kk + t]!;
        }
        const x = normals(rng, n * c.cin * H * W);
        const g = convGeometry("dense", c.cin, c.cout, c.k, c.s, c.p, H, W);
        const yRef = new Float64Array(n * c.cout * g.outH * g.outW);
        conv2dForwardNaive(yRef, Float64Array.from(x), dense, Float64Array.from(conv.bias.value), n, g);
        expect(relDiff(conv.forward(x, n, true), yRef)).toBeLessThan(1e-6);
        const dy = normals(rng, yRef.length);
        const dx = Float32Array.from(conv.backward(dy, n));
        const dxRef = new Float64Array(x.length), dwRef = new Float64Array(dense.length), dbRef = new Float64Array(c.cout);
        conv2dBackwardNaive(dxRef, dwRef, dbRef, Float64Array.from(dy), Float64Array.from(x), dense, n, g);
        expect(relDiff(dx, dxRef)).toBeLessThan(1e-6);
        const dwGroup = new Float64Array(conv.weight.grad.length);
        for (let o = 0; o < c.cout; o++) {
          const gi = Math.floor(o / coutG);
          for (let i = 0; i < cinG; i++) for (let t = 0; t < kk; t++) dwGroup[(o * cinG + i) * kk + t] = dwRef[(o * c.cin + gi * cinG + i) * kk + t]!;
        }
        expect(relDiff(conv.weight.grad, dwGroup)).toBeLessThan(1e-6);
        if (c.bias) expect(relDiff(conv.bias.grad, dbRef)).toBeLessThan(1e-6);
        expect(conv.weight.shape).toEqual([c.cout, cinG, c.k, c.k]);
      });
    }
  }

  it("has dx, dW and db that match finite differences", async () => {
    const rng = new Rng(8);
    await expectOpGradsMatch(asOp(new GroupedConv2d("g", 4, 6, 2, 3, 1, 1, 5, 5, rng, "js", true)), [normals(rng, 2 * 4 * 25)], 2, rng, 3e-3, 5e-4);
  });

  it("sums per-rank gradients in float64 in a rank block, each the grad of that rank's samples alone", async () => {
    const rng = new Rng(9);
    const whole = new GroupedConv2d("g", 4, 4, 4, 3, 1, 1, 5, 5, rng, "js", true);
    const x = normals(rng, 4 * 4 * 25), dy = normals(rng, 4 * 4 * 25);
    const expected = new Float64Array(whole.weight.grad.length);
    for (const half of [0, 1]) {
      whole.forward(x.subarray(half * 200, half * 200 + 200), 2, true);
      whole.backward(dy.subarray(half * 200, half * 200 + 200), 2);
      whole.weight.grad.forEach((v, i) => (expected[i]! += v));
    }
    whole.setRankSegments(2);
    whole.forward(x, 4, true);
    whole.backward(dy, 4);
    expect(Array.from(whole.weight.grad64!)).toEqual(Array.from(expected));
  });
});

describe("padded pooling", () => {
  it("pads with a constant and hands back the interior of dy; a max pool never picks a −∞ border", async () => {
    const rng = new Rng(12);
    const pad = new Pad2d("pad", 2, 3, 4, [1, 2, 0, 1], -Infinity);
    expect(pad.outShape).toEqual([2, 4, 7]);
    const x = normals(rng, 2 * 24).map((v) => -Math.abs(v) - 1); // all negative: a 0 border would win every edge window
    const y = pad.forward(x, 2, true);
    expect(y[0]).toBe(-Infinity);
    expect(y[1 * 7 + 2]).toBe(x[0]);
    for (const backend of KERNEL_BACKENDS) {
      const pooledY = new MaxPool2d("max", 2, 4, 7, 3, 2, backend).forward(y, 1, false);
      expect(Array.from(pooledY).every((v) => Number.isFinite(v) && v < 0), backend).toBe(true);
    }
    await expectOpGradsMatch(asOp(pad), [x], 2, rng);
  });

  it("averages each window over its in-image cells only (count_include_pad=False), with a dx that matches finite differences", async () => {
    const rng = new Rng(13);
    const pool = new AvgPool2dExclusive("avg", 2, 5, 6, 3, 2, [1, 1, 1, 1]);
    expect(pool.outShape).toEqual([2, 3, 3]);
    const x = normals(rng, 2 * 2 * 30);
    const y = pool.forward(x, 2, true);
    // The corner window covers rows 0..1, columns 0..1 of the image: 4 cells.
    expect(y[0]).toBeCloseTo((x[0]! + x[1]! + x[6]! + x[7]!) / 4, 6);
    await expectOpGradsMatch(asOp(pool), [x], 2, rng);
  });
});

describe("index maps (Transpose, Slice, Split of activations)", () => {
  it("permutes axes as numpy's transpose and slices with steps, with dx the scatter of dy (matching finite differences)", async () => {
    const rng = new Rng(16);
    const p = permuteMap([2, 3, 4], [1, 0, 2]);
    expect(p.outShape).toEqual([3, 2, 4]);
    expect(p.idx[1 * 8 + 0 * 4 + 3]).toBe(0 * 12 + 1 * 4 + 3); // y[1, 0, 3] = x[0, 1, 3]
    const s = sliceMap([4, 5], [sliceRange(3, -10, -2, 4), sliceRange(1, 1e19, 2, 5)]);
    expect(s.outShape).toEqual([2, 2]);
    expect(Array.from(s.idx)).toEqual([3 * 5 + 1, 3 * 5 + 3, 1 * 5 + 1, 1 * 5 + 3]);
    await expectOpGradsMatch(asOp(new IndexMap("t", [2, 3, 4], p.outShape, p.idx)), [normals(rng, 3 * 24)], 3, rng);
    // An element read twice gets both gradients.
    const twice = new IndexMap("dup", [3], [4], Int32Array.of(0, 2, 2, 1));
    twice.forward(Float32Array.of(1, 2, 3), 1, true);
    expect(Array.from(twice.backward(Float32Array.of(1, 10, 100, 1000), 1))).toEqual([1, 1000, 110]);
  });
});

describe("PReLU", () => {
  it("has dx and a slope gradient per channel (and for one shared slope) that match finite differences, x = 0 taking the slope as PyTorch", async () => {
    const rng = new Rng(14);
    for (const slopes of [3, 1]) {
      const layer = new PReLU("p", [3, 2, 2], slopes);
      layer.weight.value.set(Float32Array.from({ length: slopes }, (_, c) => 0.1 + 0.2 * c));
      await expectOpGradsMatch(asOp(layer), [awayFrom(normals(rng, 4 * 12), [0])], 4, rng);
      const dx = (layer.forward(Float32Array.of(0, 1, -2, 0, 0, 0, 0, 0, 0, 0, 0, 0), 1, true), layer.backward(new Float32Array(12).fill(1), 1));
      expect(Array.from(dx.subarray(0, 3))).toEqual([layer.weight.value[0], 1, layer.weight.value[0]].map(Math.fround));
    }
  });

  it("sums per-rank slope gradients in float64 in a rank block, each rounded as that rank's", () => {
    const rng = new Rng(15);
    const layer = new PReLU("p", [2, 3, 3], 2);
    const x = normals(rng, 4 * 18), dy = normals(rng, 4 * 18);
    const expected = new Float64Array(2);
    for (const half of [0, 1]) {
      layer.forward(x.subarray(half * 36, half * 36 + 36), 2, true);
      layer.backward(dy.subarray(half * 36, half * 36 + 36), 2);
      layer.weight.grad.forEach((v, i) => (expected[i]! += v));
    }
    layer.setRankSegments(2);
    layer.forward(x, 4, true);
    layer.backward(dy, 4);
    expect(Array.from(layer.weight.grad64!)).toEqual(Array.from(expected));
  });
});

describe("dropout", () => {
  const clock = (firstRank: number, ranks: number, step: number): DropoutClock => ({ seed: 77, firstRank, ranks, step: () => step });
  const ones = (len: number) => new Float32Array(len).fill(1);

  it("drops a fraction p of elements (within 4σ), scales the kept ones by float32(1/(1−p)), and masks dx the same way", () => {
    for (const p of [0.1, 0.5, 0.8]) {
      const d = new Dropout("drop", [1000], p, 0, clock(0, 1, 3));
      const n = 20, len = n * 1000;
      const x = normals(new Rng(4), len);
      const y = Float32Array.from(d.forward(x, n, true));
      const dx = d.backward(ones(len), n);
      let dropped = 0;
      for (let i = 0; i < len; i++) {
        if (y[i] === 0) dropped++;
        else expect(y[i]).toBe(Math.fround(x[i]! * Math.fround(1 / (1 - p))));
        expect(dx[i]).toBe(y[i] === 0 ? 0 : Math.fround(1 / (1 - p)));
      }
      expect(Math.abs(dropped - p * len)).toBeLessThan(4 * Math.sqrt(len * p * (1 - p)));
    }
  });

  it("draws the same mask for the same seed, rank and step, and another for another step, rank or dropout", () => {
    const mask = (rank: number, step: number, index = 0, seed = 77): string => {
      const d = new Dropout("drop", [64], 0.5, index, { seed, firstRank: rank, ranks: 1, step: () => step });
      return Array.from(d.forward(ones(4 * 64), 4, true), (v) => (v === 0 ? "0" : "1")).join("");
    };
    expect(mask(1, 5)).toBe(mask(1, 5));
    for (const other of [mask(1, 6), mask(2, 5), mask(1, 5, 1), mask(1, 5, 0, 78)]) expect(other).not.toBe(mask(1, 5));
  });

  it("gives a block of 2 ranks the masks those ranks draw in their own processes", () => {
    const block = new Dropout("drop", [3, 4], 0.3, 2, clock(4, 2, 9));
    const x = normals(new Rng(6), 6 * 12);
    const y = Float32Array.from(block.forward(x, 6, true));
    for (const k of [0, 1]) {
      const alone = new Dropout("drop", [3, 4], 0.3, 2, clock(4 + k, 1, 9));
      expect(Array.from(alone.forward(x.subarray(k * 36, k * 36 + 36), 3, true))).toEqual(Array.from(y.subarray(k * 36, k * 36 + 36)));
    }
    expect(() => block.forward(x, 5, true)).toThrow(/does not split into 2 rank segments/);
  });

  it("is the identity in an eval forward and for p = 0, and drops everything for p = 1", () => {
    const x = normals(new Rng(7), 40);
    expect(new Dropout("drop", [10], 0.5, 0, clock(0, 1, 0)).forward(x, 4, false)).toBe(x);
    const p0 = new Dropout("drop", [10], 0, 0, clock(0, 1, 0));
    expect(p0.forward(x, 4, true)).toBe(x);
    expect(p0.backward(x, 4)).toBe(x);
    expect(Array.from(new Dropout("drop", [10], 1, 0, clock(0, 1, 0)).forward(x, 4, true)).every((v) => v === 0)).toBe(true);
  });
});
