// What the coordinator shows the outside: the Peer a transport feeds it through,
// its options, the events and round observers it reports to, the close codes and
// the error message it sends. Declarations only; the logic is membership.ts
// (admission, failure, elastic) and coordinator.ts (rounds).

import type { RunConventions } from "../shared/config.js";
import type { SyncbnError } from "../shared/errors.js";
import type { Contribution, ErrorMessage, OutDirNotice, Phase, RoundResult } from "../shared/protocol.js";
import type { HelloRefusal } from "./admission.js";

/** One connected client as the coordinator sees it. */
export interface Peer {
  send(bytes: Uint8Array): void;
  /** Close the connection; code follows WebSocket close codes (1008 policy, 1011 error). */
  close(code: number, reason: string): void;
  /** For log lines only, e.g. "127.0.0.1:53412". */
  readonly label: string;
  /** Its hello was accepted (before the welcome): the transport lifts its pre-hello limits; a throw refuses it. */
  admitted?(): void;
}

export interface CoordinatorOptions {
  worldSize: number;
  /** Required token; "" accepts any token (loopback-only runs). */
  token: string;
  /** The run's conventions; null adopts those of the first worker and holds the rest to them. */
  conventions: RunConventions | null;
  /** A round fails if not every member contributed this long after it opened. */
  roundTimeoutMs: number;
  /**
   * The join window, ms from the coordinator's start (default 0: none). While it is
   * open, a round whose missing members have never joined does not fail at its
   * deadline but waits for them until the window closes, and a rank that joins
   * gives each round awaiting it a whole roundTimeoutMs from its join: ranks that
   * start late (a slow import on a loaded machine) are waited for by the join
   * window, not by the first round's deadline. Welcomes say how long it is still
   * open (Welcome.joinWaitMs) so that clients wait that much longer for results.
   */
  joinWindowMs?: number;
  /**
   * What a lost worker (disconnected, or missed a deadline) does to the run:
   * "abort" (default) fails it; "continue" drops the worker and has the others
   * redo the unfinished step without it (elastic).
   */
  onWorkerLoss?: "abort" | "continue";
  /** Told to every worker in its welcome (protocol.ts Welcome.outDir). */
  outDir?: OutDirNotice;
}

/** A completed round, for observers (launcher progress, tests). */
export interface RoundEvent {
  step: number;
  phase: Phase;
  layer: number;
  count: number;
  data: Float64Array | Float32Array;
  extra: Float64Array | undefined;
  /**
   * Grad rounds only: over this step's fwd, bwd and grad rounds, the sum over
   * members of the time from the member's contribution arriving to the round's
   * last contribution arriving, ms: how long workers waited for other ranks.
   * The first round each rank takes part in is start-up, not counted.
   */
  waitOtherRanksMs?: number;
}

/** A completed round as observers see it, after its result was sent: read-only, valid during the call only (parts reuse frames). */
export interface CompletedRound {
  readonly step: number;
  readonly phase: Phase;
  readonly layer: number;
  readonly members: readonly number[];
  /** Contributions by member position. */
  readonly parts: readonly (Contribution | null)[];
  /** performance.now() at which the round opened (its first contribution arrived). */
  readonly opened: number;
  /** performance.now() at which the round would have failed. */
  readonly deadline: number;
}

/**
 * Read-only watchers (BN spread, dashboard): they see rounds after the result went out and cannot change the run.
 * In grad and sum rounds a process hosting several ranks sends one part for all of them: it sits at the
 * position of its first rank, the positions of its other ranks are null (see Coordinator.blockOf).
 */
export interface RoundObserver {
  afterRound(round: CompletedRound, result: RoundResult): void;
  /** The rank said bye (finished normally). */
  rankFinished?(rank: number): void;
}

export interface CoordinatorEvents {
  onJoin?(rank: number): void;
  /** A hello was refused (the peer has been told why); for the log. */
  onRefused?(r: HelloRefusal): void;
  onRound?(ev: RoundEvent): void;
  /** The run failed; every peer has been sent the error. Called once. */
  onFailed?(err: SyncbnError): void;
  /** Every remaining rank said bye. */
  onDone?(): void;
  /** Elastic mode: ranks were dropped; the others redo from `step`. */
  onWorkersLost?(ranks: number[], step: number, reason: string): void;
}

/** WebSocket close codes used on refusal and failure. */
export const CLOSE_POLICY = 1008;
export const CLOSE_ERROR = 1011;

export function toErrorMessage(err: SyncbnError): ErrorMessage {
  const { rank, step, layer, phase } = err.context;
  const msg: ErrorMessage = { type: "error", code: err.code, message: err.message };
  if (rank !== undefined) msg.rank = typeof rank === "number" ? rank : [...rank];
  if (step !== undefined) msg.step = step;
  if (layer !== undefined) msg.layer = layer;
  if (phase !== undefined) msg.phase = phase;
  return msg;
}
