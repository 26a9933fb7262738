// The wire protocol between workers and the coordinator (DESIGN.md §5): one
// interface and one type guard per message. Guards validate everything a
// hostile peer could get wrong. Encoding lives in codec.ts; sockets elsewhere.

import type { RunConventions } from "./config.js";

// 2: contributions and results travel as binary frames (shared/codec.ts), not msgpack.
// 3: a worker process may host a block of consecutive ranks (Hello.ranks).
// 4: the gradient round's extra carries the step's learning rate (GradExtra.lr).
// 5: a worker may name its BN layers once (LayerNames), for the dashboard and metrics.
export const PROTOCOL_VERSION = 5;

/**
 * Phases of a round. fwd: BN moments (Chan merge within the stats group);
 * bwd: BN gradient sums (within the stats group); grad: parameter gradients
 * summed over all workers; sum: any small float64 vector summed over all workers
 * (eval counts, precise-BN sums).
 */
export type Phase = "fwd" | "bwd" | "grad" | "sum";
export const PHASES: readonly Phase[] = ["fwd", "bwd", "grad", "sum"];

/** Worker → coordinator, first message. */
export interface Hello {
  type: "hello";
  version: number;
  /** The first rank of the process's block [rank, rank + ranks). */
  rank: number;
  /** How many consecutive ranks the process hosts; absent = 1. */
  ranks?: number;
  worldSize: number;
  token: string;
  conventions: RunConventions;
}

/** Node's timer maximum (2^31 − 1 ms; a longer delay fires at once): bounds every timeout flag and a welcome's joinWaitMs. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Coordinator → worker, hello accepted. */
export interface Welcome {
  type: "welcome";
  version: number;
  rank: number;
  ranks: number;
  worldSize: number;
  /**
   * The coordinator's output folder (absolute) and the host it is on, when it has
   * one: a worker started by hand without --out on that same host writes there, so
   * a run's checkpoint and weights land beside its summary.
   */
  outDir?: OutDirNotice;
  /**
   * How long the coordinator's join window (--join-timeout) is still open, ms, when
   * it is: a round may wait that long for ranks that have not joined yet, plus its
   * deadline from their join, so a client waits for a result until
   * max(sent, welcome + joinWaitMs) + round timeout. Absent: no window.
   */
  joinWaitMs?: number;
}

/** Where a coordinator writes: its host name (os.hostname()) and absolute folder. */
export interface OutDirNotice {
  host: string;
  path: string;
}

/**
 * Worker → coordinator, one worker process's part of round (step, phase, layer).
 * fwd: count = local element count per channel, data = [mean(C), M2(C)].
 * bwd: count = local element count, data = [Σdy(C), Σdy·xhat(C)].
 * A process hosting a block of R ranks sends fwd/bwd data as R such segments in
 * rank order (count = the count of one rank, the same for all R), which the
 * coordinator reduces as R ranks' parts; grad and sum contributions are one per
 * process, summed over its ranks (count = their total).
 * grad: data = summed gradients: Float32Array from one rank; from a block, Float64Array
 *   (each rank's float32 gradients summed in float64, so the coordinator's float64 sum
 *   is that of R processes); extra = metric sums (Float64Array),
 *   checksum = parameter checksum when the coordinator asked for one (every K steps).
 * sum: data = Float64Array summed elementwise.
 */
export interface Contribution {
  type: "contrib";
  step: number;
  phase: Phase;
  layer: number;
  count: number;
  data: Float64Array | Float32Array;
  extra?: Float64Array;
  checksum?: number;
}

/**
 * Coordinator → worker, the round's reduced result.
 * fwd: count = global n, data = [mean(C), biased var(C)].
 * bwd/grad/sum: count = Σcount, data = elementwise sums (same type as sent), extra summed.
 */
export interface RoundResult {
  type: "result";
  step: number;
  phase: Phase;
  layer: number;
  count: number;
  data: Float64Array | Float32Array;
  extra?: Float64Array;
}

/** Coordinator → worker: the run (or this worker's admission) failed. */
export interface ErrorMessage {
  type: "error";
  code: string;
  message: string;
  rank?: number | number[];
  step?: number;
  layer?: number;
  phase?: string;
}

/**
 * Coordinator → workers (elastic mode): a worker was lost; redo from `step` (the
 * first step whose gradient round had not completed) with the `active` ranks.
 * Every pending round is void; the worker answers with a ResyncAck.
 */
export interface Resync {
  type: "resync";
  generation: number;
  active: number[];
  step: number;
  lost: number[];
}

/** Worker → coordinator: resync received; contributions after this belong to the new generation. */
export interface ResyncAck {
  type: "resync-ack";
  generation: number;
}

/** Worker → coordinator: this worker finished normally; its disconnect is not a failure. */
export interface Bye {
  type: "bye";
}

/**
 * Worker → coordinator, optional, after the welcome: the names of the BN layers,
 * `names[i]` being the layer whose rounds carry `layer: i` (a TypeScript worker's
 * graph node names, a Python worker's qualified module names). Only shown (the
 * dashboard, metrics.jsonl's bn lines); the coordinator keeps the first list it gets.
 */
export interface LayerNames {
  type: "layers";
  names: string[];
}

/** Bounds of a LayerNames message: far above any real model, small enough to keep. */
export const LAYER_NAMES_MAX = { count: 4096, chars: 200 } as const;

export type ClientMessage = Hello | Contribution | Bye | ResyncAck | LayerNames;
export type ServerMessage = Welcome | RoundResult | ErrorMessage | Resync;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
function isNonNegInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0;
}

function isConventions(v: unknown): v is RunConventions {
  return (
    isObject(v) &&
    typeof v.eps === "number" &&
    (v.momentum === null || typeof v.momentum === "number") &&
    (v.momentumStyle === "torch" || v.momentumStyle === "keras") &&
    typeof v.unbiasedRunningVar === "boolean" &&
    typeof v.norm === "string" &&
    typeof v.training === "string"
  );
}

/**
 * Longest strings a hello may carry, far above any real one (a norm mode is a few
 * characters; the training settings' JSON a few hundred): an unauthenticated peer's
 * strings end up in refusal messages and logs. The whole message is also capped
 * (64 KiB before the hello, coordinator/pending.ts).
 */
export const HELLO_MAX_CHARS = { token: 1024, norm: 64, training: 16 * 1024 } as const;

/**
 * What the coordinator tells a connection it closes before its hello to make room
 * for a newer one (coordinator/pending.ts), as the detail of a
 * SYNCBN_ERR_COORDINATOR_LOST error (a worker retries) or the body of an HTTP 503.
 */
export const TOO_MANY_PENDING = "the coordinator has too many unauthenticated connections";

/** The part of a hello checked before its token is: an object of type hello with a string token of bounded length. */
export function checkHelloEnvelope(v: unknown): string | null {
  if (!isObject(v) || v.type !== "hello") return "first message must be a hello";
  if (typeof v.token !== "string") return "hello.token must be a string";
  if (v.token.length > HELLO_MAX_CHARS.token) return `hello.token must be at most ${HELLO_MAX_CHARS.token} characters`;
  return null;
}

/**
 * Returns null if valid, else what is wrong (for the error sent back). Numbers are
 * only checked to be integers here; their bounds by the world size are the
 * coordinator's (coordinator/admission.ts).
 */
export function checkHello(v: unknown): string | null {
  const envelope = checkHelloEnvelope(v);
  if (envelope !== null || !isObject(v)) return envelope ?? "first message must be a hello";
  if (!isNonNegInt(v.version)) return "hello.version must be a non-negative integer";
  if (!isNonNegInt(v.rank)) return "hello.rank must be a non-negative integer";
  if (v.ranks !== undefined && (!isNonNegInt(v.ranks) || v.ranks < 1)) return "hello.ranks must be a positive integer";
  if (!isNonNegInt(v.worldSize) || v.worldSize < 1) return "hello.worldSize must be a positive integer";
  if (!isConventions(v.conventions)) return "hello.conventions must hold eps, momentum, momentumStyle, unbiasedRunningVar, norm, training";
  if (v.conventions.norm.length > HELLO_MAX_CHARS.norm) return `hello.conventions.norm must be at most ${HELLO_MAX_CHARS.norm} characters`;
  if (v.conventions.training.length > HELLO_MAX_CHARS.training) return `hello.conventions.training must be at most ${HELLO_MAX_CHARS.training} characters`;
  return null;
}

/** Returns null if a LayerNames message is valid (within LAYER_NAMES_MAX), else what is wrong. */
export function checkLayerNames(v: unknown): string | null {
  if (!isObject(v) || v.type !== "layers" || !Array.isArray(v.names)) return "a layers message must hold names, an array of strings";
  if (v.names.length > LAYER_NAMES_MAX.count) return `a layers message may name at most ${LAYER_NAMES_MAX.count} layers, got ${v.names.length}`;
  const bad = v.names.findIndex((n) => typeof n !== "string" || n.length > LAYER_NAMES_MAX.chars);
  if (bad >= 0) return `layers.names[${bad}] must be a string of at most ${LAYER_NAMES_MAX.chars} characters`;
  return null;
}

/** Returns null if the shape is valid, else what is wrong. Finite-ness is checked by the round. */
export function checkContribution(v: unknown): string | null {
  if (!isObject(v) || v.type !== "contrib") return "expected a contrib message";
  if (!isNonNegInt(v.step)) return "contrib.step must be a non-negative integer";
  if (typeof v.phase !== "string" || !(PHASES as readonly string[]).includes(v.phase)) {
    return `contrib.phase must be one of ${PHASES.join(", ")}`;
  }
  if (typeof v.layer !== "number" || !Number.isInteger(v.layer) || v.layer < -1) {
    return "contrib.layer must be an integer ≥ -1";
  }
  if (!isNonNegInt(v.count)) return "contrib.count must be a non-negative integer";
  if (v.phase === "grad") {
    // float32 from one rank, float64 from a block of ranks (its ranks' float32 grads summed).
    if (!(v.data instanceof Float32Array || v.data instanceof Float64Array)) return "contrib.data must be a Float32Array or Float64Array in a grad round";
  } else if (!(v.data instanceof Float64Array)) {
    return `contrib.data must be a Float64Array in a ${v.phase} round`;
  }
  if ((v.phase === "fwd" || v.phase === "bwd") && v.data.length % 2 !== 0) {
    return `contrib.data must hold 2·C values in a ${v.phase} round`;
  }
  if (v.extra !== undefined && !(v.extra instanceof Float64Array)) return "contrib.extra must be a Float64Array";
  if (v.checksum !== undefined && typeof v.checksum !== "number") return "contrib.checksum must be a number";
  return null;
}

export function isOutDirNotice(v: unknown): v is OutDirNotice {
  return isObject(v) && typeof v.host === "string" && typeof v.path === "string" && v.path !== "";
}

export function isServerMessage(v: unknown): v is ServerMessage {
  if (!isObject(v)) return false;
  switch (v.type) {
    case "welcome":
      return isNonNegInt(v.rank) && isNonNegInt(v.worldSize);
    case "result":
      return (
        isNonNegInt(v.step) &&
        typeof v.phase === "string" &&
        typeof v.layer === "number" &&
        isNonNegInt(v.count) &&
        (v.data instanceof Float64Array || v.data instanceof Float32Array)
      );
    case "error":
      return typeof v.code === "string" && typeof v.message === "string";
    case "resync":
      return isNonNegInt(v.generation) && isNonNegInt(v.step) && Array.isArray(v.active) && v.active.every(isNonNegInt) && Array.isArray(v.lost);
    default:
      return false;
  }
}

/** Human-readable key of a round, e.g. "step 4 fwd layer 2". */
export function describeRound(step: number, phase: Phase, layer: number): string {
  return `step ${step} ${phase}${layer >= 0 ? ` layer ${layer}` : ""}`;
}

const PHASE_ORDER: Record<Phase, number> = { fwd: 0, bwd: 1, grad: 2, sum: 3 };

/**
 * The order every worker runs rounds in: by step; within a step forward layers
 * ascending, backward layers descending, then the gradient round, then sum rounds
 * (eval, precise BN) by their index. Negative: a before b.
 */
export function compareRounds(
  a: { step: number; phase: Phase; layer: number },
  b: { step: number; phase: Phase; layer: number },
): number {
  if (a.step !== b.step) return a.step - b.step;
  if (a.phase !== b.phase) return PHASE_ORDER[a.phase] - PHASE_ORDER[b.phase];
  return a.phase === "bwd" ? b.layer - a.layer : a.layer - b.layer;
}

/** Layout of the grad round's extra vector (summed over workers). */
export const GradExtra = {
  lossSum: 0,
  correct: 1,
  count: 2,
  /** Previous step's time waiting in rounds, ms. */
  syncWaitMs: 3,
  /** Previous step's time outside rounds, ms. */
  computeMs: 4,
  /** The run's total steps and steps per epoch (every worker sends the same value). */
  totalSteps: 5,
  stepsPerEpoch: 6,
  /**
   * The step's learning rate, sent only by the process hosting the lowest rank
   * still in the run (the others send 0), so the sum is the rate itself, exactly.
   */
  lr: 7,
  length: 8,
} as const;

/** The `layer` ids of sum rounds within a step, in the order workers run them. */
export const SumRound = {
  /** Rank 0 sends its running statistics, others zeros: everyone gets rank 0's. */
  BroadcastStats: 0,
  /** PreciseBN population statistics. */
  PreciseStats: 1,
  /** Test-set evaluation: data = [lossSum, correct, count]. */
  Eval: 2,
} as const;
