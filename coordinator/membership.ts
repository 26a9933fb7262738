// The coordinator's membership, without sockets: who is in the run (admission of
// hellos, blocks of ranks, disconnects, byes), failure fan-out, and elastic mode's
// dropping of lost workers with a resync. The rounds themselves are the subclass
// in coordinator.ts; the public types are coordinator-api.ts.

import { decode, encode } from "../shared/codec.js";
import { conventionsMismatch, parseNorm, statsGroupSize, validateConventions, type RunConventions } from "../shared/config.js";
import { ErrorCode, SyncbnError, isSyncbnError } from "../shared/errors.js";
import { PROTOCOL_VERSION, checkContribution, checkLayerNames, type Contribution, type LayerNames, type Phase } from "../shared/protocol.js";
import { RunningStatsTable } from "./running-stats.js";
import { HelloRecords, admissionProblem, checkedHello, describeRanks, helloRanks, type HelloRefusal } from "./admission.js";
import type { RoundKey } from "./contribution-checks.js";
import { ScopeTable } from "./scopes.js";
import { CLOSE_POLICY, toErrorMessage, type CoordinatorEvents, type CoordinatorOptions, type Peer, type RoundObserver } from "./coordinator-api.js";

/** The coordinator minus its rounds: Coordinator (coordinator.ts) adds them through the three abstract methods at the end. */
export abstract class Membership {
  readonly worldSize: number;
  protected readonly opts: CoordinatorOptions;
  protected conventions: RunConventions | null;
  protected groupSize = 1;
  /** Whether the norm mode has BN rounds at all (sync, group:K). */
  protected bnRounds = false;
  /** By rank: the connection of the process hosting it (one peer serves all ranks of its block). */
  protected readonly peers: (Peer | null)[];
  /** Peer → the first rank of its block. */
  protected readonly byPeer = new Map<Peer, number>();
  /** By rank: the first rank and size of the block of the process that hosts (or hosted) it; size 1 until it joins. */
  protected readonly blocks: { first: number; size: number }[];
  protected readonly finished = new Set<number>();
  /** Last contribution key per rank, for the monotonic-order check. */
  protected readonly lastKey: (RoundKey | null)[];
  protected failure: SyncbnError | null = null;
  /** Ranks still in the run (all of them unless elastic mode dropped some). */
  protected readonly active = new Set<number>();
  /** Who reduces with whom among the active ranks; rebuilt with the conventions or the membership. */
  protected readonly scopes = new ScopeTable();
  /** Membership generation; bumped by every resync. */
  protected generation = 0;
  /** Ranks whose contributions are stale until they acknowledge the latest resync. */
  protected readonly awaitingAck = new Set<number>();
  protected lastCompletedGradStep: number | null = null;
  protected firstStepSeen: number | null = null;
  readonly lostWorkers: { rank: number; step: number; reason: string }[] = [];
  protected readonly hellos: HelloRecords;
  private bnLayerNames: readonly string[] | null = null;
  readonly runningStats: RunningStatsTable;
  events: CoordinatorEvents = {};
  readonly observers: RoundObserver[] = [];
  /** performance.now() at which the join window closes (CoordinatorOptions.joinWindowMs); at construction when there is none. */
  protected readonly joinWindowEnd: number;

  constructor(opts: CoordinatorOptions) {
    if (!Number.isInteger(opts.worldSize) || opts.worldSize < 1) {
      throw new SyncbnError(ErrorCode.BadConfig, `world size must be a positive integer, got ${opts.worldSize}`);
    }
    this.opts = opts;
    this.worldSize = opts.worldSize;
    this.joinWindowEnd = performance.now() + Math.max(0, opts.joinWindowMs ?? 0);
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

  /** The BN layers' names, by round layer id, from the first worker that sent them (LayerNames), or null. */
  get layerNames(): readonly string[] | null {
    return this.bnLayerNames;
  }

  get runConventions(): RunConventions | null {
    return this.conventions;
  }

  /** The block of consecutive ranks one process hosts that `rank` belongs to ({rank, 1} until it joins). */
  blockOf(rank: number): { readonly first: number; readonly size: number } {
    return this.blocks[rank] ?? { first: rank, size: 1 };
  }

  /** The ranks of the block that starts at `first`. */
  protected ranksFrom(first: number): number[] {
    const size = this.blocks[first]!.size;
    return Array.from({ length: size }, (_, k) => first + k);
  }

  /** One rank as a number, a block of several as their list: the `rank` of an error context. */
  protected who(first: number): number | number[] {
    return this.blocks[first]!.size === 1 ? first : this.ranksFrom(first);
  }

  /** Ranks currently connected and admitted. */
  connectedRanks(): number[] {
    const out: number[] = [];
    this.peers.forEach((p, r) => p && out.push(r));
    return out;
  }

  protected adoptConventions(c: RunConventions): void {
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
    if (type === "layers") {
      const problem = checkLayerNames(msg);
      if (problem !== null) this.failRun(new SyncbnError(ErrorCode.BadMessage, `malformed message from a worker: ${problem}`, { rank: this.who(rank) }));
      else this.bnLayerNames ??= [...(msg as LayerNames).names];
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
        { rank: this.who(rank), ...(where ? { step: where.step, layer: where.layer, phase: where.phase, ...(where.after ? { after: true } : {}) } : {}) },
      ),
    );
  }

  /** Ends every open round and refuses further work (used on shutdown). */
  shutdown(reason: string): void {
    if (!this.failure) this.failRun(new SyncbnError(ErrorCode.Aborted, reason));
  }

  protected rankContext(peer: Peer): { rank?: number } {
    const r = this.byPeer.get(peer);
    return r === undefined ? {} : { rank: r };
  }

  protected refuse(peer: Peer, err: SyncbnError): void {
    const rank = this.byPeer.get(peer);
    try {
      peer.send(encode(toErrorMessage(err)));
    } finally {
      peer.close(CLOSE_POLICY, err.code);
    }
    // An admitted worker that sends garbage breaks the run for everyone.
    if (rank !== undefined && !this.failure) this.failRun(err);
  }

  protected admit(peer: Peer, msg: unknown): void {
    // Token and bounds before anything else: past this point the block lies in the world.
    const checked = checkedHello(msg, { token: this.opts.token, worldSize: this.worldSize });
    if (checked.refusal !== null) {
      const claimedRank = (msg as { rank?: unknown } | null)?.rank;
      const rank = checked.refusal.code !== ErrorCode.BadMessage && Number.isInteger(claimedRank) ? (claimedRank as number) : null;
      this.refuseHello(peer, rank, withPeer(checked.refusal, peer));
      return;
    }
    const hello = checked.hello;
    const claimed = helloRanks(hello);
    const size = claimed.length;
    const ctx = { rank: size === 1 ? hello.rank : claimed };
    const refusal = admissionProblem(hello, {
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
    const joinWaitMs = Math.ceil(this.joinWindowEnd - performance.now());
    peer.send(
      encode({
        type: "welcome",
        version: PROTOCOL_VERSION,
        rank: hello.rank,
        ranks: size,
        worldSize: this.worldSize,
        ...(this.opts.outDir ? { outDir: this.opts.outDir } : {}),
        ...(joinWaitMs > 0 ? { joinWaitMs } : {}),
      }),
    );
    this.joined(claimed);
    for (const r of claimed) this.events.onJoin?.(r);
  }

  /** Refuses a connection at its hello, recorded for the deadline messages and reported for the log. */
  protected refuseHello(peer: Peer, rank: number | null, err: SyncbnError): void {
    const r: HelloRefusal = { rank, peer: peer.label, error: err };
    this.hellos.refused(r);
    this.events.onRefused?.(r);
    this.refuse(peer, err);
  }

  /**
   * Elastic mode: drop ranks, void every open round, and have the remaining workers
   * redo from the first step whose gradient round had not completed. Statistics
   * stay exact because every round reduces counts, not a fixed batch size.
   */
  protected loseWorkers(ranks: number[], reason: string): void {
    for (const r of ranks) this.active.delete(r);
    this.scopes.rebuild(this.worldSize, this.groupSize, this.active);
    const step = this.lastCompletedGradStep !== null ? this.lastCompletedGradStep + 1 : (this.firstStepSeen ?? 0);
    for (const r of ranks) this.lostWorkers.push({ rank: r, step, reason });
    if (this.active.size === 0) {
      this.failRun(new SyncbnError(ErrorCode.WorkerLost, `every worker is gone (last: ${reason})`, { rank: ranks, step }));
      return;
    }
    this.voidRounds(false);
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

  protected failRun(err: SyncbnError): void {
    if (this.failure) return;
    this.failure = err;
    this.voidRounds(true);
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

  /** A checked contribution of the process whose block starts at `rank` (rounds: coordinator.ts). */
  protected abstract contribute(rank: number, c: Contribution): void;
  /** These ranks just joined: the rounds awaiting them get a whole round deadline from now. */
  protected abstract joined(ranks: readonly number[]): void;
  /** Drops every open round; `final` (the run failed) also stops the deadline timer. */
  protected abstract voidRounds(final: boolean): void;
  /** Where the run waits with a rank: an open round (awaiting it, or others), or between rounds after its last one (`after`). */
  protected abstract pendingFor(rank: number): { text: string; step: number; layer: number; phase: Phase; after?: boolean } | null;
}

/** A malformed-hello refusal names the peer (its message says what was wrong, not who sent it). */
function withPeer(err: SyncbnError, peer: Peer): SyncbnError {
  return err.code === ErrorCode.BadMessage ? new SyncbnError(err.code, `${err.detail} (peer ${peer.label})`, err.context) : err;
}
