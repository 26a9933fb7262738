// Finite-difference checks shared by the layer and graph tests.
import { expect } from "vitest";

/** Σ a·b in float64. */
export function dotAll(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

/**
 * Central differences of f with respect to v[i] against `analytic`, at up to
 * `checks` evenly spaced indices (f costs a whole forward). The step is divided by
 * the difference actually stored, so rounding v ± eps to float32 costs nothing; f
 * should return a float64 scalar (synchronously or not).
 */
export async function expectGradMatches(
  what: string, f: () => Promise<number> | number, v: Float32Array | Float64Array, analytic: ArrayLike<number>,
  eps: number, rtol: number, atol: number, checks = 64,
): Promise<void> {
  expect(analytic.length, what).toBe(v.length);
  const stride = Math.max(1, Math.ceil(v.length / checks));
  for (let i = 0; i < v.length; i += stride) {
    const orig = v[i]!;
    v[i] = orig + eps;
    const up = v[i]!;
    const fUp = await f();
    v[i] = orig - eps;
    const down = v[i]!;
    const fDown = await f();
    v[i] = orig;
    const numeric = (fUp - fDown) / (up - down);
    const err = Math.abs(numeric - analytic[i]!);
    if (err > atol + rtol * Math.max(Math.abs(numeric), Math.abs(analytic[i]!))) {
      expect.fail(`${what}[${i}]: analytic ${analytic[i]} vs numeric ${numeric} (err ${err})`);
    }
  }
}
