// Comparing tensors in tests: the scale-aware relative difference every
// equivalence and PyTorch-parity test uses, the kernel tests' inputs (normals) and
// elementwise bound (expectClose), and a safetensors file's tensors as float64. Test code only; not the product's reader (that is worker/safetensors.ts).

import { expect } from "vitest";
import type { Rng } from "../shared/rng.js";
import { readCheckpoint } from "../worker/checkpoint.js";
import { floatValues, integerValues, readSafetensors } from "../worker/safetensors.js";

/** len standard normals (× scale) from rng, as float32: the test inputs of the layer and kernel tests. */
export function normals(rng: Rng, len: number, scale = 1): Float32Array {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = rng.normal() * scale;
  return a;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

/** |got − ref| ≤ rtol·max|ref| elementwise (the sums' order differs between kernels, so rounding is relative to the magnitudes summed). */
export function expectClose(what: string, got: ArrayLike<number>, ref: ArrayLike<number>, rtol = 1e-5): void {
  expect(got.length, `${what} length`).toBe(ref.length);
  const bound = rtol * Math.max(1e-30, maxAbs(ref));
  let worst = 0, at = -1;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(got[i]! - ref[i]!);
    if (!(d <= worst)) { worst = d; at = i; }
  }
  if (!(worst <= bound)) expect.fail(`${what}: max |diff| ${worst} at ${at} (got ${got[at]}, want ${ref[at]}) > ${bound}`);
}

/** max|a−b| / max|b| over a tensor (scale-aware; an all-zero b compares absolutely). */
export function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return den === 0 ? num : num / den;
}

/** Every tensor of a safetensors file as float64 values (counts included). */
export function safetensorsValues(path: string): Map<string, { shape: number[]; values: Float64Array }> {
  const out = new Map<string, { shape: number[]; values: Float64Array }>();
  for (const [name, t] of readSafetensors(path).tensors) {
    out.set(name, { shape: t.shape, values: floatValues(t) ?? Float64Array.from(integerValues(t)!.map(Number)) });
  }
  return out;
}

/** Two checkpoint files with the same step and the same bits in every parameter and running statistic. */
export function expectSameCheckpointBits(gotFile: string, wantFile: string, step: number): void {
  const got = readCheckpoint(gotFile);
  const want = readCheckpoint(wantFile);
  expect(got.header.step).toBe(step);
  want.params.forEach((p, i) => expect(Buffer.from(got.params[i]!.buffer).equals(Buffer.from(p.buffer))).toBe(true));
  want.bn.forEach((s, i) => {
    expect(Buffer.from(got.bn[i]!.mean.buffer).equals(Buffer.from(s.mean.buffer))).toBe(true);
    expect(Buffer.from(got.bn[i]!.var.buffer).equals(Buffer.from(s.var.buffer))).toBe(true);
  });
}

/** Mean and population std of a, in two passes (|mean| against std never cancels). */
export function meanStd(a: Float32Array): { mean: number; std: number } {
  let s = 0;
  for (const v of a) s += v;
  const mean = s / a.length;
  let s2 = 0;
  for (const v of a) s2 += (v - mean) ** 2;
  return { mean, std: Math.sqrt(s2 / a.length) };
}
