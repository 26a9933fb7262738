// Tests for the non-BN layers, the loss and SGD: every backward against central
// finite differences, the fast conv against its naive twin (itself checked in
// float64), PyTorch's init, tie and first-step conventions, and hand-computed values.
// Linear and Conv2d run on both kernel backends (WASM and JS; the two against
// each other: kernels.test.ts). Not a test of BN or of the models built from these layers.

import { describe, expect, it } from "vitest";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { Rng } from "../shared/rng.js";
import {
  Conv2d, conv2dBackwardNaive, conv2dForwardNaive, convGeometry, type ConvGeometry,
} from "../worker/nn/conv2d.js";
import { Flatten } from "../worker/nn/flatten.js";
import { KERNEL_BACKENDS } from "../worker/nn/kernels/backend.js";
import type { Layer } from "../worker/nn/layer.js";
import { Linear } from "../worker/nn/linear.js";
import { SoftmaxCrossEntropy } from "../worker/nn/loss.js";
import { MaxPool2d } from "../worker/nn/maxpool.js";
import { ReLU } from "../worker/nn/relu.js";
import { SGD } from "../worker/nn/sgd.js";
import { maxAbs, normals } from "./compare.js";
import { dotAll, expectGradMatches } from "./finite-diff.js";

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/**
 * Checks dx and every param grad of a synchronous layer on L = Σ y·r, r random.
 * Analytic gradients are taken (and copied) before any perturbed forward.
 */
async function expectLayerGradsMatch(layer: Layer, x: Float32Array, n: number, rng: Rng, eps = 1e-2, rtol = 1e-2, atol = 1e-3): Promise<void> {
  const y0 = layer.forward(x, n, true) as Float32Array;
  const r = normals(rng, y0.length);
  const dx = Float32Array.from(layer.backward(r, n) as Float32Array);
  const grads = layer.params().map((p) => Float32Array.from(p.grad));
  const loss = (): number => dotAll(layer.forward(x, n, true) as Float32Array, r);
  await expectGradMatches("x", loss, x, dx, eps, rtol, atol, 256);
  for (const [k, p] of layer.params().entries()) await expectGradMatches(p.name, loss, p.value, grads[k]!, eps, rtol, atol, 256);
}

describe.each(KERNEL_BACKENDS)("Linear (%s kernels)", (backend) => {
  it("computes y = x·Wᵀ + b with W stored (out, in) row-major", () => {
    const fc = new Linear("fc", 2, 3, new Rng(1), backend);
    fc.weight.value.set([1, 2, 3, 4, 5, 6]);
    fc.bias.value.set([0.5, -0.5, 0]);
    expect(Array.from(fc.forward(new Float32Array([1, -1]), 1, false))).toEqual([-0.5, -1.5, -1]);
  });

  it("has dx, dW and db that match finite differences", async () => {
    const rng = new Rng(11);
    const fc = new Linear("fc", 7, 5, rng, backend);
    await expectLayerGradsMatch(fc, normals(rng, 3 * 7), 3, rng);
  });

  it("overwrites its grads on every backward instead of accumulating", () => {
    const rng = new Rng(12);
    const fc = new Linear("fc", 4, 3, rng, backend);
    const x = normals(rng, 2 * 4), dy = normals(rng, 2 * 3);
    fc.forward(x, 2, true);
    fc.backward(dy, 2);
    const first = Float32Array.from(fc.weight.grad);
    fc.backward(dy, 2);
    expect(Array.from(fc.weight.grad)).toEqual(Array.from(first));
    fc.forward(x, 0, true);
    fc.backward(new Float32Array(0), 0);
    expect(maxAbs(fc.weight.grad)).toBe(0);
    expect(maxAbs(fc.bias.grad)).toBe(0);
  });

  it("initializes like PyTorch: weight then bias from U(−1/√in, 1/√in) in row-major order", () => {
    const fc = new Linear("fc", 4, 3, new Rng(7), backend);
    const ref = new Rng(7);
    const expected = Array.from({ length: 15 }, () => Math.fround(ref.uniform(-0.5, 0.5)));
    expect([...fc.weight.value, ...fc.bias.value]).toEqual(expected);
  });
});

interface ConvCase {
  label: string;
  n: number;
  cin: number;
  cout: number;
  k: number;
  stride: number;
  padding: number;
  h: number;
  w: number;
}

const convCases: ConvCase[] = [
  { label: "k=1 stride 1 padding 0", n: 2, cin: 3, cout: 5, k: 1, stride: 1, padding: 0, h: 6, w: 7 },
  { label: "k=1 stride 2 padding 0 on odd sizes (resnet's shortcut)", n: 2, cin: 4, cout: 6, k: 1, stride: 2, padding: 0, h: 7, w: 5 },
  { label: "k=3 stride 2 padding 1 on odd sizes (resnet's first block of a stage)", n: 2, cin: 3, cout: 4, k: 3, stride: 2, padding: 1, h: 7, w: 9 },
  { label: "k=3 stride 1 padding 1 (the cnn's conv2 shape)", n: 2, cin: 16, cout: 32, k: 3, stride: 1, padding: 1, h: 14, w: 14 },
  { label: "k=3 stride 1 padding 1 with one input channel", n: 3, cin: 1, cout: 16, k: 3, stride: 1, padding: 1, h: 9, w: 8 },
  { label: "k=5 stride 2 padding 2", n: 2, cin: 3, cout: 4, k: 5, stride: 2, padding: 2, h: 11, w: 9 },
  { label: "k=3 stride 2 padding 0 with odd channel counts", n: 1, cin: 5, cout: 7, k: 3, stride: 2, padding: 0, h: 8, w: 9 },
  { label: "k=2 stride 3 padding 1 (stride larger than the kernel)", n: 2, cin: 2, cout: 3, k: 2, stride: 3, padding: 1, h: 7, w: 5 },
  { label: "k=4 stride 1 padding 3 (rows entirely in the padding)", n: 1, cin: 2, cout: 3, k: 4, stride: 1, padding: 3, h: 3, w: 4 },
];

function geometryOf(c: ConvCase): ConvGeometry {
  return convGeometry("conv", c.cin, c.cout, c.k, c.stride, c.padding, c.h, c.w);
}

describe("Conv2d's naive twin", () => {
  it.each(convCases)("has a float64 backward that matches finite differences for $label", async (c) => {
    const g = geometryOf(c);
    const rng = new Rng(21);
    const ySize = c.n * c.cout * g.outH * g.outW;
    const x = Float64Array.from(normals(rng, c.n * c.cin * c.h * c.w));
    const w = Float64Array.from(normals(rng, c.cout * c.cin * c.k * c.k, 0.3));
    const b = Float64Array.from(normals(rng, c.cout));
    const r = Float64Array.from(normals(rng, ySize));
    const y = new Float64Array(ySize);
    const loss = (): number => {
      conv2dForwardNaive(y, x, w, b, c.n, g);
      return dotAll(y, r);
    };
    const dx = new Float64Array(x.length), dw = new Float64Array(w.length), db = new Float64Array(b.length);
    conv2dBackwardNaive(dx, dw, db, r, x, w, c.n, g);
    for (const [what, v, grad] of [["x", x, dx], ["w", w, dw], ["b", b, db]] as const) await expectGradMatches(what, loss, v, grad, 1e-3, 1e-7, 1e-9, 40);
  });
});

describe.each(KERNEL_BACKENDS)("Conv2d (%s kernels)", (backend) => {

  it.each(convCases)("gives the same y, dx, dW and db as the naive twin for $label", (c) => {
    const rng = new Rng(22);
    const conv = new Conv2d("conv", c.cin, c.cout, c.k, c.stride, c.padding, c.h, c.w, rng, backend);
    const g = conv.geometry;
    const x = normals(rng, c.n * c.cin * c.h * c.w);
    const dy = normals(rng, c.n * c.cout * g.outH * g.outW);
    const y = conv.forward(x, c.n, true);
    const dx = conv.backward(dy, c.n);

    const x64 = Float64Array.from(x), w64 = Float64Array.from(conv.weight.value), b64 = Float64Array.from(conv.bias.value);
    const yRef = new Float64Array(y.length);
    conv2dForwardNaive(yRef, x64, w64, b64, c.n, g);
    const dxRef = new Float64Array(x.length), dwRef = new Float64Array(w64.length), dbRef = new Float64Array(b64.length);
    conv2dBackwardNaive(dxRef, dwRef, dbRef, Float64Array.from(dy), x64, w64, c.n, g);

    // float32 storage and summation against float64: relative to the largest value.
    for (const [got, ref] of [[y, yRef], [dx, dxRef], [conv.weight.grad, dwRef], [conv.bias.grad, dbRef]] as const) {
      expect(maxAbsDiff(got, ref)).toBeLessThanOrEqual(1e-5 * Math.max(1, maxAbs(ref)));
    }
  });

  it("has dx, dW and db that match finite differences of its own float32 forward", async () => {
    const rng = new Rng(23);
    const conv = new Conv2d("conv", 2, 3, 3, 2, 1, 5, 6, rng, backend);
    await expectLayerGradsMatch(conv, normals(rng, 2 * 2 * 5 * 6), 2, rng);
  });

  it("reports the per-sample output shape ⌊(H + 2p − k)/s⌋ + 1 like PyTorch", () => {
    const conv = new Conv2d("conv", 3, 8, 5, 2, 2, 11, 9, new Rng(1), backend);
    expect(conv.inShape).toEqual([3, 11, 9]);
    expect(conv.outShape).toEqual([8, 6, 5]);
  });

  it("zeroes its grads and returns empty views for an empty batch", () => {
    const rng = new Rng(24);
    const conv = new Conv2d("conv", 2, 3, 3, 1, 1, 4, 4, rng, backend);
    conv.forward(normals(rng, 2 * 2 * 16), 2, true);
    conv.backward(normals(rng, 2 * 3 * 16), 2);
    expect(conv.forward(new Float32Array(0), 0, true).length).toBe(0);
    expect(conv.backward(new Float32Array(0), 0).length).toBe(0);
    expect(maxAbs(conv.weight.grad)).toBe(0);
    expect(maxAbs(conv.bias.grad)).toBe(0);
  });

  it("initializes from the seed alone, within ±1/√(cin·k·k), weight before bias", () => {
    const a = new Conv2d("conv", 2, 3, 3, 1, 1, 5, 5, new Rng(5), backend);
    const b = new Conv2d("conv", 2, 3, 3, 1, 1, 5, 5, new Rng(5), backend);
    const c = new Conv2d("conv", 2, 3, 3, 1, 1, 5, 5, new Rng(6), backend);
    expect(Array.from(a.weight.value)).toEqual(Array.from(b.weight.value));
    expect(Array.from(a.bias.value)).toEqual(Array.from(b.bias.value));
    expect(Array.from(a.weight.value)).not.toEqual(Array.from(c.weight.value));
    const bound = 1 / Math.sqrt(18);
    expect(maxAbs(a.weight.value)).toBeLessThanOrEqual(bound);
    expect(maxAbs(a.bias.value)).toBeLessThanOrEqual(bound);
    const ref = new Rng(5);
    for (let i = 0; i < a.weight.value.length; i++) ref.next();
    expect(a.bias.value[0]).toBe(Math.fround(ref.uniform(-bound, bound)));
  });

  it("rejects a geometry with no output pixels", () => {
    expect(() => new Conv2d("conv", 1, 1, 5, 1, 0, 3, 3, new Rng(1), backend)).toThrow(SyncbnError);
  });
});

describe.each(KERNEL_BACKENDS)("ReLU (%s kernels)", (backend) => {
  it("has a dx that matches finite differences away from the kink", async () => {
    const rng = new Rng(31);
    const x = normals(rng, 3 * 2 * 4).map((v) => (v >= 0 ? v + 0.1 : v - 0.1));
    await expectLayerGradsMatch(new ReLU("relu", [2, 4], backend), x, 3, rng);
  });

  it("passes no gradient at exactly zero and propagates NaN, like PyTorch", () => {
    const relu = new ReLU("relu", [3], backend);
    const y = relu.forward(new Float32Array([0, -1, Number.NaN]), 1, true);
    expect(Array.from(y)).toEqual([0, 0, Number.NaN]);
    expect(Array.from(relu.backward(new Float32Array([5, 5, 5]), 1))).toEqual([0, 0, 5]);
  });

  it("takes an empty batch: empty y and dx", () => {
    const relu = new ReLU("relu", [3], backend);
    expect(relu.forward(new Float32Array(0), 0, true).length).toBe(0);
    expect(relu.backward(new Float32Array(0), 0).length).toBe(0);
  });

  it("refuses a backward after an eval forward, which wrote over its mask", () => {
    const relu = new ReLU("relu", [3], backend);
    relu.forward(new Float32Array([1, -1, 2]), 1, true);
    relu.forward(new Float32Array(6), 2, false);
    expect(() => relu.backward(new Float32Array(3), 1)).toThrow(/backward for 1 samples after a training forward of -1/);
  });
});

describe.each(KERNEL_BACKENDS)("MaxPool2d (%s kernels)", (backend) => {
  it("has a dx that matches finite differences with overlapping windows (k=3 stride 2)", async () => {
    const rng = new Rng(41);
    // Distinct values 0.05 apart: no window max changes under a ±0.01 step.
    const x = new Float32Array(2 * 2 * 7 * 7).map((_, i) => i * 0.05 - 4);
    rng.shuffle(x);
    await expectLayerGradsMatch(new MaxPool2d("pool", 2, 7, 7, 3, 2, backend), x, 2, rng);
  });

  it("sends the gradient to the first maximum in row-major window order on ties", () => {
    const pool = new MaxPool2d("pool", 1, 2, 4, 2, 2, backend);
    // windows [[1, 3], [3, 2]] and [[7, 7], [7, 7]]
    const y = pool.forward(new Float32Array([1, 3, 7, 7, 3, 2, 7, 7]), 1, true);
    expect(Array.from(y)).toEqual([3, 7]);
    expect(Array.from(pool.backward(new Float32Array([10, 20]), 1))).toEqual([0, 10, 20, 0, 0, 0, 0, 0]);
  });

  it("lets a NaN win its window, a later NaN over an earlier one, like PyTorch", () => {
    const pool = new MaxPool2d("pool", 1, 2, 4, 2, 2, backend);
    // windows [[NaN, 5], [1, NaN]] and [[-Inf, -Inf], [-Inf, -Inf]]
    const y = pool.forward(new Float32Array([Number.NaN, 5, -Infinity, -Infinity, 1, Number.NaN, -Infinity, -Infinity]), 1, true);
    expect(Array.from(y)).toEqual([Number.NaN, -Infinity]);
    expect(Array.from(pool.backward(new Float32Array([10, 20]), 1))).toEqual([0, 0, 20, 0, 0, 10, 0, 0]);
  });

  it("takes an empty batch: empty y and dx", () => {
    const pool = new MaxPool2d("pool", 2, 4, 4, 2, 2, backend);
    expect(pool.forward(new Float32Array(0), 0, true).length).toBe(0);
    expect(pool.backward(new Float32Array(0), 0).length).toBe(0);
  });

  it("drops the last row and column of an odd-sized input (floor mode)", () => {
    const pool = new MaxPool2d("pool", 3, 5, 5, 2, 2, backend);
    expect(pool.outShape).toEqual([3, 2, 2]);
    const x = new Float32Array(3 * 25).map((_, i) => (i % 5 === 4 || Math.floor(i / 5) % 5 === 4 ? 100 : i));
    expect(Math.max(...pool.forward(x, 1, false))).toBeLessThan(100);
  });
});

describe("Flatten", () => {
  it("returns its input view and dy unchanged, with the product shape", () => {
    const flat = new Flatten("flat", [32, 7, 7]);
    expect(flat.outShape).toEqual([32 * 7 * 7]);
    const x = new Float32Array(2 * 32 * 49);
    expect(flat.forward(x, 2, true)).toBe(x);
    expect(flat.backward(x, 2)).toBe(x);
  });
});

describe("SoftmaxCrossEntropy", () => {
  const logits = new Float32Array([1, 2, 3, 0, 0, 0, 0, 5, 0]);
  const labels = new Uint8Array([2, 0, 2]);

  it("gives the hand-computed loss sum, accuracy and gradient for a tiny batch", () => {
    const ce = new SoftmaxCrossEntropy(3);
    const { lossSum, correct } = ce.forward(logits, labels, 3, 4);
    expect(lossSum).toBeCloseTo(0.4076059644443806 + 1.0986122886681098 + 5.013385901721449, 6);
    expect(correct).toBe(2); // the all-equal row counts: argmax picks the first maximum
    const p = [0.09003057317038046, 0.24472847105479764, 0.6652409557748218, 1 / 3, 1 / 3, 1 / 3,
      0.006648354478866005, 0.9867032910422682, 0.006648354478866005];
    const onehot = [0, 0, 1, 1, 0, 0, 0, 0, 1];
    const d = ce.backward(3);
    for (let i = 0; i < 9; i++) expect(d[i]).toBeCloseTo((p[i] - onehot[i]) / 4, 7);
  });

  it("has a gradient that matches finite differences of lossSum / globalBatch", async () => {
    const rng = new Rng(51);
    const ce = new SoftmaxCrossEntropy(10);
    const z = normals(rng, 4 * 10, 3);
    const y = new Int32Array([3, 0, 9, 3]);
    ce.forward(z, y, 4, 6);
    const d = Float32Array.from(ce.backward(4));
    await expectGradMatches("z", () => ce.forward(z, y, 4, 6).lossSum / 6, z, d, 1e-3, 1e-3, 1e-6, 256);
  });

  it("splits across workers: per-worker sums add up and gradients equal one worker over the whole batch", () => {
    const whole = new SoftmaxCrossEntropy(3);
    const all = whole.forward(logits, labels, 3, 3);
    const dAll = Array.from(whole.backward(3));
    const w0 = new SoftmaxCrossEntropy(3), w1 = new SoftmaxCrossEntropy(3);
    const r0 = w0.forward(logits.subarray(0, 3), labels.subarray(0, 1), 1, 3);
    const r1 = w1.forward(logits.subarray(3), labels.subarray(1), 2, 3);
    expect(r0.lossSum + r1.lossSum).toBeCloseTo(all.lossSum, 12);
    expect(r0.correct + r1.correct).toBe(all.correct);
    expect([...w0.backward(1), ...w1.backward(2)]).toEqual(dAll);
  });

  it("stays finite for logits of ±1000", () => {
    const ce = new SoftmaxCrossEntropy(3);
    const z = new Float32Array([1000, 0, -1000, 1000, 0, -1000]);
    const { lossSum } = ce.forward(z, new Uint8Array([0, 1]), 2, 2);
    expect(lossSum).toBeCloseTo(1000, 6);
    expect(Array.from(ce.backward(2)).every(Number.isFinite)).toBe(true);
  });

  it("rejects a label outside 0..K−1 with a data error", () => {
    const ce = new SoftmaxCrossEntropy(3);
    expect(() => ce.forward(logits, new Uint8Array([0, 3, 1]), 3, 3)).toThrow(ErrorCode.Data);
  });
});

describe("SGD", () => {
  function param(value: number[], grad: number[], decay?: boolean) {
    return { name: "p", value: new Float32Array(value), grad: new Float32Array(grad), decay };
  }

  it("follows the hand-computed two-step trajectory with momentum and weight decay", () => {
    const p = param([1, -2], [0.5, 0.25]);
    const sgd = new SGD([p], { lr: 0.1, momentum: 0.9, weightDecay: 0.01 });
    sgd.step();
    // g = 0.5 + 0.01·1 = 0.51, buf = g (first step), p = 1 − 0.1·0.51
    // g = 0.25 + 0.01·(−2) = 0.23, buf = 0.23, p = −2 − 0.023
    expect(p.value[0]).toBeCloseTo(0.949, 6);
    expect(p.value[1]).toBeCloseTo(-2.023, 6);
    expect(sgd.state()[0][0]).toBeCloseTo(0.51, 7);
    p.grad.set([-0.25, 0]);
    sgd.step();
    // g = −0.25 + 0.01·0.949 = −0.24051, buf = 0.9·0.51 − 0.24051 = 0.21849, p = 0.949 − 0.021849
    // g = 0.01·(−2.023) = −0.02023, buf = 0.9·0.23 − 0.02023 = 0.18677, p = −2.023 − 0.018677
    expect(p.value[0]).toBeCloseTo(0.927151, 6);
    expect(p.value[1]).toBeCloseTo(-2.041677, 6);
  });

  it("skips weight decay for params marked decay: false", () => {
    const p = param([1], [0.5], false);
    new SGD([p], { lr: 0.1, momentum: 0.9, weightDecay: 0.5 }).step();
    expect(p.value[0]).toBeCloseTo(0.95, 7);
  });

  it("takes a plain step p −= lr·(grad + wd·p) without momentum", () => {
    const p = param([2], [1]);
    new SGD([p], { lr: 0.5, momentum: 0, weightDecay: 0.1 }).step();
    expect(p.value[0]).toBeCloseTo(2 - 0.5 * 1.2, 7);
  });

  it("resumes bit-identically from saved momentum buffers", () => {
    const a = param([1, 2, 3], [0.1, -0.2, 0.3]);
    const optA = new SGD([a], { lr: 0.05, momentum: 0.9, weightDecay: 1e-4 });
    optA.step();
    const b = param(Array.from(a.value), Array.from(a.grad));
    const optB = new SGD([b], { lr: 0.05, momentum: 0.9, weightDecay: 1e-4 });
    optB.loadState(optA.state().map((s) => Float32Array.from(s)));
    optA.step();
    optB.step();
    expect(Array.from(b.value)).toEqual(Array.from(a.value));
  });

  it("refuses momentum buffers that do not fit the params", () => {
    const sgd = new SGD([param([1, 2], [0, 0])], { lr: 0.1, momentum: 0.9, weightDecay: 0 });
    expect(() => sgd.loadState([new Float32Array(3)])).toThrow(ErrorCode.Checkpoint);
    expect(() => sgd.loadState([])).toThrow(ErrorCode.Checkpoint);
  });
});
