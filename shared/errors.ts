// Error codes and the one error class of syncbn. Every failure a user can see has a
// stable code (documented in docs/errors.md's table) and, in distributed code, the
// rank/step/layer/phase it happened at. Not a logger; not Node-specific.

export const ErrorCode = {
  /** A CLI flag or config value is invalid. */
  BadConfig: "SYNCBN_ERR_BAD_CONFIG",
  /** Protocol versions of worker and coordinator differ. */
  Version: "SYNCBN_ERR_VERSION",
  /** Wrong or missing run token. */
  Token: "SYNCBN_ERR_TOKEN",
  /** Rank outside 0..W-1, or world size differs from the coordinator's. */
  Rank: "SYNCBN_ERR_RANK",
  /** Another connected worker already holds this rank. */
  DuplicateRank: "SYNCBN_ERR_DUPLICATE_RANK",
  /** BN conventions (eps, momentum, norm mode...) differ from the run's. */
  Conventions: "SYNCBN_ERR_CONVENTIONS",
  /** A message could not be decoded or does not have the expected fields. */
  BadMessage: "SYNCBN_ERR_BAD_MESSAGE",
  /** A contribution for a round key that is not the one expected. */
  RoundKey: "SYNCBN_ERR_ROUND_KEY",
  /** A contribution whose size differs from the other members'. */
  Shape: "SYNCBN_ERR_SHAPE",
  /** NaN or Inf in a contribution. */
  NonFinite: "SYNCBN_ERR_NON_FINITE",
  /** A round did not complete before its deadline. */
  Timeout: "SYNCBN_ERR_TIMEOUT",
  /** A worker disconnected or died while the run was in progress. */
  WorkerLost: "SYNCBN_ERR_WORKER_LOST",
  /** The coordinator went away or could not be reached. */
  CoordinatorLost: "SYNCBN_ERR_COORDINATOR_LOST",
  /** Training-mode BN saw a single value per channel over the (global) batch. */
  SingleValue: "SYNCBN_ERR_SINGLE_VALUE",
  /** Replicas' parameters diverged (checksum mismatch). */
  Diverged: "SYNCBN_ERR_DIVERGED",
  /** A data file is missing, truncated or malformed. */
  Data: "SYNCBN_ERR_DATA",
  /** A checkpoint is missing, truncated, corrupted or does not fit the model. */
  Checkpoint: "SYNCBN_ERR_CHECKPOINT",
  /** metrics.jsonl or summary.json could not be written (disk full, read-only). */
  Output: "SYNCBN_ERR_OUTPUT",
  /** The run was aborted because of another failure (see the root cause). */
  Aborted: "SYNCBN_ERR_ABORTED",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Where in a distributed step an error happened; any field may be unknown. */
export interface ErrorContext {
  rank?: number | readonly number[];
  step?: number;
  layer?: number;
  phase?: string;
  /** The step/layer/phase name the last round finished, not an open one (the run was between rounds). */
  after?: boolean;
}

function describeContext(ctx: ErrorContext): string {
  const parts: string[] = [];
  if (ctx.rank !== undefined) {
    parts.push(typeof ctx.rank === "number" ? `rank ${ctx.rank}` : `rank(s) ${ctx.rank.join(",")}`);
  }
  if (ctx.step !== undefined) parts.push(`step ${ctx.step}`);
  if (ctx.layer !== undefined && ctx.layer >= 0) parts.push(`layer ${ctx.layer}`);
  if (ctx.phase !== undefined) parts.push(`phase ${ctx.phase}`);
  return parts.join(", ");
}

export class SyncbnError extends Error {
  readonly code: ErrorCode;
  readonly context: ErrorContext;
  /** The message without code and context, as given by the thrower. */
  readonly detail: string;
  /** Refused before anything started (bad input: exit 2), not a run that failed (exit 1). */
  readonly beforeStart: boolean;

  constructor(code: ErrorCode, detail: string, context: ErrorContext = {}, opts: { beforeStart?: boolean } = {}) {
    const where = describeContext(context);
    super(`${code}: ${where ? `[${where}] ` : ""}${detail}`);
    this.name = "SyncbnError";
    this.code = code;
    this.context = context;
    this.detail = detail;
    this.beforeStart = opts.beforeStart ?? code === ErrorCode.BadConfig;
  }
}

/** The ranks an error names in its context (none when it names none). */
export function namedRanks(err: { readonly context: ErrorContext } | null | undefined): readonly number[] {
  const r = err?.context.rank;
  return r === undefined ? [] : typeof r === "number" ? [r] : r;
}

/**
 * The ranks a run-failing error names as lost (a closed connection, not a missed
 * deadline): a launcher's failure report waits up to LOST_EXIT_GRACE_MS for them to
 * exit by themselves, as their exit code or signal says more than "lost its connection".
 */
export function lostRanks(err: SyncbnError | null | undefined): readonly number[] {
  return err && err.code !== ErrorCode.Timeout ? namedRanks(err) : [];
}

/** How long a failure report waits for the ranks of lostRanks() to exit (their teardown can take seconds on a loaded machine). */
export const LOST_EXIT_GRACE_MS = 5_000;

/** "step S, phase P, layer L" of an error's context, the parts it has ("" for none). */
export function roundPlace(ctx: ErrorContext | undefined): string {
  if (!ctx) return "";
  return [ctx.step !== undefined ? `step ${ctx.step}` : "", ctx.phase ? `phase ${ctx.phase}` : "", ctx.layer !== undefined && ctx.layer >= 0 ? `layer ${ctx.layer}` : ""].filter(Boolean).join(", ");
}

export function isSyncbnError(e: unknown): e is SyncbnError {
  return e instanceof SyncbnError;
}
