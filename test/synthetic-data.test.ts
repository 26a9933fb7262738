// Tests of the embedded synthetic data (determinism, balance, statistics,
// learnable-but-not-trivial) and of gatherBatch on it. The IDX reader and the real
// Fashion-MNIST are in data.test.ts. Not a training test: no model is involved.

import { describe, expect, it } from "vitest";
import { gatherBatch, loadDataset, type Dataset } from "../worker/data/dataset.js";
import { generateSynthetic, SYNTHETIC_DEFAULT_TEST, SYNTHETIC_DEFAULT_TRAIN } from "../worker/data/synthetic.js";
import { meanStd } from "./compare.js";

const PIXELS = 784;

/** Nearest-class-mean accuracy (squared Euclidean) of test given train; prepare maps an image to features. */
function nearestClassMeanAccuracy(train: Dataset, test: Dataset, prepare: (img: Float32Array) => Float32Array): number {
  const classes = train.classes;
  const means = new Float64Array(classes * PIXELS); // (classes, 784)
  const counts = new Float64Array(classes);
  for (let n = 0; n < train.count; n++) {
    const x = prepare(train.images.subarray(n * PIXELS, (n + 1) * PIXELS));
    const c = train.labels[n]!;
    counts[c]!++;
    for (let i = 0; i < PIXELS; i++) means[c * PIXELS + i]! += x[i]!;
  }
  for (let c = 0; c < classes; c++) for (let i = 0; i < PIXELS; i++) means[c * PIXELS + i]! /= counts[c]!;
  let correct = 0;
  for (let n = 0; n < test.count; n++) {
    const x = prepare(test.images.subarray(n * PIXELS, (n + 1) * PIXELS));
    let best = -1;
    let bestDist = Infinity;
    for (let c = 0; c < classes; c++) {
      let d = 0;
      for (let i = 0; i < PIXELS; i++) d += (x[i]! - means[c * PIXELS + i]!) ** 2;
      if (d < bestDist) {
        bestDist = d;
        best = c;
      }
    }
    if (best === test.labels[n]) correct++;
  }
  return correct / test.count;
}

function perImageStandardized(img: Float32Array): Float32Array {
  let s = 0;
  for (const v of img) s += v;
  const mean = s / img.length;
  let s2 = 0;
  for (const v of img) s2 += (v - mean) ** 2;
  const invStd = 1 / Math.sqrt(s2 / img.length + 1e-12);
  return img.map((v) => (v - mean) * invStd);
}

// ---------------------------------------------------------------- synthetic

describe("synthetic data", () => {
  it("gives identical images and labels for the same seed", () => {
    const a = generateSynthetic({ seed: 42, trainSize: 300, testSize: 50 });
    const b = generateSynthetic({ seed: 42, trainSize: 300, testSize: 50 });
    expect(Buffer.from(a.train.images.buffer).equals(Buffer.from(b.train.images.buffer))).toBe(true);
    expect(Array.from(a.train.labels)).toEqual(Array.from(b.train.labels));
    expect(Buffer.from(a.test.images.buffer).equals(Buffer.from(b.test.images.buffer))).toBe(true);
  });

  it("gives different images and label orders for different seeds", () => {
    const a = generateSynthetic({ seed: 1, trainSize: 300, testSize: 50 });
    const b = generateSynthetic({ seed: 2, trainSize: 300, testSize: 50 });
    expect(Array.from(a.train.labels)).not.toEqual(Array.from(b.train.labels));
    let same = 0;
    for (let i = 0; i < a.train.images.length; i++) if (a.train.images[i] === b.train.images[i]) same++;
    expect(same).toBeLessThan(a.train.images.length / 100);
  });

  it("draws train and test from different random streams", () => {
    const { train, test } = generateSynthetic({ seed: 3, trainSize: 50, testSize: 50 });
    expect(Array.from(train.labels)).not.toEqual(Array.from(test.labels));
    expect(train.images.subarray(0, PIXELS)).not.toEqual(test.images.subarray(0, PIXELS));
  });

  it("makes a smaller split the prefix of a larger one with the same seed", () => {
    const small = generateSynthetic({ seed: 5, trainSize: 37, testSize: 11 });
    const large = generateSynthetic({ seed: 5, trainSize: 200, testSize: 40 });
    expect(small.train.images).toEqual(large.train.images.subarray(0, 37 * PIXELS));
    expect(Array.from(small.train.labels)).toEqual(Array.from(large.train.labels.subarray(0, 37)));
    expect(small.test.images).toEqual(large.test.images.subarray(0, 11 * PIXELS));
  });

  it("has the default sizes and the Fashion-MNIST sample shape", () => {
    const { train, test } = generateSynthetic({ seed: 0 });
    expect(train.count).toBe(SYNTHETIC_DEFAULT_TRAIN);
    expect(test.count).toBe(SYNTHETIC_DEFAULT_TEST);
    expect(train.images.length).toBe(SYNTHETIC_DEFAULT_TRAIN * PIXELS);
    expect(train.labels.length).toBe(SYNTHETIC_DEFAULT_TRAIN);
    expect(train.sampleShape).toEqual([1, 28, 28]);
    expect(train.classes).toBe(10);
    expect(train.name).toBe("synthetic/train");
    expect(test.name).toBe("synthetic/test");
  });

  it("balances the classes exactly at the default size and within one sample per class at any size", () => {
    const { train } = generateSynthetic({ seed: 0, testSize: 1 });
    const counts = new Array<number>(10).fill(0);
    for (const l of train.labels) counts[l]!++;
    expect(counts).toEqual(new Array<number>(10).fill(SYNTHETIC_DEFAULT_TRAIN / 10));

    const odd = generateSynthetic({ seed: 9, trainSize: 1003, testSize: 17 });
    for (const ds of [odd.train, odd.test]) {
      const c = new Array<number>(10).fill(0);
      for (const l of ds.labels) c[l]!++;
      expect(Math.max(...c) - Math.min(...c)).toBeLessThanOrEqual(1);
      expect(c.reduce((a, b) => a + b, 0)).toBe(ds.count);
    }
  });

  it("standardizes pixels to mean ≈ 0 and std ≈ 1 for any seed, with every value finite", () => {
    for (const seed of [0, 7]) {
      const { train, test } = generateSynthetic({ seed });
      for (const ds of [train, test]) {
        expect(ds.images.every(Number.isFinite)).toBe(true);
        const { mean, std } = meanStd(ds.images);
        expect(Math.abs(mean)).toBeLessThan(0.05);
        expect(Math.abs(std - 1)).toBeLessThan(0.05);
      }
    }
  });

  it("varies the scale and brightness of images widely (what makes normalization matter)", () => {
    const { train } = generateSynthetic({ seed: 0, trainSize: 2000, testSize: 1 });
    const stds: number[] = [];
    const means: number[] = [];
    for (let n = 0; n < train.count; n++) {
      const s = meanStd(train.images.subarray(n * PIXELS, (n + 1) * PIXELS));
      stds.push(s.std);
      means.push(s.mean);
    }
    const q = (a: number[], p: number) => [...a].sort((x, y) => x - y)[Math.floor(p * (a.length - 1))]!;
    // Per-image contrast spans several-fold between the 10th and 90th percentile...
    expect(q(stds, 0.9) / q(stds, 0.1)).toBeGreaterThan(3);
    // ...and per-image brightness moves by about a global std.
    expect(q(means, 0.9) - q(means, 0.1)).toBeGreaterThan(1);
  });

  it("is learnable but not trivial: nearest class mean beats chance clearly, yet stays far from perfect", () => {
    const { train, test } = generateSynthetic({ seed: 0 });
    const raw = nearestClassMeanAccuracy(train, test, (x) => x);
    const standardized = nearestClassMeanAccuracy(train, test, perImageStandardized);
    // Measured: raw ≈ 0.23, per-image standardized ≈ 0.43 (chance 0.10). A small
    // CNN reaches ≈ 0.85–0.9 (see worker/data/synthetic.ts).
    expect(raw).toBeGreaterThan(0.17);
    expect(standardized).toBeGreaterThan(0.3);
    expect(standardized).toBeLessThan(0.7);
    // Removing each image's own scale helps a pixel-space classifier a lot: the
    // per-image gain and offset are the nuisance, not the class.
    expect(standardized - raw).toBeGreaterThan(0.1);
  });

  it("is what loadDataset('synthetic') returns, with a source line naming the seed and sizes", async () => {
    const loaded = await loadDataset("synthetic", { seed: 11, trainSize: 40, testSize: 20 });
    const direct = generateSynthetic({ seed: 11, trainSize: 40, testSize: 20 });
    expect(loaded.train.images).toEqual(direct.train.images);
    expect(loaded.test.labels).toEqual(direct.test.labels);
    expect(loaded.source).toContain("seed 11");
    expect(loaded.source).toContain("40 train / 20 test");
  });

  it("refuses a training size that is not a positive integer", async () => {
    await expect(loadDataset("synthetic", { seed: 0, trainSize: 0 })).rejects.toThrow(/--train-size must be a positive integer, got 0/);
    await expect(loadDataset("synthetic", { seed: 0, testSize: 2.5 })).rejects.toThrow(/--test-size must be a positive integer/);
  });
});

// ---------------------------------------------------------------- IDX

// ---------------------------------------------------------------- gatherBatch

describe("gatherBatch", () => {
  const { train } = generateSynthetic({ seed: 4, trainSize: 20, testSize: 1 });

  it("copies the samples at indices[from..from+n) in order, with their labels", () => {
    const indices = Uint32Array.from([5, 19, 0, 7, 7, 3]);
    const out = new Float32Array(4 * PIXELS); // (4, 1, 28, 28)
    const outLabels = new Uint8Array(4);
    gatherBatch(out, outLabels, train, indices, 1, 3);
    const expected = [19, 0, 7];
    expected.forEach((idx, b) => {
      expect(out.subarray(b * PIXELS, (b + 1) * PIXELS)).toEqual(train.images.subarray(idx * PIXELS, (idx + 1) * PIXELS));
      expect(outLabels[b]).toBe(train.labels[idx]);
    });
    expect(out.subarray(3 * PIXELS).every((v) => v === 0)).toBe(true); // slot 3 untouched
  });

  it("throws a RangeError for a range past the indices, an index past the data, or a too-small buffer", () => {
    const out = new Float32Array(2 * PIXELS);
    const outLabels = new Uint8Array(2);
    expect(() => gatherBatch(out, outLabels, train, [0, 1], 1, 2)).toThrow(RangeError);
    expect(() => gatherBatch(out, outLabels, train, [0, 20], 0, 2)).toThrow(/index 20 \(position 1\)/);
    expect(() => gatherBatch(new Float32Array(PIXELS), outLabels, train, [0, 1], 0, 2)).toThrow(RangeError);
  });
});
