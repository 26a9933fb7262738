// The coordinator's rounds, without sockets: contributions keyed by (step, phase,
// layer) reduced in rank order, one deadline timer for all, results sent once per
// process and shown to observers, and the authoritative running statistics. Who
// is in the run (admission, failure, elastic) is membership.ts; transports (ws,
// tcp, in-memory) feed it bytes through a Peer; it never touches a socket itself.

import { ErrorCode, SyncbnError, isSyncbnError } from "../shared/errors.js";
import { describeRound, type Contribution, type Phase } from "../shared/protocol.js";
import { reduceRound, type ReducedRound } from "./reduce.js";
import { describeRanks } from "./admission.js";
import { orderProblem, otherRoundOpenProblem, shapeProblem } from "./contribution-checks.js";
import { CLOSE_ERROR, type CompletedRound, type CoordinatorOptions, type Peer } from "./coordinator-api.js";
import { Membership } from "./membership.js";

export * from "./coordinator-api.js";

/**
 * Fills the slots of a block's other ranks in a grad or sum round: their process
 * sent one contribution for all of them, at the first rank's slot. Never reduced.
 */
const COVERED: Contribution = Object.freeze({ type: "contrib", step: 0, phase: "sum", layer: 0, count: 0, data: new Float64Array(0) }) as Contribution;

interface OpenRound {
  scope: string;
  step: number;
  phase: Phase;
  layer: number;
  members: readonly number[];
  /** Contributions by member position; null = not yet arrived. */
  parts: (Contribution | null)[];
  /** The first contribution to arrive: the shape the others must have. */
  first: Contribution | null;
  arrived: number;
  /** Slots filled with COVERED (a block's other ranks in a grad or sum round). */
  covered: number;
  /** Σ performance.now() at each contribution's arrival: members × last − this = time members waited for the last. */
  arrivalSum: number;
  /** performance.now() at which its first contribution arrived. */
  opened: number;
  /** performance.now() past which the round fails (see sweepDeadlines). */
  deadline: number;
  /** Its deadline passed while it awaited only ranks that had never joined, and the join window held it open. */
  heldForJoin: boolean;
}

export class Coordinator extends Membership {
  private readonly open = new Map<string, OpenRound>();
  /** Channel count per BN layer, fixed by its first round. */
  private readonly layerChannels = new Map<number, number>();
  /** Ranks that have completed a round: a rank's first round waits for the others' start-up, not counted as waiting. */
  private readonly warmRanks: boolean[] = [];
  /** Σ over members of waiting for the round's last contribution, this step's fwd/bwd/grad rounds so far, ms. */
  private stepWaitOtherRanksMs = 0;

  constructor(opts: CoordinatorOptions) {
    super(opts);
  }

  protected voidRounds(final: boolean): void {
    if (final) {
      if (this.deadlineTimer !== null) clearTimeout(this.deadlineTimer);
      this.deadlineTimer = null;
    }
    this.open.clear();
  }

  /**
   * A contribution of the process whose block starts at `rank`: fwd/bwd data holds
   * one segment per rank of the block, each placed as that rank's part; a grad or
   * sum contribution stands for the whole block (its other slots are COVERED).
   */
  protected contribute(rank: number, c: Contribution): void {
    if (this.failure) return; // the error was already sent to everyone
    if (this.awaitingAck.has(rank) || !this.active.has(rank)) return; // sent before it learned of the resync: void
    this.firstStepSeen ??= c.step;
    const outOfOrder = orderProblem(rank, c, this.lastKey[rank], this.open);
    if (outOfOrder) {
      this.failRun(outOfOrder);
      return;
    }
    const size = this.blocks[rank]!.size;
    for (let r = rank; r < rank + size; r++) {
      const key = this.lastKey[r];
      if (key) {
        key.step = c.step;
        key.phase = c.phase;
        key.layer = c.layer;
      } else {
        this.lastKey[r] = { step: c.step, phase: c.phase, layer: c.layer };
      }
    }
    const bn = c.phase === "fwd" || c.phase === "bwd";
    if (bn && !this.bnRounds) {
      this.failRun(new SyncbnError(ErrorCode.RoundKey, `norm mode ${this.conventions?.norm} has no BN rounds, but a worker sent one`, this.contextOf(rank, c)));
      return;
    }
    const { scope, members } = this.scopes.scopeOf(rank, c.phase);
    if (bn && size > 1) {
      const segment = c.data.length / size;
      if (this.scopes.scopeOf(rank + size - 1, c.phase).scope !== scope) {
        this.failRun(new SyncbnError(ErrorCode.BadMessage, `the process of ${describeRanks(rank, size)} sent a BN round, but its ranks lie in more than one statistics group; a process sends BN rounds only for ranks of one group`, this.contextOf(rank, c)));
        return;
      }
      if (!Number.isInteger(segment) || segment % 2 !== 0) {
        this.failRun(new SyncbnError(ErrorCode.BadMessage, `the process of ${describeRanks(rank, size)} sent ${c.data.length} values in a ${c.phase} round: expected ${size} segments of 2·C`, this.contextOf(rank, c)));
        return;
      }
    }
    // Every member awaits each result before its next round, so a scope has at most one
    // open round: open rounds are keyed by scope alone.
    const id = scope;
    let round = this.open.get(id);
    const otherRound = round ? otherRoundOpenProblem(rank, c, round) : null;
    if (otherRound) {
      this.failRun(otherRound);
      return;
    }
    round ??= this.openRound(id, scope, members, c);
    const own = bn && size > 1 ? segmentOf(c, 0, size) : c;
    const problem = shapeProblem(rank, own, round.first, this.layerChannels.get(c.layer));
    if (problem) {
      this.failRun(problem);
      return;
    }
    // A block's ranks are consecutive and active together, so they sit at consecutive member positions.
    const pos = members.indexOf(rank);
    round.parts[pos] = own;
    for (let k = 1; k < size; k++) round.parts[pos + k] = bn ? segmentOf(c, k, size) : COVERED;
    if (!bn) round.covered += size - 1;
    round.first ??= own;
    round.arrived += size;
    const now = performance.now();
    round.arrivalSum += size * now;
    if (round.arrived === members.length) {
      if (round.phase !== "sum") this.countWaiting(round, now);
      this.complete(id, round);
    }
  }

  /** A contribution's error context, built on the error paths only: who() lists a block's ranks (an array per call). */
  private contextOf(rank: number, c: Contribution): { rank: number | number[]; step: number; layer: number; phase: Phase } {
    return { rank: this.who(rank), step: c.step, layer: c.layer, phase: c.phase };
  }

  private openRound(id: string, scope: string, members: readonly number[], c: Contribution): OpenRound {
    const now = performance.now();
    const round: OpenRound = {
      scope,
      step: c.step,
      phase: c.phase,
      layer: c.layer,
      members,
      parts: new Array<Contribution | null>(members.length).fill(null),
      first: null,
      arrived: 0,
      covered: 0,
      arrivalSum: 0,
      opened: now,
      deadline: now + this.opts.roundTimeoutMs,
      heldForJoin: false,
    };
    this.open.set(id, round);
    this.deadlineTimer ??= this.armDeadline(this.opts.roundTimeoutMs);
    return round;
  }

  /**
   * One timer for every round's deadline, re-armed only when it fires: no timer
   * work per round on the hot path (a per-round setTimeout/clearTimeout pair cost
   * more than the reduction itself). Unref'd: the transport keeps the process alive.
   */
  private deadlineTimer: ReturnType<typeof setTimeout> | null = null;

  private armDeadline(ms: number): ReturnType<typeof setTimeout> {
    const t = setTimeout(() => this.sweepDeadlines(), ms);
    t.unref();
    return t;
  }

  private sweepDeadlines(): void {
    this.deadlineTimer = null;
    if (this.failure) return;
    const now = performance.now();
    for (const [id, r] of this.open) {
      if (r.deadline > now || this.holdForJoin(r, now)) continue;
      this.expire(id);
      break; // expiring fails the run or voids every open round (elastic)
    }
    let next = Number.POSITIVE_INFINITY;
    for (const r of this.open.values()) next = Math.min(next, r.deadline);
    if (next !== Number.POSITIVE_INFINITY && !this.failure) this.deadlineTimer = this.armDeadline(Math.max(1, next - now));
  }

  /**
   * A round past its deadline that awaits only ranks that have never joined waits
   * for them while the join window is open (CoordinatorOptions.joinWindowMs): its
   * deadline becomes the window's end. A rank that joined and is late is not held.
   */
  private holdForJoin(r: OpenRound, now: number): boolean {
    if (now >= this.joinWindowEnd) return false;
    for (let i = 0; i < r.members.length; i++) {
      if (r.parts[i] === null && this.hellos.hasJoined(r.members[i]!)) return false;
    }
    r.deadline = this.joinWindowEnd;
    r.heldForJoin = true;
    return true;
  }

  /** Ranks just joined: each open round awaiting one of them has a whole round deadline from now. */
  protected joined(ranks: readonly number[]): void {
    if (this.open.size === 0 || this.failure) return;
    const now = performance.now();
    const deadline = now + this.opts.roundTimeoutMs;
    let next = Number.POSITIVE_INFINITY;
    for (const r of this.open.values()) {
      // A round held for the join window (deadline at the window's end) now waits a round deadline from this join.
      if (ranks.some((rank) => r.parts[r.members.indexOf(rank)] === null)) r.deadline = r.heldForJoin ? deadline : Math.max(r.deadline, deadline);
      next = Math.min(next, r.deadline);
    }
    // The timer may be armed for the window's end, later than the new deadline.
    if (this.deadlineTimer !== null) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = this.armDeadline(Math.max(1, next - now));
  }

  /** Adds a completed training round's waiting for its last contribution (`last` its arrival) to the step's. */
  private countWaiting(round: OpenRound, last: number): void {
    let warm = true;
    for (const r of round.members) {
      if (this.warmRanks[r] !== true) warm = false;
      this.warmRanks[r] = true;
    }
    if (warm) this.stepWaitOtherRanksMs += round.members.length * last - round.arrivalSum;
  }

  private complete(id: string, round: OpenRound): void {
    this.open.delete(id);
    let parts = round.parts as Contribution[];
    let members = round.members;
    if (round.covered > 0) {
      // One contribution per process: reduce those (in member order), and show observers null at the covered slots.
      const all = parts;
      const n = all.length - round.covered;
      parts = new Array<Contribution>(n);
      const reducing = new Array<number>(n);
      for (let i = 0, j = 0; i < all.length; i++) {
        if (all[i] === COVERED) {
          round.parts[i] = null;
          continue;
        }
        parts[j] = all[i]!;
        reducing[j++] = round.members[i]!;
      }
      members = reducing;
    }
    const observed: CompletedRound = round;
    let reduced: ReducedRound;
    try {
      reduced = reduceRound(round.step, round.phase, round.layer, parts, members);
    } catch (e) {
      this.failRun(isSyncbnError(e) ? e : new SyncbnError(ErrorCode.BadMessage, String(e), { step: round.step, layer: round.layer, phase: round.phase }));
      return;
    }
    const result = reduced.result;
    if (round.phase === "fwd") {
      if (!this.layerChannels.has(round.layer)) this.layerChannels.set(round.layer, result.data.length / 2);
      if (result.count === 1) {
        this.failRun(
          new SyncbnError(ErrorCode.SingleValue, "expected more than 1 value per channel when training, but the global batch has 1 value per channel; use a larger batch", {
            step: round.step,
            layer: round.layer,
            phase: round.phase,
          }),
        );
        return;
      }
      // The group of the lowest active rank (group 0, the only one in sync mode) holds the
      // authoritative running stats, as rank 0 does in DDP; committed when the step completes.
      if (round.members.includes(this.scopes.lowestActive)) this.runningStats.stage(round.step, round.layer, result.count, result.data);
    }
    if (round.phase === "grad") {
      this.runningStats.commit();
      this.lastCompletedGradStep = round.step;
    }
    // Once per process: a block's ranks are consecutive members sharing one peer.
    let sentTo: Peer | null = null;
    for (const r of round.members) {
      const p = this.peers[r];
      if (p && p !== sentTo) p.send(reduced.frame);
      sentTo = p ?? sentTo;
    }
    let waitOtherRanksMs: number | undefined;
    if (round.phase === "grad") {
      waitOtherRanksMs = this.stepWaitOtherRanksMs;
      this.stepWaitOtherRanksMs = 0;
    }
    // data and extra are views of the sent frame, reused once the sends completed: valid during the call only.
    this.events.onRound?.({ step: round.step, phase: round.phase, layer: round.layer, count: result.count, data: result.data, extra: result.extra, waitOtherRanksMs });
    for (const o of this.observers) o.afterRound(observed, result);
  }

  private expire(id: string): void {
    const round = this.open.get(id);
    if (!round || this.failure) return;
    const missing = round.members.filter((_, i) => round.parts[i] === null);
    // Held open by the join window, and still only awaiting ranks that never joined: the window is what passed.
    const window = round.heldForJoin && !missing.some((r) => this.hellos.hasJoined(r)) ? `the ${this.opts.joinWindowMs} ms join window` : null;
    if (this.opts.onWorkerLoss === "continue") {
      for (const p of new Set(missing.map((r) => this.peers[r]))) p?.close(CLOSE_ERROR, "missed a round deadline");
      const never = this.hellos.neverJoined(missing);
      const what = window ? `had not joined by the end of ${window}, during` : `missed the ${this.opts.roundTimeoutMs} ms deadline of`;
      this.loseWorkers(missing, `${what} ${describeRound(round.step, round.phase, round.layer)}${never ? ` (${never})` : ""}`);
      return;
    }
    const passed = window ?? `round deadline of ${this.opts.roundTimeoutMs} ms`;
    this.failRun(
      new SyncbnError(ErrorCode.Timeout, `${passed} passed without a contribution from rank(s) ${missing.join(", ")}: ${this.hellos.whyMissing(missing)}`, {
        rank: missing,
        step: round.step,
        layer: round.layer,
        phase: round.phase,
      }),
    );
  }

  /** Where the run waits with a rank: an open round it has not contributed to, one it has, or (between rounds) its last round. */
  protected pendingFor(rank: number): { text: string; step: number; layer: number; phase: Phase; after?: boolean } | null {
    const open = [...this.open.values()].filter((r) => r.members.includes(rank));
    // First a round still awaiting this rank; then one it joined that still awaits others.
    const r = open.find((o) => o.parts[o.members.indexOf(rank)] === null) ?? open[0];
    if (r) return { text: describeRound(r.step, r.phase, r.layer), step: r.step, layer: r.layer, phase: r.phase };
    // No open round: the run was between rounds, after the last one this rank finished.
    const last = this.lastKey[rank];
    return last ? { text: `the round after ${describeRound(last.step, last.phase, last.layer)}`, ...last, after: true } : null;
  }
}

/** Rank k's segment of a block's fwd/bwd contribution: a view, as that rank would have sent it. */
function segmentOf(c: Contribution, k: number, size: number): Contribution {
  const len = c.data.length / size;
  return { type: "contrib", step: c.step, phase: c.phase, layer: c.layer, count: c.count, data: c.data.subarray(k * len, (k + 1) * len) };
}
