// The coordinator's sum reductions (coordinator/reduce.ts) against their naive
// twin: a zeroed float64 accumulator, each part added in member order, the
// gradient rounded to float32 once at the end. Bit for bit, with −0, subnormal
// and large values, float32 and float64 parts mixed, 1 to 5 parts, and extras;
// on both of the coordinator's loops (coordinator/reduce-kernels.ts): the native
// addon's (unless SYNCBN_NATIVE=off) and the TypeScript ones.

import { afterAll, describe, expect, it } from "vitest";
import { allFinite } from "../coordinator/finite.js";
import { reduceKernels, useNativeReduce } from "../coordinator/reduce-kernels.js";
import { reduceRound, roundF32Naive } from "../coordinator/reduce.js";
import type { Contribution, Phase } from "../shared/protocol.js";
import { disableNative } from "../worker/nn/kernels/native.js";

const off = process.env.SYNCBN_NATIVE === "off";
if (off) disableNative("SYNCBN_NATIVE=off");
const BACKENDS = off ? (["ts"] as const) : (["native", "ts"] as const);
afterAll(() => useNativeReduce(true));

describe.skipIf(off)("the coordinator's native loops", () => {
  it("are the ones a coordinator runs when the addon is loaded", () => {
    useNativeReduce(true);
    expect(reduceKernels()).not.toBeNull();
    useNativeReduce(false);
    expect(reduceKernels()).toBeNull();
    useNativeReduce(true);
  });
});

function naive(parts: readonly Contribution[], f32: boolean): { data: Float64Array | Float32Array; extra: Float64Array | null } {
  const n = parts[0]!.data.length;
  const sum = new Float64Array(n);
  for (const p of parts) for (let i = 0; i < n; i++) sum[i]! += p.data[i]!;
  let extra: Float64Array | null = null;
  if (parts[0]!.extra) {
    extra = new Float64Array(parts[0]!.extra.length);
    for (const p of parts) for (let i = 0; i < extra.length; i++) extra[i]! += p.extra![i]!;
  }
  return { data: f32 ? Float32Array.from(sum) : sum, extra };
}

/** A deterministic mix: ±0, subnormals, huge and ordinary values (LCG). */
function values(n: number, seed: number, f32: boolean): Float64Array | Float32Array {
  const out = f32 ? new Float32Array(n) : new Float64Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const u = s / 2 ** 32;
    const kind = s % 7;
    out[i] = kind === 0 ? -0 : kind === 1 ? 0 : kind === 2 ? (u - 0.5) * 1e-40 : kind === 3 ? (u - 0.5) * 1e30 : (u - 0.5) * 3;
  }
  return out;
}

function bits(a: Float64Array | Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
}

for (const backend of BACKENDS) {
const use = (): void => useNativeReduce(backend === "native");

describe(`reduceRound sums (${backend} loops)`, () => {
  const cases: { phase: Phase; kinds: boolean[]; extra: number }[] = [
    { phase: "grad", kinds: [true], extra: 0 },
    { phase: "grad", kinds: [true, true], extra: 0 },
    { phase: "grad", kinds: [false, false, false], extra: 3 },
    { phase: "grad", kinds: [true, false, true, false, true], extra: 0 },
    { phase: "grad", kinds: [false], extra: 2 },
    { phase: "sum", kinds: [false], extra: 0 },
    { phase: "sum", kinds: [false, false, false, false], extra: 5 },
  ];
  for (const [ci, c] of cases.entries()) for (const n of [1001, 4099]) {
    it(`${c.phase}, parts ${c.kinds.map((k) => (k ? "f32" : "f64")).join("+")}, ${c.extra} extra, ${n} values: the naive sum's bits`, () => {
      use();
      const parts: Contribution[] = c.kinds.map((f32, k) => {
        const p: Contribution = { type: "contrib", step: 3, phase: c.phase, layer: 0, count: k + 1, data: values(n, 17 * ci + k, f32) };
        if (c.extra > 0) p.extra = values(c.extra, 1000 + 17 * ci + k, false) as Float64Array;
        return p;
      });
      const { result } = reduceRound(3, c.phase, 0, parts, parts.map((_, k) => k));
      const want = naive(parts, c.phase === "grad");
      expect(result.data).toBeInstanceOf(c.phase === "grad" ? Float32Array : Float64Array);
      expect(bits(result.data)).toEqual(bits(want.data));
      expect(result.count).toBe((c.kinds.length * (c.kinds.length + 1)) / 2);
      if (want.extra) expect(bits(result.extra!)).toEqual(bits(want.extra));
      else expect(result.extra).toBeUndefined();
      // −0 parts sum to +0, as from a zeroed accumulator.
      const allNegZero = parts.map((p) => ({ ...p, data: (p.data instanceof Float32Array ? new Float32Array(4) : new Float64Array(4)).fill(-0), extra: undefined }));
      const z = reduceRound(4, c.phase, 0, allNegZero, allNegZero.map((_, k) => k)).result.data;
      for (const v of z) expect(Object.is(v, 0)).toBe(true);
    });
  }
});

describe(`a gradient round of one float32 part (one worker; ${backend} loops)`, () => {
  // roundF32 copies the part and patches its −0s, by search up to 64 of them and by a loop past that.
  for (const negZeros of [0, 1, 63, 64, 65, 5000]) {
    it(`returns the part's own bits with each −0 made +0, as the converting loop does (${negZeros} −0s among 270,000)`, () => {
      use();
      const n = 270_000;
      const data = new Float32Array(n);
      for (let i = 0; i < n; i++) data[i] = Math.sin(i) * 1e-3;
      // Spread over the array, the first and last elements among them.
      for (let k = 0; k < negZeros; k++) data[negZeros === 1 ? n - 1 : Math.floor((k * (n - 1)) / (negZeros - 1))] = -0;
      const part: Contribution = { type: "contrib", step: 0, phase: "grad", layer: -1, count: 8, data };
      const { result } = reduceRound(0, "grad", -1, [part], [0]);
      const want = new Float32Array(n);
      roundF32Naive(want, data);
      // The first element whose bits differ (−1: none), not a 1 MB deep-equal.
      const got = new Int32Array(result.data.buffer, result.data.byteOffset, n);
      const wantBits = new Int32Array(want.buffer);
      expect(got.findIndex((b, i) => b !== wantBits[i])).toBe(-1);
      let negative = 0;
      for (const v of result.data) if (Object.is(v, -0)) negative++;
      expect(negative).toBe(0);
      // The part itself is left as it was.
      let kept = 0;
      for (const v of data) if (Object.is(v, -0)) kept++;
      expect(kept).toBe(negZeros);
    });
  }
});

describe(`allFinite (${backend} loops)`, () => {
  for (const f32 of [true, false]) {
    it(`finds one NaN, +Inf or −Inf anywhere in a ${f32 ? "Float32Array" : "Float64Array"}, and passes finite extremes`, () => {
      use();
      const n = 5000; // past two of the native loop's 2048-element blocks
      const a = values(n, 99, f32);
      a[7] = f32 ? 3.4028234663852886e38 : Number.MAX_VALUE;
      a[8] = f32 ? 1.401298464324817e-45 : Number.MIN_VALUE;
      expect(allFinite(a)).toBe(true);
      expect(allFinite(a.subarray(0, 0))).toBe(true);
      for (const at of [0, 2047, 2048, 4095, n - 1]) {
        for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
          const b = a.slice();
          b[at] = bad;
          expect(allFinite(b), `${bad} at ${at}`).toBe(false);
          // A view that ends before the bad value is finite.
          if (at > 0) expect(allFinite(b.subarray(0, at))).toBe(true);
        }
      }
    });
  }
});
}
