// Comparing tensors in tests: the scale-aware relative difference every
// equivalence and PyTorch-parity test uses, and a safetensors file's tensors as
// float64. Test code only; not the product's reader (that is worker/safetensors.ts).

import { floatValues, integerValues, readSafetensors } from "../worker/safetensors.js";

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
