// The native convolution kernels (native/, --kernels native): FMA GEMMs, so y, dx,
// dW and db are the JS and WebAssembly twins' values within float32 rounding (a
// bound from the sums' lengths, below), not their bits; and, bit for bit, the same
// on every micro-kernel the CPU has (AVX-512, AVX2, baseline), run to run, for any
// number of threads, and with rank segments as each rank alone. Also NaN/±Inf/−0,
// an empty batch, bounds checks and, last, the fallback when the addon is not
// there. The addon is built by `npm ci` (scripts/build-native.mjs): if it is
// missing these tests FAIL, unless SYNCBN_NATIVE=off says this machine runs
// without it (then the native-only tests are skipped and the loader's refusal and
// the wasm fallback are asserted). Whole runs on native: test/whole-run.test.ts;
// the CLI's choice: kernel-choice.test.ts.

import { afterAll, describe, expect, it } from "vitest";
import { Rng } from "../shared/rng.js";
import { col2imAdd, Conv2d, im2col, type ConvGeometry } from "../worker/nn/conv2d.js";
import type { RankSegments } from "../worker/nn/layer.js";
import { convKernelBackend, setKernelBackend } from "../worker/nn/kernels/backend.js";
import { ConvNative } from "../worker/nn/kernels/conv-native.js";
import { disableNative, nativeKernels, nativeUnavailableReason } from "../worker/nn/kernels/native.js";
import { expectClose, maxAbs, normals } from "./compare.js";

/** As cli/main.ts does for SYNCBN_NATIVE=off: this process never loads the addon. */
const off = process.env.SYNCBN_NATIVE === "off";
if (off) disableNative("SYNCBN_NATIVE=off");

interface ConvCase { label: string; n: number; cin: number; cout: number; k: number; stride: number; padding: number; h: number; w: number }

const convCases: ConvCase[] = [
  { label: "1×1 conv, odd channels, batch 1", n: 1, cin: 3, cout: 5, k: 1, stride: 1, padding: 0, h: 6, w: 7 },
  { label: "3×3 pad 1, 16→16 at 28×28 (resnet:3's first stage), batch 4", n: 4, cin: 16, cout: 16, k: 3, stride: 1, padding: 1, h: 28, w: 28 },
  { label: "3×3 stride 2 pad 1, 7 output channels (not a block multiple)", n: 3, cin: 5, cout: 7, k: 3, stride: 2, padding: 1, h: 9, w: 11 },
  { label: "1×1 stride 2 shortcut 16→32 at 28×28", n: 2, cin: 16, cout: 32, k: 1, stride: 2, padding: 0, h: 28, w: 28 },
  { label: "5×5 stride 1 pad 0, 13 output channels", n: 2, cin: 2, cout: 13, k: 5, stride: 1, padding: 0, h: 9, w: 9 },
  { label: "4×4 pad 3 (rows entirely in the padding)", n: 2, cin: 2, cout: 3, k: 4, stride: 1, padding: 3, h: 3, w: 4 },
  { label: "2×2 stride 3 pad 1 (stride larger than the kernel)", n: 2, cin: 2, cout: 6, k: 2, stride: 3, padding: 1, h: 7, w: 5 },
  { label: "3×3 stride 2 pad 1, 32→64 at 14×14", n: 2, cin: 32, cout: 64, k: 3, stride: 2, padding: 1, h: 14, w: 14 },
  { label: "3×3 pad 1, 64→64 at 7×7 (P = 49: 5 samples stacked per direct GEMM; 8 side by side on im2col's path), batch 11", n: 11, cin: 64, cout: 64, k: 3, stride: 1, padding: 1, h: 7, w: 7 },
  // More for the direct path (native/direct.cc: stride 1, most of the padded grid kept), as the first, 16→16 and 64→64 above.
  { label: "3×3 pad 1, 32→32 at 14×14 (resnet:3's second stage, direct), batch 3", n: 3, cin: 32, cout: 32, k: 3, stride: 1, padding: 1, h: 14, w: 14 },
  { label: "5×5 pad 1 at 20×20, 3→10 (direct, not same-size, channels not a tile multiple)", n: 2, cin: 3, cout: 10, k: 5, stride: 1, padding: 1, h: 20, w: 20 },
  { label: "1×1 stride 1 at 16×16, 5→7 (direct, no padding)", n: 2, cin: 5, cout: 7, k: 1, stride: 1, padding: 0, h: 16, w: 16 },
  { label: "2×2 pad 0 at 13×15, 3→13 (direct, an even kernel: dx padded on one side only in effect)", n: 3, cin: 3, cout: 13, k: 2, stride: 1, padding: 0, h: 13, w: 15 },
];
/** The cases that take the direct path (asserted below, so a changed rule shows). */
const DIRECT = [0, 1, 8, 9, 10, 11, 12];

function make(c: ConvCase, seed: number, backend: "js" | "wasm" | "native"): Conv2d {
  return new Conv2d("conv", c.cin, c.cout, c.k, c.stride, c.padding, c.h, c.w, new Rng(seed), backend);
}

function pair(c: ConvCase, seed: number): [Conv2d, Conv2d] {
  return [make(c, seed, "js"), make(c, seed, "native")];
}

/**
 * The bound on |native − twin| / max|twin| for a sum of `terms` float32 products.
 * Each of the K roundings of a running sum errs by at most u·|partial sum| (u = 2⁻²⁴);
 * with random signs the partial sums grow as √t, so the error of one sum has a
 * standard deviation near u·σ·K/√6 while max|result| over the tensor is about
 * 4σ√K: the worst element of either evaluation ends near 0.5·u·√K of the maximum,
 * and the two (FMA and not) differ by at most about twice that. 8·u·√K leaves a
 * factor of 8 for the tails; a kernel bug (a term dropped or doubled) is ≥ 1/K.
 */
function rtol(terms: number): number {
  return 8 * 2 ** -24 * Math.sqrt(Math.max(1, terms));
}

/** Each output's sum length: y over R = cin·k·k; dx over cout then up to k² col2im adds; dW over P per sample (float64 across samples); db as ConvWasm. */
function termsOf(c: ConvCase, g: { outH: number; outW: number }): { y: number; dx: number; dW: number; db: number } {
  return { y: c.cin * c.k * c.k, dx: c.cout * c.k * c.k, dW: g.outH * g.outW, db: g.outH * g.outW };
}

/** The same float32 bits, element for element (NaN payloads included). */
function expectBits(what: string, got: Float32Array, ref: Float32Array): void {
  expect(got.length, `${what} length`).toBe(ref.length);
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length), r = new Uint32Array(ref.buffer, ref.byteOffset, ref.length);
  let differ = 0, first = -1;
  for (let i = 0; i < r.length; i++) if (g[i] !== r[i]) { differ++; if (first < 0) first = i; }
  if (differ > 0) expect.fail(`${what}: ${differ} of ${r.length} elements differ, first at ${first} (${got[first]} vs ${ref[first]})`);
}

/** Forward (training), backward, then an eval forward of 5 other samples, on `conv`; every output copied. */
function passes(conv: Conv2d, c: ConvCase, seed: number, segments: number): Float32Array[] {
  const rng = new Rng(seed), g = conv.geometry;
  const x = normals(rng, c.n * c.cin * c.h * c.w);
  const dy = normals(rng, c.n * c.cout * g.outH * g.outW);
  const xe = normals(rng, 5 * c.cin * c.h * c.w);
  if (segments > 1) conv.setRankSegments(segments);
  const y = conv.forward(x, c.n, true).slice();
  const dx = conv.backward(dy, c.n).slice();
  const ye = conv.forward(xe, 5, false).slice();
  return [y, dx, conv.weight.grad.slice(), conv.bias.grad.slice(), ye];
}
const OUTPUTS = ["y", "dx", "dW", "db", "eval y"] as const;

/** The micro-kernels this CPU can run (isa(name) refuses the others), the automatic choice first. */
const ISAS: string[] = [];
if (!off && nativeKernels()) {
  const k = nativeKernels()!, auto = k.isa();
  for (const name of [auto, ...["avx512f", "avx2", "baseline"].filter((n) => n !== auto)]) {
    try {
      k.isa(name);
      ISAS.push(name);
    } catch {}
  }
  k.isa(auto);
}

describe("the native addon", () => {
  it("is built and loads, or with SYNCBN_NATIVE=off (never under CI, which builds it) is refused with that reason", () => {
    if (process.env.CI) expect(off, "SYNCBN_NATIVE=off under CI would drop native coverage").toBe(false);
    if (off) {
      expect(nativeKernels()).toBeNull();
      expect(nativeUnavailableReason()).toBe("SYNCBN_NATIVE=off");
      return;
    }
    expect(nativeKernels(), nativeUnavailableReason()).not.toBeNull();
    expect(["avx512f", "avx2", "baseline"]).toContain(nativeKernels()!.isa());
  });
});

describe.skipIf(off)("Conv2d on the native kernels", () => {
  afterAll(() => void nativeKernels()?.isa(ISAS[0]!));

  it.each(convCases)("gives the JS and wasm twins' y, dx, dW, db and eval y within float32 rounding of the sums' lengths for $label", (c) => {
    const nat = passes(make(c, 91, "native"), c, 92, 1);
    const t = termsOf(c, make(c, 91, "js").geometry);
    const tol = [t.y, t.dx, t.dW, t.db, t.y].map(rtol);
    for (const twin of ["js", "wasm"] as const) {
      const ref = passes(make(c, 91, twin), c, 92, 1);
      OUTPUTS.forEach((name, i) => expectClose(`${twin} ${name}`, nat[i]!, ref[i]!, tol[i]));
    }
    // db is the same TypeScript row sums as ConvWasm's: its bits.
    expectBits("db", nat[3]!, passes(make(c, 91, "wasm"), c, 92, 1)[3]!);
  });

  it.each(convCases)("gives the same bits on every micro-kernel the CPU has (one FMA chain per element) for $label", (c) => {
    const k = nativeKernels()!;
    expect(ISAS.length).toBeGreaterThan(0);
    const ref = passes(make(c, 191, "native"), c, 192, 1);
    for (const isa of ISAS.slice(1)) {
      k.isa(isa);
      passes(make(c, 191, "native"), c, 192, 1).forEach((a, t) => expectBits(`${isa} ${OUTPUTS[t]}`, a, ref[t]!));
    }
    k.isa(ISAS[0]!);
  });

  it("takes the direct path exactly for stride-1 convs that keep most of the padded grid, and gives there the im2col path's y and dW bits and dx within float32 rounding", () => {
    const k = nativeKernels()!;
    const direct = (c: ConvCase): boolean => {
      const g = make(c, 1, "js").geometry;
      return k.convDirect(g.cin, g.inH, g.inW, g.kernel, g.stride, g.padding, g.outH, g.outW);
    };
    expect(convCases.map((c, i) => (direct(c) ? i : -1)).filter((i) => i >= 0)).toEqual(DIRECT);
    try {
      for (const i of DIRECT) {
        const c = convCases[i]!;
        for (const threads of [1, 2]) {
          const run = (on: boolean): Float32Array[] => {
            k.convDirect(on);
            const conv = make(c, 291, "native");
            (conv as unknown as { kernel: ConvNative }).kernel = new ConvNative(conv.geometry, k, threads, 0);
            return passes(conv, c, 292, 1);
          };
          const [im2col, dir] = [run(false), run(true)];
          expect(direct(c), "the switch back on").toBe(true);
          for (const t of [0, 2, 3, 4]) expectBits(`${c.label}, ${threads} threads: ${OUTPUTS[t]}`, dir[t]!, im2col[t]!);
          const dx = termsOf(c, make(c, 1, "js").geometry).dx;
          expectClose(`${c.label}, ${threads} threads: dx`, dir[1]!, im2col[1]!, 2 * rtol(dx));
          expect(maxAbs(dir[1]!), "a dx that could differ").toBeGreaterThan(0);
        }
      }
      k.convDirect(false);
      expect(DIRECT.some((i) => direct(convCases[i]!)), "convDirect(false) turns the path off").toBe(false);
    } finally {
      k.convDirect(true);
    }
  });

  it("gives each rank segment's dW and db as that rank alone would, and the twins' within rounding", () => {
    for (const c of [{ ...convCases[2]!, n: 6 }, { ...convCases[4]!, n: 4 }, { ...convCases[8]!, n: 10 }]) {
      const half = c.n / 2, g = make(c, 193, "native").geometry;
      const rng = new Rng(194);
      const x = normals(rng, c.n * c.cin * c.h * c.w), dy = normals(rng, c.n * c.cout * g.outH * g.outW);
      const alone = [0, 1].map((r) => {
        const conv = make(c, 193, "native"), xs = x.subarray(r * half * c.cin * c.h * c.w), dys = dy.subarray(r * half * c.cout * g.outH * g.outW);
        conv.forward(xs, half, true);
        conv.backward(dys, half);
        return [conv.weight.grad.slice(), conv.bias.grad.slice()];
      });
      const seg = make(c, 193, "native");
      seg.setRankSegments(2);
      seg.forward(x, c.n, true);
      seg.backward(dy, c.n);
      // Each rank's float32 grads added in float64, then rounded once (layer.ts addSegment/endSegments).
      const sum = (i: number): Float32Array => alone[0]![i]!.map((v, j) => v + alone[1]![i]![j]!);
      expectBits(`${c.label}: dW`, seg.weight.grad, sum(0));
      expectBits(`${c.label}: db`, seg.bias.grad, sum(1));
      const js = passes(make(c, 193, "js"), c, 194, 2), nat = passes(make(c, 193, "native"), c, 194, 2);
      const t = termsOf(c, g);
      expectClose(`${c.label}: dW vs js`, nat[2]!, js[2]!, rtol(t.dW));
      expectClose(`${c.label}: db vs js`, nat[3]!, js[3]!, rtol(t.db));
    }
  });

  it("gives the same bits on 1, 2, 3 and 5 threads of the addon's pool (samples and dW columns split), with and without rank segments, CBN's sums too, the columns kept or made again", () => {
    for (const c of [{ ...convCases[7]!, n: 6 }, { ...convCases[2]!, n: 6 }, { ...convCases[4]!, n: 4 }, { ...convCases[8]!, n: 14 }, { ...convCases[9]!, n: 4 },
      { ...convCases[10]!, n: 2 }]) {
      const ref = make(c, 195, "native");
      const rng = new Rng(196), g = ref.geometry;
      const x = normals(rng, c.n * c.cin * c.h * c.w), dy = normals(rng, c.n * c.cout * g.outH * g.outW), xe = normals(rng, 3 * c.cin * c.h * c.w);
      const w = ref.weight.value, b = ref.bias.value;
      // keepBytes Infinity: the training columns kept for backward; 0: x kept, the columns made again (each part its dW rows).
      const outputs = (threads: number, seg: RankSegments | null, keepBytes = Infinity): Float32Array[] => {
        const k = new ConvNative(g, nativeKernels()!, threads, keepBytes);
        const dw = new Float32Array(w.length), db = new Float32Array(b.length);
        const y = k.forward(x, c.n, true, w, b).slice();
        const rows = c.cin * c.k * c.k, colSums = new Float64Array(rows), yColSums = new Float64Array(c.cout * rows);
        k.statsSums(colSums, yColSums, 1, c.n - 1);
        const ye = k.forward(xe, 3, false, w, b).slice();
        const dx = k.backward(dy, c.n, w, dw, db, seg).slice();
        // The float64 sums compared byte for byte.
        return [y, ye, dx, dw, db, new Float32Array(colSums.buffer), new Float32Array(yColSums.buffer)];
      };
      for (const segments of [1, 2]) {
        const seg = (): RankSegments | null => (segments > 1 ? { count: segments, dw: new Float64Array(w.length), db: new Float64Array(b.length) } : null);
        const one = outputs(1, seg());
        for (const threads of [1, 2, 3, 5]) {
          for (const keepBytes of threads === 1 ? [0] : [Infinity, 0]) {
            outputs(threads, seg(), keepBytes).forEach((a, t) =>
              expectBits(`${c.label}, ${segments} segments, ${threads} threads, keep ${keepBytes}, output ${t}`, a, one[t]!));
          }
        }
      }
    }
  });

  it("gives backward's bits in two passes (dx at backwardInput, dW and db at finishParamGrads: the graph's deferred weight gradient), rank segments, 2 threads and an empty batch too", () => {
    for (const c of [convCases[1]!, { ...convCases[7]!, n: 6 }, { ...convCases[8]!, n: 14 }, { ...convCases[2]!, n: 0 }]) {
      for (const segments of c.n > 0 ? [1, 2] : [1]) {
        const rng = new Rng(197), g = make(c, 198, "native").geometry;
        const x = normals(rng, c.n * c.cin * c.h * c.w), dy = normals(rng, c.n * c.cout * g.outH * g.outW);
        const run = (split: boolean, threads: number): Float32Array[] => {
          const conv = make(c, 198, "native");
          // Not the layer's default kernel: this one on `threads` threads, the columns kept on 1 thread and made again on 2.
          (conv as unknown as { kernel: ConvNative }).kernel = new ConvNative(g, nativeKernels()!, threads, threads === 1 ? Infinity : 0);
          if (segments > 1) conv.setRankSegments(segments);
          conv.weight.grad.fill(NaN);
          conv.forward(x, c.n, true);
          if (!split) return [conv.backward(dy, c.n).slice(), conv.weight.grad.slice(), conv.bias.grad.slice()];
          const dx = conv.backwardInput(dy, c.n).slice();
          // Until finishParamGrads the grads are untouched, and the layer refuses to run on.
          expect(Number.isNaN(conv.weight.grad[0]!), "dW before finishParamGrads").toBe(true);
          expect(() => conv.forward(x, c.n, true)).toThrow(/finishParamGrads/);
          conv.finishParamGrads();
          conv.finishParamGrads(); // nothing pending: no second pass
          return [dx, conv.weight.grad.slice(), conv.bias.grad.slice()];
        };
        for (const threads of [1, 2]) {
          const whole = run(false, threads), split = run(true, threads);
          ["dx", "dW", "db"].forEach((what, i) => expectBits(`${c.label}, ${segments} segments, ${threads} threads: ${what}`, split[i]!, whole[i]!));
          if (c.n > 0) expect(whole[1]!.some((v) => v !== 0), "a dW that could differ").toBe(true);
        }
      }
    }
  });

  it.each(convCases)("gives ConvWasm's cross-iteration BN sums Σ p (its bits) and Σ y·pᵀ (within rounding) over a segment ($label)", (c) => {
    const rng = new Rng(401), x = normals(rng, c.n * c.cin * c.h * c.w);
    const rows = c.cin * c.k * c.k;
    const sums = (backend: "wasm" | "native"): Float64Array[] => {
      const conv = make(c, 402, backend);
      conv.forward(x, c.n, true);
      const out: Float64Array[] = [];
      for (const [first, count] of [[0, c.n], [c.n - 1, 1], [0, 0]] as const) {
        const colSums = new Float64Array(rows).fill(7), yColSums = new Float64Array(c.cout * rows).fill(7);
        conv.statsSums(colSums, yColSums, first, count);
        out.push(colSums, yColSums);
      }
      return out;
    };
    const [w, n] = [sums("wasm"), sums("native")];
    // Σ y·pᵀ: y itself is native's (within rtol(R) of wasm's), then a dW pass over P per sample.
    const g = make(c, 402, "js").geometry, t = termsOf(c, g);
    w.forEach((ref, i) => {
      if (i % 2 === 0) expect(Array.from(n[i]!), `sum ${i}`).toEqual(Array.from(ref));
      else expectClose(`sum ${i}`, n[i]!, ref, rtol(t.y) + rtol(t.dW));
    });
    expect(w[0]!.some((v) => v !== 0), "a sum that could differ").toBe(true);
  });

  it("keeps a training forward's columns through a larger eval forward", () => {
    const c = convCases[2]!;
    const [js, nat] = pair(c, 93);
    const rng = new Rng(94);
    const x = normals(rng, c.n * c.cin * c.h * c.w);
    const dy = normals(rng, c.n * c.cout * js.geometry.outH * js.geometry.outW);
    const big = normals(rng, 40 * c.cin * c.h * c.w);
    js.forward(x, c.n, true);
    nat.forward(x, c.n, true);
    const t = termsOf(c, js.geometry);
    expectClose("eval y", nat.forward(big, 40, false), js.forward(big, 40, false), rtol(t.y));
    expectClose("dx", nat.backward(dy, c.n), js.backward(dy, c.n), rtol(t.dx));
    expectClose("dW", nat.weight.grad, js.weight.grad, rtol(t.dW));
  });

  it.each([2, 9])("zeroes its grads and returns empty views for an empty batch (case %i: im2col, direct)", (i) => {
    const c = convCases[i]!;
    const [, nat] = pair(c, 97);
    const rng = new Rng(98), g = nat.geometry;
    nat.forward(normals(rng, 2 * c.cin * c.h * c.w), 2, true);
    nat.backward(normals(rng, 2 * c.cout * g.outH * g.outW), 2);
    expect(nat.forward(new Float32Array(0), 0, true).length).toBe(0);
    expect(nat.backward(new Float32Array(0), 0).length).toBe(0);
    expect(maxAbs(nat.weight.grad)).toBe(0);
    expect(maxAbs(nat.bias.grad)).toBe(0);
  });

  it("propagates NaN and ±Inf where the JS twin does", () => {
    const c = convCases[1]!;
    const [js, nat] = pair(c, 99);
    const rng = new Rng(100), g = js.geometry;
    const x = normals(rng, c.n * c.cin * c.h * c.w);
    x[5] = NaN;
    x[c.cin * c.h * c.w + 40] = Infinity;
    x[2 * c.cin * c.h * c.w + 100] = -Infinity;
    const dy = normals(rng, c.n * c.cout * g.outH * g.outW);
    dy[3 * c.cout * g.outH * g.outW + 7] = NaN;
    const same = (what: string, got: Float32Array, ref: Float32Array): void => {
      for (let i = 0; i < ref.length; i++) {
        const r = ref[i]!, v = got[i]!;
        if (Number.isFinite(r)) continue;
        if (!(Number.isNaN(r) ? Number.isNaN(v) : v === r)) expect.fail(`${what}[${i}]: got ${v}, want ${r}`);
      }
      const nonFinite = (a: Float32Array): number => a.filter((v) => !Number.isFinite(v)).length;
      expect(nonFinite(got), `${what}: non-finite count`).toBe(nonFinite(ref));
    };
    same("y", nat.forward(x, c.n, true).slice(), js.forward(x, c.n, true).slice());
    same("dx", nat.backward(dy, c.n).slice(), js.backward(dy, c.n).slice());
    same("dW", nat.weight.grad, js.weight.grad);
    same("db", nat.bias.grad, js.bias.grad);
  });

  it.each([
    { ...convCases[0]!, n: 4 },
    { ...convCases[0]!, n: 4, stride: 2, h: 12, w: 14, label: "1×1 stride 2 (im2col)" },
  ])("keeps the sign of zero where the JS twin does (exact zero products round the same with or without FMA): $label", (c) => {
    // 1×1 over 3 channels: y = b + 3 products, all −0 for about 1 element in 16
    const [js, nat] = pair(c, 103);
    const rng = new Rng(104), g = js.geometry;
    // Inputs of ±0 and a bias of ±0: every product is an exact ±0, so y, dx, dW and db are signed zeros.
    const x = normals(rng, c.n * c.cin * c.h * c.w).map((v) => (v < 0 ? -0 : 0));
    const dy = normals(rng, c.n * c.cout * g.outH * g.outW).map((v) => (v < 0 ? -0 : 0));
    for (const conv of [js, nat]) conv.bias.value.forEach((_, i, b) => (b[i] = i % 2 ? -0 : 0));
    expectBits("y", nat.forward(x, c.n, true).slice(), js.forward(x, c.n, true).slice());
    expectBits("dx", nat.backward(dy, c.n).slice(), js.backward(dy, c.n).slice());
    expectBits("dW", nat.weight.grad, js.weight.grad);
    expectBits("db", nat.bias.grad, js.bias.grad);
    expect(nat.forward(x, c.n, true).some((v) => Object.is(v, -0)), "a −0 that could be lost").toBe(true);
  });

  it("gives the same bits run to run", () => {
    const c = convCases[7]!;
    const run = (): Float32Array[] => {
      const [, nat] = pair(c, 101);
      const rng = new Rng(102), g = nat.geometry;
      const x = normals(rng, c.n * c.cin * c.h * c.w);
      const dy = normals(rng, c.n * c.cout * g.outH * g.outW);
      const y = nat.forward(x, c.n, true).slice();
      const dx = nat.backward(dy, c.n).slice();
      return [y, dx, nat.weight.grad.slice(), nat.bias.grad.slice()];
    };
    const a = run(), b = run();
    for (let t = 0; t < a.length; t++) expect(Buffer.from(a[t]!.buffer).equals(Buffer.from(b[t]!.buffer)), `output ${t}`).toBe(true);
  });

  it("measures the FMA peak the bench reports against, on the instruction set the CPU has, and refuses a bad duration", () => {
    const k = nativeKernels()!;
    const [gflops, isa] = k.fmaPeak(0.05);
    expect(["avx512f", "avx2+fma", "none"]).toContain(isa);
    if (isa === "none") expect(gflops).toBe(0);
    else expect(gflops).toBeGreaterThan(0);
    for (const bad of [0, -1, 61, Number.NaN]) expect(() => k.fmaPeak(bad)).toThrow(/seconds must be in \(0, 60\]/);
  });

  it("im2col and col2im (the stride-1 same-size fast path and the general one) give the TypeScript loops' bits", () => {
    const k = nativeKernels()!;
    const rng = new Rng(5);
    let cases = 0;
    for (const kernel of [1, 2, 3, 4, 5]) for (const padding of [0, 1, 2, 3]) for (const stride of [1, 2]) for (const [inH, inW] of [[1, 1], [2, 3], [5, 4], [7, 7]] as const) {
      const outH = Math.floor((inH + 2 * padding - kernel) / stride) + 1, outW = Math.floor((inW + 2 * padding - kernel) / stride) + 1;
      if (outH < 1 || outW < 1) continue;
      const g: ConvGeometry = { cin: 2, cout: 1, inH, inW, kernel, stride, padding, outH, outW };
      const R = 2 * kernel * kernel, P = outH * outW, inSize = 2 * inH * inW;
      const x = normals(rng, inSize), dcols = normals(rng, R * P);
      const colsTs = new Float32Array(R * P), colsNat = new Float32Array(R * P).fill(7);
      im2col(colsTs, x, 0, g);
      k.im2col(colsNat, 0, x, 0, 2, inH, inW, kernel, stride, padding, outH, outW);
      expectBits(`im2col ${JSON.stringify(g)}`, colsNat, colsTs);
      const dxTs = new Float32Array(inSize), dxNat = new Float32Array(inSize), before = dcols.slice();
      col2imAdd(dxTs, 0, dcols, g);
      k.col2imAdd(dxNat, 0, dcols, 0, 2, inH, inW, kernel, stride, padding, outH, outW);
      expectBits(`col2im ${JSON.stringify(g)}`, dxNat, dxTs);
      expectBits("dcols unchanged", dcols, before);
      cases++;
    }
    expect(cases).toBeGreaterThan(100);
  });

  it("rejects arrays too short for the call instead of writing past them", () => {
    const k = nativeKernels()!;
    const c = new Float32Array(4), a = new Float32Array(4), w = new Float32Array(9), y = new Float32Array(4), dw = new Float64Array(9);
    // One channel, 2×2 image, 3×3 kernel pad 1: y (n, 1, 4), x and the saved x (n, 1, 4), cols (n, 9, 4); two samples need 8 (72) of each.
    const bias = new Float32Array(1), none = new Float32Array(0), x8 = new Float32Array(8), c72 = new Float32Array(72);
    expect(() => k.convForward(y, a, x8, none, w, bias, 1, 2, 2, 3, 1, 1, 2, 2, 1, 2, 1)).toThrow(RangeError);
    expect(() => k.convForward(new Float32Array(8), x8, x8, none, w, none, 1, 2, 2, 3, 1, 1, 2, 2, 1, 2, 1)).toThrow(/bias: out of range/);
    expect(() => k.convForward(new Float32Array(8), x8, new Float32Array(4), none, w, bias, 1, 2, 2, 3, 1, 1, 2, 2, 1, 2, 1)).toThrow(/xSaved: out of range/);
    expect(() => k.convForward(new Float32Array(8), x8, none, new Float32Array(36), w, bias, 1, 2, 2, 3, 1, 1, 2, 2, 1, 2, 1)).toThrow(/cols: out of range/);
    expect(() => k.convForward(new Float32Array(8), x8, none, none, w, bias, 1, 2, 2, 3, 1, 1, 2, 2, 1, 2, 1)).not.toThrow();
    expect(() => k.convBackward(x8, x8, new Float32Array(4), none, w, dw, none, none, new Float64Array(0), 1, 2, 2, 3, 1, 1, 2, 2, 1, 0, 2, 1)).toThrow(/x: out of range/);
    expect(() => k.convBackward(x8, x8, none, new Float32Array(36), w, dw, none, none, new Float64Array(0), 1, 2, 2, 3, 1, 1, 2, 2, 1, 0, 2, 1)).toThrow(/cols: out of range/);
    expect(() => k.convBackward(x8, x8, none, none, w, dw, none, none, new Float64Array(0), 1, 2, 2, 3, 1, 1, 2, 2, 1, 0, 2, 1)).toThrow(/needs x or cols/);
    expect(() => k.convBackward(x8, x8, none, c72, w, dw, none, none, new Float64Array(0), 1, 2, 2, 3, 1, 1, 2, 2, 1, 0, 2, 1)).not.toThrow();
    // dw (cout·R = 9), db (cout = 1) and colSums (R = 9) are either empty or whole.
    const ok = [new Float32Array(8), new Float32Array(8), x8, none, w, dw] as const;
    expect(() => k.convBackward(...ok, new Float32Array(8), none, new Float64Array(0), 1, 2, 2, 3, 1, 1, 2, 2, 1, 0, 2, 1)).toThrow(/dw: out of range/);
    expect(() => k.convBackward(...ok, none, none, new Float64Array(8), 1, 2, 2, 3, 1, 1, 2, 2, 1, 0, 2, 1)).toThrow(/colSums: out of range/);
    expect(() => k.convBackward(...ok, new Float32Array(9), new Float32Array(2), new Float64Array(9), 1, 2, 2, 3, 1, 1, 2, 2, 1, 0, 2, 1)).not.toThrow();
    expect(() => k.im2col(c, 0, a, 0, 1, 2, 2, 3, 1, 1, 2, 2)).toThrow(RangeError);
    expect(() => k.isa("sse9")).toThrow(/isa\(name\): name must be avx512f, avx2 or baseline/);
  });
});

// Last in the file: it turns the addon off for this process.
describe("without the addon", () => {
  it("builds Conv2d on wasm (with ConvWasm's bits) when native was asked for process-wide, and refuses an explicit native layer", () => {
    disableNative("SYNCBN_NATIVE=off");
    const c = convCases[2]!;
    setKernelBackend("native");
    try {
      expect(convKernelBackend()).toBe("wasm");
      const fallback = new Conv2d("conv", c.cin, c.cout, c.k, c.stride, c.padding, c.h, c.w, new Rng(191));
      expect(fallback.backend).toBe("wasm");
      const got = passes(fallback, c, 192, 1), want = passes(make(c, 191, "wasm"), c, 192, 1);
      got.forEach((a, t) => expectBits(`output ${t}`, a, want[t]!));
    } finally {
      setKernelBackend("wasm");
    }
    expect(() => make(c, 191, "native")).toThrow(/layer conv: native kernels requested but the addon is not loaded/);
  });
});
