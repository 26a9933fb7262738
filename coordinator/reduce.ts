// Reduction of one round's contributions, always in rank (member) order so the
// result never depends on arrival order: Chan merge for BN moments, float64 sums
// for everything else. Also compares parameter checksums of the replicas.
// Hot path (once per BN layer per pass): the result is reduced straight into its
// (pooled) wire frame, so nothing is allocated or copied but two payload views;
// each loop sees one array type only, so V8 keeps it monomorphic. A sum is one
// pass per part (the first assigns, a gradient's last adds and rounds to float32
// in the same pass), not a fill, the adds and a rounding copy; the element loops
// are unrolled 4× (each element's arithmetic unchanged): ~1.3–1.9× faster in V8.
// With the native addon loaded, the sums run in native/reduce.cc instead
// (reduce-kernels.ts), the same bits: these loops are then the twins.

import { beginResult } from "../shared/codec.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import type { Contribution, Phase, RoundResult } from "../shared/protocol.js";
import { chanMergeStep, finishMerge } from "../shared/stats.js";
import { reduceKernels } from "./reduce-kernels.js";

/** A reduced round: the result (its data and extra are views of `frame`) and its encoded frame. */
export interface ReducedRound {
  result: RoundResult;
  /** Ready to send; release it (codec releaseEncoded) once sent, or drop it. */
  frame: Uint8Array;
}

/** float64 accumulator of float32 gradient sums, grown as needed; rounded once into the frame. */
let gradScratch = new Float64Array(0);
/** The parts' data handed to the native sum: reused, so a round allocates no array. */
const partData: (Float32Array | Float64Array)[] = [];
const EMPTY = new Float64Array(0);

export function reduceRound(
  step: number,
  phase: Phase,
  layer: number,
  parts: readonly Contribution[], // in member order
  members: readonly number[],
): ReducedRound {
  checkChecksums(parts, members, step, layer, phase);
  const first = parts[0]!;
  const n = first.data.length;
  // Gradients travel as float32; they are summed in float64 and rounded once.
  const f32 = phase === "grad";
  const out = beginResult(step, phase, layer, n, f32, first.extra?.length ?? 0);
  let count = 0;
  if (phase === "fwd") {
    count = mergeMomentsInto(out.data as Float64Array, parts); // [mean(C), biased var(C)]
  } else {
    for (const p of parts) count += p.count;
    const k = reduceKernels();
    if (k) {
      partData.length = parts.length;
      for (let i = 0; i < parts.length; i++) partData[i] = parts[i]!.data;
      k.sumParts(out.data, partData);
      partData.fill(EMPTY); // drop the references to the parts' frames
    } else if (f32) {
      if (gradScratch.length < n) gradScratch = new Float64Array(n);
      sumRounded(out.data as Float32Array, gradScratch.subarray(0, n), parts);
    } else {
      sumInto(out.data as Float64Array, parts, parts.length);
    }
  }
  if (out.extra) {
    const extra = out.extra;
    assignF64(extra, parts[0]!.extra!);
    for (let k = 1; k < parts.length; k++) addF64(extra, parts[k]!.extra!);
  }
  const frame = out.finish(count);
  const result: RoundResult = { type: "result", step, phase, layer, count, data: out.data };
  if (out.extra) result.extra = out.extra;
  return { result, frame };
}

/**
 * Chan et al. merge of [mean(C), M2(C)] contributions in member order into
 * out = [mean(C), biased var(C)]; returns the global count. The arithmetic is
 * that of shared/stats.ts mergeMoments and biasedVariance, in place in `out`
 * (M2 accumulates in the second half, then becomes M2/n).
 */
function mergeMomentsInto(out: Float64Array, parts: readonly Contribution[]): number {
  let count = 0;
  for (const p of parts) count = chanMergeStep(out, count, p.data as Float64Array, p.count); // [mean(C), M2(C)]
  finishMerge(out, count); // every side empty: zeros (the frame is reused memory)
  return count;
}

/**
 * sum = Σ parts[0..end) data in member order, float64: ((0 + a₀) + a₁) + …, the
 * bits a zeroed accumulator gives (0 + a, not a: a −0 sums to +0), with no fill pass.
 */
function sumInto(sum: Float64Array, parts: readonly Contribution[], end: number): void {
  const a0 = parts[0]!.data;
  if (a0 instanceof Float32Array) assignF32(sum, a0);
  else assignF64(sum, a0);
  for (let k = 1; k < end; k++) {
    const a = parts[k]!.data;
    if (a instanceof Float32Array) addF32(sum, a);
    else addF64(sum, a);
  }
}

/**
 * out = fround(Σ parts data in member order), the sum in float64 (`sum` its scratch)
 * and rounded once: the last part's add is fused with the rounding store, so the
 * float64 sum is never written out whole a last time nor read back by a set().
 */
function sumRounded(out: Float32Array, sum: Float64Array, parts: readonly Contribution[]): void {
  const last = parts.length - 1;
  if (last === 0) {
    const a = parts[0]!.data;
    if (a instanceof Float32Array) roundF32(out, a);
    else roundF64(out, a);
    return;
  }
  sumInto(sum, parts, last);
  const a = parts[last]!.data;
  if (a instanceof Float32Array) addRoundF32(out, sum, a);
  else addRoundF64(out, sum, a);
}

function assignF64(sum: Float64Array, a: Float64Array): void {
  const n = sum.length;
  const n4 = n & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    sum[i] = 0 + a[i]!;
    sum[i + 1] = 0 + a[i + 1]!;
    sum[i + 2] = 0 + a[i + 2]!;
    sum[i + 3] = 0 + a[i + 3]!;
  }
  for (; i < n; i++) sum[i] = 0 + a[i]!;
}

function assignF32(sum: Float64Array, a: Float32Array): void {
  const n = sum.length;
  const n4 = n & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    sum[i] = 0 + a[i]!;
    sum[i + 1] = 0 + a[i + 1]!;
    sum[i + 2] = 0 + a[i + 2]!;
    sum[i + 3] = 0 + a[i + 3]!;
  }
  for (; i < n; i++) sum[i] = 0 + a[i]!;
}

function roundF64(out: Float32Array, a: Float64Array): void {
  const n = out.length;
  const n4 = n & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    out[i] = 0 + a[i]!;
    out[i + 1] = 0 + a[i + 1]!;
    out[i + 2] = 0 + a[i + 2]!;
    out[i + 3] = 0 + a[i + 3]!;
  }
  for (; i < n; i++) out[i] = 0 + a[i]!;
}

/**
 * out = fround(0 + a), one float32 part (one worker): a's own bits except that −0
 * becomes +0, so a block copy, then the −0s found by a native search and patched:
 * ~4× faster than the converting loop (roundF32Naive, its twin) on 270K gradients.
 * Contributions are finite by then (contribution-checks.ts), so no NaN to quieten.
 */
function roundF32(out: Float32Array, a: Float32Array): void {
  out.set(a);
  const u = new Int32Array(out.buffer, out.byteOffset, out.length); // bits of out
  // A search call per −0: past a few, one pass over the rest is cheaper.
  let i = u.indexOf(NEG_ZERO_BITS);
  for (let hits = 0; i >= 0 && hits < SEARCHED_NEG_ZEROS; hits++) {
    u[i] = 0;
    i = u.indexOf(NEG_ZERO_BITS, i + 1);
  }
  if (i >= 0) for (let k = i; k < u.length; k++) if (u[k] === NEG_ZERO_BITS) u[k] = 0;
}

/** The bits of float32 −0, as an int32. */
const NEG_ZERO_BITS = -0x80000000;
const SEARCHED_NEG_ZEROS = 64;

/** roundF32's naive twin: the rounding store of 0 + a, element by element (test/reduce.test.ts). */
export function roundF32Naive(out: Float32Array, a: Float32Array): void {
  for (let i = 0; i < out.length; i++) out[i] = 0 + a[i]!;
}

function addRoundF64(out: Float32Array, sum: Float64Array, a: Float64Array): void {
  const n = out.length;
  const n4 = n & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    out[i] = sum[i]! + a[i]!;
    out[i + 1] = sum[i + 1]! + a[i + 1]!;
    out[i + 2] = sum[i + 2]! + a[i + 2]!;
    out[i + 3] = sum[i + 3]! + a[i + 3]!;
  }
  for (; i < n; i++) out[i] = sum[i]! + a[i]!;
}

function addRoundF32(out: Float32Array, sum: Float64Array, a: Float32Array): void {
  const n = out.length;
  const n4 = n & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    out[i] = sum[i]! + a[i]!;
    out[i + 1] = sum[i + 1]! + a[i + 1]!;
    out[i + 2] = sum[i + 2]! + a[i + 2]!;
    out[i + 3] = sum[i + 3]! + a[i + 3]!;
  }
  for (; i < n; i++) out[i] = sum[i]! + a[i]!;
}

function addF64(sum: Float64Array, a: Float64Array): void {
  const n = sum.length;
  const n4 = n & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    sum[i]! += a[i]!;
    sum[i + 1]! += a[i + 1]!;
    sum[i + 2]! += a[i + 2]!;
    sum[i + 3]! += a[i + 3]!;
  }
  for (; i < n; i++) sum[i]! += a[i]!;
}

function addF32(sum: Float64Array, a: Float32Array): void {
  const n = sum.length;
  const n4 = n & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    sum[i]! += a[i]!;
    sum[i + 1]! += a[i + 1]!;
    sum[i + 2]! += a[i + 2]!;
    sum[i + 3]! += a[i + 3]!;
  }
  for (; i < n; i++) sum[i]! += a[i]!;
}

function checkChecksums(parts: readonly Contribution[], members: readonly number[], step: number, layer: number, phase: Phase): void {
  let withSum = 0;
  for (let i = 0; i < parts.length; i++) if (parts[i]!.checksum !== undefined) withSum++;
  if (withSum === 0) return;
  const ctx = { step, layer, phase };
  if (withSum !== parts.length) {
    const missing = members.filter((_, i) => parts[i]!.checksum === undefined);
    throw new SyncbnError(ErrorCode.Diverged, "some workers sent a parameter checksum and some did not; the workers run different settings", { ...ctx, rank: missing });
  }
  const ref = parts[0]!.checksum;
  const differ = members.filter((_, i) => parts[i]!.checksum !== ref);
  if (differ.length > 0) {
    throw new SyncbnError(
      ErrorCode.Diverged,
      `parameter replicas diverged: the checksum of rank(s) ${differ.join(", ")} differs from rank ${members[0]}'s (${ref}); replicas must stay bit-identical, so the run stops`,
      { ...ctx, rank: differ },
    );
  }
}
