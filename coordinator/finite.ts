// Finiteness checks of contributions, on the coordinator's hot path: every
// value of every contribution is checked, so these are written for speed.
// Not validation of shapes or keys (contribution-checks.ts does that). Native
// (reduce-kernels.ts) when the addon is loaded; these loops otherwise.

import { reduceKernels } from "./reduce-kernels.js";

// One loop per array type (a loop that sees both stays polymorphic, several times
// slower). v·0 is 0 for finite v and NaN for ±Inf and NaN, so a sum of v·0 is 0
// exactly when every value is finite; four sums run in parallel (~3× isFinite's speed).
export function allFinite(a: Float64Array | Float32Array): boolean {
  const k = reduceKernels();
  if (k) return k.allFinite(a);
  return a instanceof Float64Array ? allFinite64(a) : allFinite32(a);
}

function allFinite64(a: Float64Array): boolean {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const n4 = a.length & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    s0 += a[i]! * 0;
    s1 += a[i + 1]! * 0;
    s2 += a[i + 2]! * 0;
    s3 += a[i + 3]! * 0;
  }
  for (; i < a.length; i++) s0 += a[i]! * 0;
  return s0 + s1 + s2 + s3 === 0;
}

function allFinite32(a: Float32Array): boolean {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const n4 = a.length & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    s0 += a[i]! * 0;
    s1 += a[i + 1]! * 0;
    s2 += a[i + 2]! * 0;
    s3 += a[i + 3]! * 0;
  }
  for (; i < a.length; i++) s0 += a[i]! * 0;
  return s0 + s1 + s2 + s3 === 0;
}
