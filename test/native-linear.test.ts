// Linear on the native kernels (native/linear.cc, --kernels native): FMA GEMMs, so
// y, dx, dW and db are the TypeScript twin's values within float32 rounding, not
// its bits; and, bit for bit, the same for any number of the addon's threads, run
// to run, and with rank segments as each rank alone. Also NaN/±Inf, an empty
// batch and bounds checks. Skipped only with SYNCBN_NATIVE=off (a machine without
// the addon; native-kernels.test.ts asserts the refusal there). Whole runs of mlp
// and cnn on native: whole-run.test.ts.

import { describe, expect, it } from "vitest";
import { Rng } from "../shared/rng.js";
import { LinearNative } from "../worker/nn/kernels/linear-native.js";
import { disableNative, nativeKernels } from "../worker/nn/kernels/native.js";
import { Linear } from "../worker/nn/linear.js";
import { expectClose, normals } from "./compare.js";
import { expectBits } from "./step-kernels.js";

const off = process.env.SYNCBN_NATIVE === "off";
if (off) disableNative("SYNCBN_NATIVE=off");

interface Case { label: string; n: number; inF: number; outF: number }
const cases: Case[] = [
  { label: "1 sample, 3 → 5", n: 1, inF: 3, outF: 5 },
  { label: "mlp's fc1 at 8 per rank, 784 → 256", n: 8, inF: 784, outF: 256 },
  { label: "13 samples, 256 → 130 (parts of uneven columns)", n: 13, inF: 256, outF: 130 },
  { label: "cnn's fc at 32, 1568 → 64", n: 32, inF: 1568, outF: 64 },
  { label: "resnet's fc, 64 → 10", n: 6, inF: 64, outF: 10 },
];

/** The bound on |native − twin| / max|twin| for sums of `terms` float32 products (native-kernels.test.ts's, there derived). */
const rtol = (terms: number): number => 8 * 2 ** -24 * Math.sqrt(Math.max(1, terms));

/** Training forward, backward and an eval forward of 3 other samples; every output copied. */
function passes(layer: Linear, c: Case, seed: number, segments = 1): Float32Array[] {
  const rng = new Rng(seed);
  const x = normals(rng, c.n * c.inF), dy = normals(rng, c.n * c.outF), xe = normals(rng, 3 * c.inF);
  if (segments > 1) layer.setRankSegments(segments);
  const y = (layer.forward(x, c.n, true) as Float32Array).slice();
  const dx = (layer.backward(dy, c.n) as Float32Array).slice();
  const ye = (layer.forward(xe, 3, false) as Float32Array).slice();
  return [y, dx, layer.weight.grad.slice(), layer.bias.grad.slice(), ye];
}

/** A native Linear whose kernel runs on `threads` of the addon's pool. */
function nativeLinear(c: Case, seed: number, threads: number): Linear {
  const l = new Linear("fc", c.inF, c.outF, new Rng(seed), "native");
  (l as unknown as { kernel: LinearNative }).kernel = new LinearNative(c.inF, c.outF, nativeKernels()!, threads);
  return l;
}

describe.skipIf(off)("Linear on the native kernels", () => {
  it.each(cases)("gives the TypeScript twin's y, dx, dW, db within float32 rounding ($label)", (c) => {
    const js = passes(new Linear("fc", c.inF, c.outF, new Rng(5), "js"), c, 6);
    const native = new Linear("fc", c.inF, c.outF, new Rng(5), "native");
    expect((native as unknown as { kernel: unknown }).kernel, "the addon's path, not a twin").toBeInstanceOf(LinearNative);
    const nat = passes(native, c, 6);
    // y and the eval y sum over in, dx over out, dW over the samples; db is float64 in both.
    [rtol(c.inF), rtol(c.outF), rtol(c.n), rtol(c.n), rtol(c.inF)].forEach((tol, i) => expectClose(`${c.label}: output ${i}`, nat[i]!, js[i]!, tol));
  });

  it("gives the same bits on 1, 2, 3 and 5 threads and run to run, with and without rank segments", () => {
    for (const c of [cases[1]!, cases[2]!, cases[3]!]) {
      for (const segments of [1, 2, 4].filter((s) => c.n % s === 0)) {
        const one = passes(nativeLinear(c, 7, 1), c, 8, segments);
        for (const threads of [1, 2, 3, 5]) {
          passes(nativeLinear(c, 7, threads), c, 8, segments).forEach((a, i) => expectBits(`${c.label}, ${segments} segments, ${threads} threads, output ${i}`, a, one[i]!));
        }
      }
    }
  });

  // 1 to 4 samples a rank take the fused loop (native/linear.cc segmentGradsFused), 5 the GEMM per segment;
  // 784 inputs span two of the fused loop's column blocks, 130 and 67 outputs end in a partial group of rows.
  it.each([
    { per: 1, inF: 256, outF: 130 },
    { per: 2, inF: 256, outF: 130 },
    { per: 2, inF: 784, outF: 67 },
    { per: 3, inF: 784, outF: 67 },
    { per: 4, inF: 100, outF: 9 },
    { per: 5, inF: 256, outF: 130 },
  ])("gives each rank segment's dW and db as that rank alone would, summed in float64 and rounded once (4 ranks × $per, $inF → $outF)", ({ per, inF, outF }) => {
    const c = { n: 4 * per, inF, outF };
    const rng = new Rng(9), x = normals(rng, c.n * c.inF), dy = normals(rng, c.n * c.outF);
    const alone = [0, 1, 2, 3].map((r) => {
      const l = new Linear("fc", c.inF, c.outF, new Rng(10), "native");
      l.forward(x.subarray(r * per * c.inF), per, true);
      l.backward(dy.subarray(r * per * c.outF), per);
      return [Float64Array.from(l.weight.grad), Float64Array.from(l.bias.grad)];
    });
    for (const threads of [1, 3]) {
      const block = nativeLinear({ label: "block", ...c }, 10, threads);
      block.setRankSegments(4);
      block.forward(x, c.n, true);
      block.backward(dy, c.n);
      for (const [i, got] of [block.weight.grad, block.bias.grad].entries()) {
        const want = new Float32Array(got.length);
        for (let j = 0; j < want.length; j++) want[j] = alone[0]![i]![j]! + alone[1]![i]![j]! + alone[2]![i]![j]! + alone[3]![i]![j]!;
        expectBits(`${threads} threads, ${i === 0 ? "dW" : "db"}`, got, want);
      }
    }
  });

  it("zeroes its grads and returns empty views for an empty batch, and propagates NaN and ±Inf where the twin does", () => {
    const c = cases[2]!;
    const l = new Linear("fc", c.inF, c.outF, new Rng(11), "native");
    l.weight.grad.fill(7);
    l.bias.grad.fill(7);
    expect((l.forward(new Float32Array(0), 0, true) as Float32Array).length).toBe(0);
    expect((l.backward(new Float32Array(0), 0) as Float32Array).length).toBe(0);
    expect(l.weight.grad.every((v) => v === 0) && l.bias.grad.every((v) => v === 0)).toBe(true);
    const rng = new Rng(12), x = normals(rng, c.n * c.inF), dy = normals(rng, c.n * c.outF);
    x[5] = NaN;
    x[c.inF + 3] = Infinity;
    dy[2 * c.outF + 1] = -Infinity;
    const run = (backend: "js" | "native"): Float32Array[] => {
      const k = new Linear("fc", c.inF, c.outF, new Rng(11), backend);
      const y = (k.forward(x, c.n, true) as Float32Array).slice();
      return [y, (k.backward(dy, c.n) as Float32Array).slice(), k.weight.grad.slice(), k.bias.grad.slice()];
    };
    const [js, nat] = [run("js"), run("native")];
    js.forEach((a, i) => {
      const kinds = (v: Float32Array): string => Array.from(v, (e) => (Number.isNaN(e) ? "n" : e === Infinity ? "+" : e === -Infinity ? "-" : ".")).join("");
      expect(kinds(nat[i]!), `output ${i}: NaN and ±Inf in the same places`).toBe(kinds(a));
    });
    expect(nat[0]!.some((v) => Number.isNaN(v)), "a NaN that could be lost").toBe(true);
  });

  it("rejects arrays too short for the call instead of writing past them", () => {
    const k = nativeKernels()!;
    const f = (n: number): Float32Array => new Float32Array(n);
    expect(() => k.linearForward(f(7), f(12), f(6), f(2), 4, 3, 2)).toThrow(/y: 7 elements, needs 8/);
    expect(() => k.linearForward(f(8), f(12), f(5), f(2), 4, 3, 2)).toThrow(/w: 5 elements, needs 6/);
    expect(() => k.linearBackward(f(11), f(6), f(2), f(8), f(12), f(6), 0, 4, 3, 2)).toThrow(/dx: 11 elements, needs 12/);
    expect(() => k.linearBackward(f(0), f(6), f(2), f(8), f(12), f(6), 1, 4, 3, 2)).toThrow(/dy: 8 elements, needs 10/);
    expect(() => k.linearBackward(f(0), f(0), f(0), f(8), f(12), f(6), 0, 4, 3, 2, 0)).toThrow(/threads must be in 1..256/);
    const d = (n: number): Float64Array => new Float64Array(n);
    expect(() => k.linearSegmentGrads(d(6), d(2), f(6), f(2), f(8), f(12), 4, 3, 3, 2)).toThrow(/segments: expected a divisor of n/);
    expect(() => k.linearSegmentGrads(d(5), d(2), f(6), f(2), f(8), f(12), 4, 2, 3, 2)).toThrow(/dw64: 5 elements, needs 6/);
  });
});
