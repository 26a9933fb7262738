// Reduction of one round's contributions, always in rank (member) order so the
// result never depends on arrival order: Chan merge for BN moments, float64 sums
// for everything else. Also compares parameter checksums of the replicas.
// Hot path (once per BN layer per pass): each loop sees one array type only, so
// V8 keeps it monomorphic, and nothing is allocated but the result.

import { ErrorCode, SyncbnError } from "../shared/errors.js";
import type { Contribution, Phase, RoundResult } from "../shared/protocol.js";

export function reduceRound(
  step: number,
  phase: Phase,
  layer: number,
  parts: readonly Contribution[], // in member order
  members: readonly number[],
): RoundResult {
  const first = parts[0]!;
  let count = 0;
  let data: Float64Array | Float32Array;
  if (phase === "fwd") {
    const out = new Float64Array(first.data.length); // [mean(C), biased var(C)]
    count = mergeMomentsInto(out, parts);
    data = out;
  } else {
    const sum = new Float64Array(first.data.length);
    for (const p of parts) {
      count += p.count;
      if (p.data instanceof Float32Array) addF32(sum, p.data);
      else addF64(sum, p.data);
    }
    // Gradients travel as float32; they are summed in float64 and rounded once.
    data = phase === "grad" ? Float32Array.from(sum) : sum;
  }
  const result: RoundResult = { type: "result", step, phase, layer, count, data };
  if (first.extra) {
    const extra = new Float64Array(first.extra.length);
    for (const p of parts) addF64(extra, p.extra!);
    result.extra = extra;
  }
  checkChecksums(parts, members, step, layer, phase);
  return result;
}

/**
 * Chan et al. merge of [mean(C), M2(C)] contributions in member order into
 * out = [mean(C), biased var(C)]; returns the global count. The arithmetic is
 * that of shared/stats.ts mergeMoments and biasedVariance, in place in `out`
 * (M2 accumulates in the second half, then becomes M2/n).
 */
function mergeMomentsInto(out: Float64Array, parts: readonly Contribution[]): number {
  const c = out.length / 2;
  let countA = 0;
  for (const p of parts) {
    const countB = p.count;
    if (countB === 0) continue; // an empty side contributes nothing
    const d = p.data as Float64Array; // [mean(C), M2(C)]
    const total = countA + countB;
    if (countA === 0) {
      out.set(d);
    } else {
      const wB = countB / total;
      const cross = (countA * countB) / total;
      for (let ch = 0; ch < c; ch++) {
        const mean = out[ch]!;
        const delta = d[ch]! - mean;
        out[ch] = mean + delta * wB;
        out[c + ch] = out[c + ch]! + d[c + ch]! + delta * delta * cross;
      }
    }
    countA = total;
  }
  for (let ch = c; ch < 2 * c; ch++) out[ch] = countA > 0 ? out[ch]! / countA : 0;
  return countA;
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
