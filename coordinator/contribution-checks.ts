// Whether a worker's contribution may enter its round: it comes after the worker's
// previous round, skips no round the worker still owes, is for the round open in
// its scope, and has that round's shape with finite values. Pure functions that
// return the error to fail the run with, or null; on the hot path, so they
// allocate only on the error paths. Not admission (admission.ts), not the reduction.

import { ErrorCode, SyncbnError, type ErrorContext } from "../shared/errors.js";
import { compareRounds, describeRound, type Contribution, type Phase } from "../shared/protocol.js";
import { allFinite } from "./finite.js";

/** A round's place in the order every worker runs rounds in (see compareRounds). */
export interface RoundKey {
  step: number;
  phase: Phase;
  layer: number;
}

/** What these checks read of an open round. */
export interface OpenRoundView extends RoundKey {
  readonly members: readonly number[];
  /** Contributions by member position; null = not yet arrived. */
  readonly parts: readonly (Contribution | null)[];
  /** The first contribution to arrive: the shape the others must have. */
  readonly first: Contribution | null;
}

function contextOf(rank: number, c: Contribution): ErrorContext {
  return { rank, step: c.step, layer: c.layer, phase: c.phase };
}

/**
 * The error if `c` does not come after this rank's previous contribution (`last`),
 * or if it skips an open round the rank has not contributed to yet.
 */
export function orderProblem(rank: number, c: Contribution, last: RoundKey | null, open: ReadonlyMap<string, OpenRoundView>): SyncbnError | null {
  if (last && compareRounds(c, last) <= 0) {
    return new SyncbnError(
      ErrorCode.RoundKey,
      `contribution for ${describeRound(c.step, c.phase, c.layer)} does not come after this worker's previous round (${describeRound(last.step, last.phase, last.layer)})`,
      contextOf(rank, c),
    );
  }
  // A rank may not skip a round it is still owed in: every worker runs the same rounds in the same order.
  for (const r of open.values()) {
    const pos = r.members.indexOf(rank);
    if (pos >= 0 && r.parts[pos] === null && compareRounds(c, r) > 0) {
      return new SyncbnError(
        ErrorCode.RoundKey,
        `worker sent ${describeRound(c.step, c.phase, c.layer)} but its group is waiting for its ${describeRound(r.step, r.phase, r.layer)}; workers must run the same layers in the same order`,
        contextOf(rank, c),
      );
    }
  }
  return null;
}

/** The error if the round open in the contribution's scope is another round (a scope has at most one open round). */
export function otherRoundOpenProblem(rank: number, c: Contribution, round: RoundKey): SyncbnError | null {
  if (round.step === c.step && round.phase === c.phase && round.layer === c.layer) return null;
  return new SyncbnError(
    ErrorCode.RoundKey,
    `contribution for ${describeRound(c.step, c.phase, c.layer)} while ${describeRound(round.step, round.phase, round.layer)} is still open in the same group`,
    contextOf(rank, c),
  );
}

/**
 * The error if `c` differs in length from the round's first contribution (or, for
 * the first contribution of a BN round, from the layer's channel count fixed by its
 * first round: `knownChannels`), or holds NaN or Inf.
 */
export function shapeProblem(rank: number, c: Contribution, first: Contribution | null, knownChannels: number | undefined): SyncbnError | null {
  const isBn = c.phase === "fwd" || c.phase === "bwd";
  const expected = first ? first.data.length : isBn && knownChannels !== undefined ? 2 * knownChannels : c.data.length;
  if (c.data.length !== expected) {
    const what = isBn ? `${c.data.length / 2} channels, expected ${expected / 2}` : `${c.data.length} values, expected ${expected}`;
    return new SyncbnError(ErrorCode.Shape, `contribution has ${what}`, contextOf(rank, c));
  }
  if (first && (first.extra?.length ?? -1) !== (c.extra?.length ?? -1)) {
    return new SyncbnError(ErrorCode.Shape, `contribution's extra vector has ${c.extra?.length ?? 0} values, expected ${first.extra?.length ?? 0}`, contextOf(rank, c));
  }
  if (!allFinite(c.data) || (c.extra && !allFinite(c.extra)) || (c.checksum !== undefined && !Number.isFinite(c.checksum))) {
    return new SyncbnError(ErrorCode.NonFinite, "contribution holds NaN or Inf; the worker's loss or statistics diverged (lower the learning rate?)", contextOf(rank, c));
  }
  return null;
}
