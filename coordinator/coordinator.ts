// The coordinator's logic, without sockets: admission (hello), rounds keyed by
// (step, phase, layer) reduced in rank order, deadlines, failure fan-out, and the
// authoritative running statistics. Transports (ws server, in-memory) feed it
// bytes through a Peer; it never touches a socket itself.

import { decode, encode } from "../shared/codec.js";
import {
  conventionsMismatch,
  parseNorm,
  statsGroupSize,
  validateConventions,
  type RunConventions,
} from "../shared/config.js";
import { ErrorCode, SyncbnError, isSyncbnError } from "../shared/errors.js";
import {
  PROTOCOL_VERSION,
  checkContribution,
  checkHello,
  describeRound,
  type Contribution,
  type ErrorMessage,
  type Hello,
  type OutDirNotice,
  type Phase,
  type RoundResult,
} from "../shared/protocol.js";
import { RunningStatsTable } from "./running-stats.js";
import { reduceRound, type ReducedRound } from "./reduce.js";
import { HelloRecords, admissionProblem, describeRanks, helloRanks, type HelloRefusal } from "./admission.js";
import { orderProblem, otherRoundOpenProblem, shapeProblem, type RoundKey } from "./contribution-checks.js";
import { ScopeTable } from "./scopes.js";

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
  /** performance.now() at which the round would have failed: opened at deadline − roundTimeoutMs. */
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
  /** Σ performance.now() at each contribution's arrival: members × last − this = time members waited for the last. */
  arrivalSum: number;
  /** performance.now() past which the round fails (see sweepDeadlines). */
  deadline: number;
}

/** WebSocket close codes used on refusal and failure. */
export const CLOSE_POLICY = 1008;
export const CLOSE_ERROR = 1011;

export class Coordinator {
  readonly worldSize: number;
  private readonly opts: CoordinatorOptions;
  private conventions: RunConventions | null;
  private groupSize = 1;
  /** Whether the norm mode has BN rounds at all (sync, group:K). */
  private bnRounds = false;
  /** By rank: the connection of the process hosting it (one peer serves all ranks of its block). */
  private readonly peers: (Peer | null)[];
  /** Peer → the first rank of its block. */
  private readonly byPeer = new Map<Peer, number>();
  /** By rank: the first rank and size of the block of the process that hosts (or hosted) it; size 1 until it joins. */
  private readonly blocks: { first: number; size: number }[];
  private readonly finished = new Set<number>();
  /** Last contribution key per rank, for the monotonic-order check. */
  private readonly lastKey: (RoundKey | null)[];
  private readonly open = new Map<string, OpenRound>();
  /** Channel count per BN layer, fixed by its first round. */
  private readonly layerChannels = new Map<number, number>();
  private failure: SyncbnError | null = null;
  /** Ranks still in the run (all of them unless elastic mode dropped some). */
  private readonly active = new Set<number>();
  /** Who reduces with whom among the active ranks; rebuilt with the conventions or the membership. */
  private readonly scopes = new ScopeTable();
  /** Membership generation; bumped by every resync. */
  private generation = 0;
  /** Ranks whose contributions are stale until they acknowledge the latest resync. */
  private readonly awaitingAck = new Set<number>();
  private lastCompletedGradStep: number | null = null;
  private firstStepSeen: number | null = null;
  /** Ranks that have completed a round: a rank's first round waits for the others' start-up, not counted as waiting. */
  private readonly warmRanks: boolean[] = [];
  /** Σ over members of waiting for the round's last contribution, this step's fwd/bwd/grad rounds so far, ms. */
  private stepWaitOtherRanksMs = 0;
  readonly lostWorkers: { rank: number; step: number; reason: string }[] = [];
  private readonly hellos: HelloRecords;
  readonly runningStats: RunningStatsTable;
  events: CoordinatorEvents = {};
  readonly observers: RoundObserver[] = [];

  constructor(opts: CoordinatorOptions) {
    if (!Number.isInteger(opts.worldSize) || opts.worldSize < 1) {
      throw new SyncbnError(ErrorCode.BadConfig, `world size must be a positive integer, got ${opts.worldSize}`);
    }
    this.opts = opts;
    this.worldSize = opts.worldSize;
    this.peers = new Array<Peer | null>(opts.worldSize).fill(null);
    this.blocks = Array.from({ length: opts.worldSize }, (_, r) => ({ first: r, size: 1 }));
    this.lastKey = new Array(opts.worldSize).fill(null);
    this.hellos = new HelloRecords(opts.worldSize);
    for (let r = 0; r < opts.worldSize; r++) this.active.add(r);
    this.scopes.rebuild(this.worldSize, this.groupSize, this.active);
    this.conventions = null;
    this.runningStats = new RunningStatsTable();
    if (opts.conventions) this.adoptConventions(opts.conventions);
  }

  get failed(): SyncbnError | null {
    return this.failure;
  }

  get runConventions(): RunConventions | null {
    return this.conventions;
  }

  /** The block of consecutive ranks one process hosts that `rank` belongs to ({rank, 1} until it joins). */
  blockOf(rank: number): { readonly first: number; readonly size: number } {
    return this.blocks[rank] ?? { first: rank, size: 1 };
  }

  /** The ranks of the block that starts at `first`. */
  private ranksFrom(first: number): number[] {
    const size = this.blocks[first]!.size;
    return Array.from({ length: size }, (_, k) => first + k);
  }

  /** One rank as a number, a block of several as their list: the `rank` of an error context. */
  private who(first: number): number | number[] {
    return this.blocks[first]!.size === 1 ? first : this.ranksFrom(first);
  }

  /** Ranks currently connected and admitted. */
  connectedRanks(): number[] {
    const out: number[] = [];
    this.peers.forEach((p, r) => p && out.push(r));
    return out;
  }

  private adoptConventions(c: RunConventions): void {
    validateConventions(c);
    const mode = parseNorm(c.norm);
    this.groupSize = statsGroupSize(mode, this.worldSize);
    this.bnRounds = mode.kind === "sync" || mode.kind === "group";
    this.scopes.rebuild(this.worldSize, this.groupSize, this.active);
    this.conventions = { ...c };
    this.runningStats.configure(c);
  }

  /** Feed one binary message from a peer. Never throws: bad input is answered and the peer dropped. */
  receive(peer: Peer, bytes: Uint8Array): void {
    let msg: unknown;
    try {
      msg = decode(bytes);
    } catch (e) {
      this.refuse(peer, new SyncbnError(ErrorCode.BadMessage, `undecodable message (${(e as Error).message})`, this.rankContext(peer)));
      return;
    }
    const rank = this.byPeer.get(peer);
    if (rank === undefined) {
      this.admit(peer, msg);
      return;
    }
    const type = (msg as { type?: unknown } | null)?.type;
    if (type === "bye") {
      for (const r of this.ranksFrom(rank)) {
        this.finished.add(r);
        for (const o of this.observers) o.rankFinished?.(r);
      }
      if ([...this.active].every((r) => this.finished.has(r))) this.events.onDone?.();
      return;
    }
    if (type === "resync-ack") {
      if ((msg as { generation?: unknown }).generation === this.generation) for (const r of this.ranksFrom(rank)) this.awaitingAck.delete(r);
      return;
    }
    const problem = checkContribution(msg);
    if (problem !== null) {
      this.failRun(new SyncbnError(ErrorCode.BadMessage, `malformed message from a worker: ${problem}`, { rank: this.who(rank) }));
      return;
    }
    this.contribute(rank, msg as Contribution);
  }

  /** The transport reports a closed connection. */
  disconnected(peer: Peer, detail: string): void {
    const rank = this.byPeer.get(peer);
    if (rank === undefined) return;
    this.byPeer.delete(peer);
    const ranks = this.ranksFrom(rank);
    for (const r of ranks) this.peers[r] = null;
    if (ranks.every((r) => this.finished.has(r)) || this.failure || !this.active.has(rank)) return;
    if (this.opts.onWorkerLoss === "continue") {
      this.loseWorkers(ranks, `disconnected (${detail})`);
      return;
    }
    const where = this.pendingFor(rank);
    const size = ranks.length;
    this.failRun(
      new SyncbnError(
        ErrorCode.WorkerLost,
        `worker ${size > 1 ? `process of ${describeRanks(rank, size)} ` : ""}disconnected (${detail})${where ? ` while the run waited in ${where.text}` : ""}; stopping all workers`,
        { rank: this.who(rank), ...(where ? { step: where.step, layer: where.layer, phase: where.phase } : {}) },
      ),
    );
  }

  /** Ends every open round and refuses further work (used on shutdown). */
  shutdown(reason: string): void {
    if (!this.failure) this.failRun(new SyncbnError(ErrorCode.Aborted, reason));
  }

  private rankContext(peer: Peer): { rank?: number } {
    const r = this.byPeer.get(peer);
    return r === undefined ? {} : { rank: r };
  }

  private refuse(peer: Peer, err: SyncbnError): void {
    const rank = this.byPeer.get(peer);
    try {
      peer.send(encode(toErrorMessage(err)));
    } finally {
      peer.close(CLOSE_POLICY, err.code);
    }
    // An admitted worker that sends garbage breaks the run for everyone.
    if (rank !== undefined && !this.failure) this.failRun(err);
  }

  private admit(peer: Peer, msg: unknown): void {
    const problem = checkHello(msg);
    if (problem !== null) {
      this.refuseHello(peer, null, new SyncbnError(ErrorCode.BadMessage, `${problem} (peer ${peer.label})`));
      return;
    }
    const hello = msg as Hello;
    const claimed = helloRanks(hello).filter((r) => r < this.worldSize);
    const size = hello.ranks ?? 1;
    const ctx = { rank: size === 1 ? hello.rank : helloRanks(hello) };
    const refusal = admissionProblem(hello, {
      token: this.opts.token,
      worldSize: this.worldSize,
      taken: claimed.filter((r) => this.peers[r] !== null || this.finished.has(r)),
      dropped: claimed.filter((r) => this.lostWorkers.some((l) => l.rank === r)),
    });
    if (refusal) {
      this.refuseHello(peer, hello.rank, refusal);
      return;
    }
    if (this.failure) {
      this.refuseHello(peer, hello.rank, this.failure);
      return;
    }
    if (this.conventions === null) {
      try {
        this.adoptConventions(hello.conventions);
      } catch (e) {
        this.refuseHello(peer, hello.rank, isSyncbnError(e) ? e : new SyncbnError(ErrorCode.Conventions, String(e), ctx));
        return;
      }
    } else {
      const mismatch = conventionsMismatch(this.conventions, hello.conventions);
      if (mismatch) {
        this.refuseHello(peer, hello.rank, new SyncbnError(ErrorCode.Conventions, mismatch, ctx));
        return;
      }
    }
    try {
      peer.admitted?.();
    } catch (e) {
      this.refuseHello(peer, hello.rank, new SyncbnError(ErrorCode.BadConfig, (e as Error).message, ctx));
      return;
    }
    const block = { first: hello.rank, size };
    for (const r of claimed) {
      this.peers[r] = peer;
      this.blocks[r] = block;
      this.hellos.joined(r);
    }
    this.byPeer.set(peer, hello.rank);
    peer.send(encode({ type: "welcome", version: PROTOCOL_VERSION, rank: hello.rank, ranks: size, worldSize: this.worldSize, ...(this.opts.outDir ? { outDir: this.opts.outDir } : {}) }));
    for (const r of claimed) this.events.onJoin?.(r);
  }

  /** Refuses a connection at its hello, recorded for the deadline messages and reported for the log. */
  private refuseHello(peer: Peer, rank: number | null, err: SyncbnError): void {
    const r: HelloRefusal = { rank, peer: peer.label, error: err };
    this.hellos.refused(r);
    this.events.onRefused?.(r);
    this.refuse(peer, err);
  }

  /**
   * A contribution of the process whose block starts at `rank`: fwd/bwd data holds
   * one segment per rank of the block, each placed as that rank's part; a grad or
   * sum contribution stands for the whole block (its other slots are COVERED).
   */
  private contribute(rank: number, c: Contribution): void {
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
    const ctx = { rank: this.who(rank), step: c.step, layer: c.layer, phase: c.phase };
    if (bn && !this.bnRounds) {
      this.failRun(new SyncbnError(ErrorCode.RoundKey, `norm mode ${this.conventions?.norm} has no BN rounds, but a worker sent one`, ctx));
      return;
    }
    const { scope, members } = this.scopes.scopeOf(rank, c.phase);
    if (bn && size > 1) {
      const segment = c.data.length / size;
      if (this.scopes.scopeOf(rank + size - 1, c.phase).scope !== scope) {
        this.failRun(new SyncbnError(ErrorCode.BadMessage, `the process of ${describeRanks(rank, size)} sent a BN round, but its ranks lie in more than one statistics group; a process sends BN rounds only for ranks of one group`, ctx));
        return;
      }
      if (!Number.isInteger(segment) || segment % 2 !== 0) {
        this.failRun(new SyncbnError(ErrorCode.BadMessage, `the process of ${describeRanks(rank, size)} sent ${c.data.length} values in a ${c.phase} round: expected ${size} segments of 2·C`, ctx));
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
    round.first ??= own;
    round.arrived += size;
    const now = performance.now();
    round.arrivalSum += size * now;
    if (round.arrived === members.length) {
      if (round.phase !== "sum") this.countWaiting(round, now);
      this.complete(id, round);
    }
  }

  private openRound(id: string, scope: string, members: readonly number[], c: Contribution): OpenRound {
    const round: OpenRound = {
      scope,
      step: c.step,
      phase: c.phase,
      layer: c.layer,
      members,
      parts: new Array<Contribution | null>(members.length).fill(null),
      first: null,
      arrived: 0,
      arrivalSum: 0,
      deadline: performance.now() + this.opts.roundTimeoutMs,
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
      if (r.deadline <= now) {
        this.expire(id);
        break; // expiring fails the run or voids every open round (elastic)
      }
    }
    let next = Number.POSITIVE_INFINITY;
    for (const r of this.open.values()) next = Math.min(next, r.deadline);
    if (next !== Number.POSITIVE_INFINITY && !this.failure) this.deadlineTimer = this.armDeadline(Math.max(1, next - now));
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
    let observed: CompletedRound = round;
    if (parts.includes(COVERED)) {
      // One contribution per process: reduce those, and show observers null at the covered slots.
      members = members.filter((_, i) => parts[i] !== COVERED);
      observed = { ...round, parts: parts.map((p) => (p === COVERED ? null : p)) };
      parts = parts.filter((p) => p !== COVERED);
    }
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
    if (this.opts.onWorkerLoss === "continue") {
      for (const p of new Set(missing.map((r) => this.peers[r]))) p?.close(CLOSE_ERROR, "missed a round deadline");
      const never = this.hellos.neverJoined(missing);
      this.loseWorkers(missing, `missed the ${this.opts.roundTimeoutMs} ms deadline of ${describeRound(round.step, round.phase, round.layer)}${never ? ` (${never})` : ""}`);
      return;
    }
    this.failRun(
      new SyncbnError(
        ErrorCode.Timeout,
        `round deadline of ${this.opts.roundTimeoutMs} ms passed without a contribution from rank(s) ${missing.join(", ")}: ${this.hellos.whyMissing(missing)}`,
        { rank: missing, step: round.step, layer: round.layer, phase: round.phase },
      ),
    );
  }

  /** Where a rank is awaited (an open round it has not contributed to), or its last round. */
  private pendingFor(rank: number): { text: string; step: number; layer: number; phase: Phase } | null {
    for (const r of this.open.values()) {
      const pos = r.members.indexOf(rank);
      if (pos >= 0 && r.parts[pos] === null) return { text: describeRound(r.step, r.phase, r.layer), step: r.step, layer: r.layer, phase: r.phase };
    }
    const last = this.lastKey[rank];
    return last ? { text: `the round after ${describeRound(last.step, last.phase, last.layer)}`, ...last } : null;
  }

  /**
   * Elastic mode: drop ranks, void every open round, and have the remaining workers
   * redo from the first step whose gradient round had not completed. Statistics
   * stay exact because every round reduces counts, not a fixed batch size.
   */
  private loseWorkers(ranks: number[], reason: string): void {
    for (const r of ranks) this.active.delete(r);
    this.scopes.rebuild(this.worldSize, this.groupSize, this.active);
    const step = this.lastCompletedGradStep !== null ? this.lastCompletedGradStep + 1 : (this.firstStepSeen ?? 0);
    for (const r of ranks) this.lostWorkers.push({ rank: r, step, reason });
    if (this.active.size === 0) {
      this.failRun(new SyncbnError(ErrorCode.WorkerLost, `every worker is gone (last: ${reason})`, { rank: ranks, step }));
      return;
    }
    this.open.clear();
    this.runningStats.discard();
    this.lastKey.fill(null);
    this.generation++;
    this.awaitingAck.clear();
    const active = [...this.active].sort((a, b) => a - b);
    for (const r of active) this.awaitingAck.add(r);
    const bytes = encode({ type: "resync", generation: this.generation, active, step, lost: ranks });
    for (const p of new Set(active.map((r) => this.peers[r]))) p?.send(bytes);
    this.events.onWorkersLost?.(ranks, step, reason);
    if (active.every((r) => this.finished.has(r))) this.events.onDone?.();
  }

  private failRun(err: SyncbnError): void {
    if (this.failure) return;
    this.failure = err;
    if (this.deadlineTimer !== null) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = null;
    this.open.clear();
    const bytes = encode(toErrorMessage(err));
    for (const p of new Set(this.peers)) {
      if (!p) continue;
      try {
        p.send(bytes);
      } catch {
        // the peer is going away anyway
      }
    }
    this.events.onFailed?.(err);
  }
}

/** Rank k's segment of a block's fwd/bwd contribution: a view, as that rank would have sent it. */
function segmentOf(c: Contribution, k: number, size: number): Contribution {
  const len = c.data.length / size;
  return { type: "contrib", step: c.step, phase: c.phase, layer: c.layer, count: c.count, data: c.data.subarray(k * len, (k + 1) * len) };
}

export function toErrorMessage(err: SyncbnError): ErrorMessage {
  const { rank, step, layer, phase } = err.context;
  const msg: ErrorMessage = { type: "error", code: err.code, message: err.message };
  if (rank !== undefined) msg.rank = typeof rank === "number" ? rank : [...rank];
  if (step !== undefined) msg.step = step;
  if (layer !== undefined) msg.layer = layer;
  if (phase !== undefined) msg.phase = phase;
  return msg;
}
