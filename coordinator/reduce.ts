// Reduction of one round's contributions, always in rank (member) order so the
// result never depends on arrival order: Chan merge for BN moments, float64 sums
// for everything else. Also compares parameter checksums of the replicas.
// Hot path (once per BN layer per pass): the result is reduced straight into its
// (pooled) wire frame, so nothing is allocated or copied but two payload views;
// each loop sees one array type only, so V8 keeps it monomorphic.

import { beginResult } from "../shared/codec.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import type { Contribution, Phase, RoundResult } from "../shared/protocol.js";
import { chanMergeStep, finishMerge } from "../shared/stats.js";

/** A reduced round: the result (its data and extra are views of `frame`) and its encoded frame. */
export interface ReducedRound {
  result: RoundResult;
  /** Ready to send; release it (codec releaseEncoded) once sent, or drop it. */
  frame: Uint8Array;
}

/** float64 accumulator of float32 gradient sums, grown as needed; rounded once into the frame. */
let gradScratch = new Float64Array(0);

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
    let sum = out.data as Float64Array;
    if (f32) {
      if (gradScratch.length < n) gradScratch = new Float64Array(n);
      sum = gradScratch.subarray(0, n);
    }
    sum.fill(0);
    for (const p of parts) {
      count += p.count;
      if (p.data instanceof Float32Array) addF32(sum, p.data);
      else addF64(sum, p.data);
    }
    if (f32) (out.data as Float32Array).set(sum);
  }
  if (out.extra) {
    out.extra.fill(0);
    for (const p of parts) addF64(out.extra, p.extra!);
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

function addF64(sum: Float64Array, a: Float64Array): void {
  for (let i = 0; i < sum.length; i++) sum[i]! += a[i]!;
}

function addF32(sum: Float64Array, a: Float32Array): void {
  for (let i = 0; i < sum.length; i++) sum[i]! += a[i]!;
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
