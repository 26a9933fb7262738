// Reduction of one round's contributions, always in rank (member) order so the
// result never depends on arrival order: Chan merge for BN moments, float64 sums
// for everything else. Also compares parameter checksums of the replicas.

import { ErrorCode, SyncbnError } from "../shared/errors.js";
import type { Contribution, Phase, RoundResult } from "../shared/protocol.js";
import { biasedVariance, emptyMoments, mergeMoments } from "../shared/stats.js";

export function reduceRound(
  step: number,
  phase: Phase,
  layer: number,
  parts: readonly Contribution[], // in member order
  members: readonly number[],
): RoundResult {
  const first = parts[0]!;
  const len = first.data.length;
  let count = 0;
  let data: Float64Array | Float32Array;
  if (phase === "fwd") {
    const c = len / 2;
    const acc = emptyMoments(c);
    for (const p of parts) {
      const d = p.data as Float64Array;
      mergeMoments(acc, p.count, d.subarray(0, c), d.subarray(c));
    }
    const out = new Float64Array(2 * c); // [mean(C), biased var(C)]
    out.set(acc.mean, 0);
    biasedVariance(out.subarray(c), acc);
    count = acc.count;
    data = out;
  } else {
    const sum = new Float64Array(len);
    for (const p of parts) {
      count += p.count;
      const d = p.data;
      for (let i = 0; i < len; i++) sum[i]! += d[i]!;
    }
    // Gradients travel as float32; they are summed in float64 and rounded once.
    data = phase === "grad" ? Float32Array.from(sum) : sum;
  }
  const result: RoundResult = { type: "result", step, phase, layer, count, data };
  if (first.extra) {
    const extra = new Float64Array(first.extra.length);
    for (const p of parts) for (let i = 0; i < extra.length; i++) extra[i]! += p.extra![i]!;
    result.extra = extra;
  }
  checkChecksums(parts, members, { step, layer, phase });
  return result;
}

function checkChecksums(
  parts: readonly Contribution[],
  members: readonly number[],
  ctx: { step: number; layer: number; phase: Phase },
): void {
  const withSum = parts.filter((p) => p.checksum !== undefined);
  if (withSum.length === 0) return;
  if (withSum.length !== parts.length) {
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
