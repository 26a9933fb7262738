// Who may join a run: the checks of a worker's hello, the token first, then its
// fields' bounds, protocol version, world size, taken and dropped ranks, each
// refusal saying what to do; and the record of refusals, for logs (capped lines)
// and deadline messages. Conventions are compared by the coordinator (it may
// adopt them). No I/O.

import { createHash, timingSafeEqual } from "node:crypto";
import { ErrorCode, SyncbnError, type ErrorContext } from "../shared/errors.js";
import { capLine } from "../shared/log-line.js";
import { PROTOCOL_VERSION, checkHello, checkHelloEnvelope, type Hello } from "../shared/protocol.js";

export interface AdmissionState {
  /** Ranks of the hello's block held by a connected (or finished) worker. */
  taken: readonly number[];
  /** Elastic mode: ranks of the block that were lost and the run went on without. */
  dropped: readonly number[];
}

/** The ranks a hello claims: [rank, rank + ranks). Only for a hello that passed checkedHello (its block lies in the world). */
export function helloRanks(hello: Hello): number[] {
  return Array.from({ length: hello.ranks ?? 1 }, (_, k) => hello.rank + k);
}

/** "rank 3" or "ranks 4–7": how messages name a block of ranks. */
export function describeRanks(first: number, size: number): string {
  return size === 1 ? `rank ${first}` : `ranks ${first}–${first + size - 1}`;
}

/**
 * Whether a hello's token is the run's, in time that does not depend on where
 * they differ: both are hashed to 32 bytes first, so their lengths need not match.
 */
export function tokensMatch(given: string, required: string): boolean {
  const digest = (s: string): Buffer => createHash("sha256").update(s, "utf8").digest();
  return timingSafeEqual(digest(given), digest(required));
}

/** The error context of a hello's ranks: none unless its block lies in the world (a block of 1e300 ranks is never listed). */
function helloContext(hello: Hello, worldSize: number): ErrorContext {
  const size = hello.ranks ?? 1;
  if (hello.rank + size > worldSize) return {};
  return { rank: size === 1 ? hello.rank : helloRanks(hello) };
}

/**
 * The checks of a connection's first message that need nothing but the message
 * and the run, in this order: an object of type hello with a bounded string token;
 * the token (constant time); every field's type and string lengths; the protocol
 * version; world size and block of ranks within the run's world. Nothing is
 * allocated by what the message claims: numbers are compared, never used as sizes.
 */
export function checkedHello(msg: unknown, run: { token: string; worldSize: number }): { hello: Hello; refusal: null } | { hello: null; refusal: SyncbnError } {
  const refuse = (code: ErrorCode, detail: string, ctx: ErrorContext = {}): { hello: null; refusal: SyncbnError } => ({ hello: null, refusal: new SyncbnError(code, detail, ctx) });
  const envelope = checkHelloEnvelope(msg);
  if (envelope !== null) return refuse(ErrorCode.BadMessage, envelope);
  const shape = checkHello(msg);
  if (run.token !== "" && !tokensMatch((msg as { token: string }).token, run.token)) {
    // Its own claim echoed back, when it is a well-formed block inside the world: the worker's error names its rank.
    return refuse(ErrorCode.Token, "wrong run token; pass the coordinator's --token (or SYNCBN_TOKEN)", shape === null ? helloContext(msg as Hello, run.worldSize) : {});
  }
  if (shape !== null) return refuse(ErrorCode.BadMessage, shape);
  const hello = msg as Hello;
  const size = hello.ranks ?? 1;
  const ctx = helloContext(hello, run.worldSize);
  if (hello.version !== PROTOCOL_VERSION) {
    return refuse(ErrorCode.Version, `protocol version ${hello.version} differs from the coordinator's ${PROTOCOL_VERSION}; run the same syncbn version everywhere`, ctx);
  }
  if (hello.worldSize !== run.worldSize || hello.rank + size > run.worldSize) {
    return refuse(
      ErrorCode.Rank,
      `worker says ${describeRanks(hello.rank, size)} of world size ${hello.worldSize}, but the coordinator runs world size ${run.worldSize} (ranks 0..${run.worldSize - 1})`,
      ctx,
    );
  }
  return { hello, refusal: null };
}

/** The reason to refuse a checked hello (checkedHello) because of the run's membership, or null to go on. */
export function admissionProblem(hello: Hello, run: AdmissionState): SyncbnError | null {
  const size = hello.ranks ?? 1;
  const ctx = { rank: size === 1 ? hello.rank : helloRanks(hello) };
  if (run.dropped.length > 0) {
    return new SyncbnError(
      ErrorCode.WorkerLost,
      `rank ${run.dropped.join(", ")} was lost and the run went on without it (--on-worker-loss continue); rejoining a run is not supported: start a new run, or --resume from its checkpoint`,
      ctx,
    );
  }
  if (run.taken.length > 0) {
    return new SyncbnError(
      ErrorCode.DuplicateRank,
      `rank ${run.taken.join(", ")} ${run.taken.length === 1 ? "is" : "are"} already taken by another worker; give every worker process a distinct block of ranks (--rank, --ranks-per-proc)`,
      ctx,
    );
  }
  return null;
}

/** A hello the coordinator refused; rank null when the message was not a well-formed hello. */
export interface HelloRefusal {
  rank: number | null;
  /** Remote address:port. */
  peer: string;
  error: SyncbnError;
}

/**
 * What became of each rank's hellos: whether it ever joined, and the last refusal
 * of a hello that claimed it, so a deadline waiting on a rank that never joined
 * can say why. Ranks outside the world are not recorded.
 */
export class HelloRecords {
  private readonly joinedEver = new Set<number>();
  private readonly lastRefusal = new Map<number, HelloRefusal>();

  constructor(private readonly worldSize: number) {}

  joined(rank: number): void {
    this.joinedEver.add(rank);
    this.lastRefusal.delete(rank);
  }

  hasJoined(rank: number): boolean {
    return this.joinedEver.has(rank);
  }

  refused(r: HelloRefusal): void {
    if (r.rank !== null && r.rank < this.worldSize && !this.joinedEver.has(r.rank)) this.lastRefusal.set(r.rank, r);
  }

  /** For each of these ranks that never joined: that, and its last refusal at hello ("" if they all joined). */
  neverJoined(missing: readonly number[]): string {
    const parts: string[] = [];
    for (const r of missing) {
      if (this.joinedEver.has(r)) continue;
      const ref = this.lastRefusal.get(r);
      parts.push(
        ref
          ? `rank ${r} never joined: refused at hello (from ${ref.peer}): ${capLine(ref.error.detail)} (${ref.error.code})`
          : `rank ${r} never joined (not started, or cannot reach the coordinator?)`,
      );
    }
    return parts.join("; ");
  }

  /** Why these ranks did not contribute, for a deadline message: neverJoined, and the usual hint for ranks that joined. */
  whyMissing(missing: readonly number[]): string {
    const parts = [this.neverJoined(missing)].filter(Boolean);
    if (missing.some((r) => this.joinedEver.has(r))) parts.push("(frozen, overloaded or crashed?); raise --round-timeout if the workers are just slow");
    return parts.join("; ");
  }
}

/** The log line of a refused hello: rank, address and reason (refusal messages never hold the token). */
export function describeRefusal(r: HelloRefusal): string {
  return `refused a hello${r.rank !== null ? ` as rank ${r.rank}` : ""} from ${r.peer}: ${r.error.message}`;
}

/**
 * A refusal handler that writes describeRefusal lines, each capped (capLine), at
 * most `perWindow` per `windowMs` (a flood of bad hellos must not flood the log),
 * then says how many it left out.
 */
export function refusalLogger(write: (line: string) => void, perWindow = 20, windowMs = 10_000): (r: HelloRefusal) => void {
  let windowStart = -Infinity;
  let shown = 0;
  let hidden = 0;
  return (r) => {
    const now = performance.now();
    if (now - windowStart > windowMs) {
      if (hidden > 0) write(`(${hidden} more refused hellos not shown)`);
      windowStart = now;
      shown = 0;
      hidden = 0;
    }
    if (shown < perWindow) {
      shown++;
      write(capLine(describeRefusal(r)));
    } else hidden++;
  };
}
