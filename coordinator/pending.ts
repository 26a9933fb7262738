// The limits on connections that have not (yet) been admitted by a hello, shared
// by both wires: how many may be pending per address and in all, which one makes
// room for a newcomer, how long each may stay silent, and how big a message each
// may send. Socket bookkeeping only; what a hello must contain is admission.ts,
// and the per-message cap itself is enforced by the wires.

import type { Socket } from "node:net";
import { TOO_MANY_PENDING } from "../shared/protocol.js";

/** Largest message a connection may send before its hello is accepted (a hello is a few hundred bytes). */
export const PRE_HELLO_MAX_BYTES = 64 * 1024;
/** Default time a new connection has to get its hello accepted before it is closed. */
export const DEFAULT_HELLO_TIMEOUT_MS = 5_000;
/** Upper bound of --hello-timeout (the round deadlines are the place for long waits). */
export const MAX_HELLO_TIMEOUT_MS = 600_000;
/** Default bound on connections open but not yet admitted, in all. */
export const DEFAULT_MAX_PENDING = 64;
/**
 * Default bound on pending connections from one remote address: one address
 * alone can then hold at most an eighth of the total, so a flood from it never
 * makes room at the expense of connections from other addresses.
 */
export const DEFAULT_MAX_PENDING_PER_ADDRESS = 8;

export interface PendingLimits {
  helloTimeoutMs: number;
  maxPending: number;
  /** Default DEFAULT_MAX_PENDING_PER_ADDRESS (never above maxPending). */
  maxPendingPerAddress?: number;
}

/** Closes an evicted connection, telling its client why if the wire can (an HTTP 503, an error message). */
export type Evict = () => void;

/** What an evicted connection is told (the wires send it as an HTTP 503 body or an error message). */
export function evictionDetail(limits: PendingLimits): string {
  const perAddress = Math.min(limits.maxPendingPerAddress ?? DEFAULT_MAX_PENDING_PER_ADDRESS, limits.maxPending);
  return `${TOO_MANY_PENDING}: at most ${perAddress} from one address and ${limits.maxPending} in all may wait for their hello, and this one, the oldest, was closed to make room; is a client holding connections open without a hello?`;
}

interface PendingEntry {
  address: string;
  timer: ReturnType<typeof setTimeout>;
  /** It has spoken the wire (a WebSocket upgrade, a tcp byte): made room for after silent ones. */
  progressed: boolean;
  evict: Evict;
}

/**
 * Tracks accepted sockets from accept() until admitted() or their close. A new
 * connection is always taken: when its address already has maxPendingPerAddress
 * pending, the oldest of that address makes room; else when maxPending are
 * pending in all, the oldest of all does. Either way a connection that has sent
 * nothing goes before one that has (a real worker speaks at once, an idle
 * flood never does). One still pending at the hello deadline is destroyed then.
 * Admitted sockets are no longer counted or timed.
 */
export class PendingConnections {
  /** In accept order: the first entries are the oldest. */
  private readonly entries = new Map<Socket, PendingEntry>();
  private readonly perAddress = new Map<string, number>();
  private readonly maxPerAddress: number;
  /** Connections closed to make room for newer ones, or silent past the deadline (for tests and logs). */
  evicted = 0;
  timedOut = 0;

  constructor(private readonly limits: PendingLimits) {
    this.maxPerAddress = Math.min(limits.maxPendingPerAddress ?? DEFAULT_MAX_PENDING_PER_ADDRESS, limits.maxPending);
  }

  get count(): number {
    return this.entries.size;
  }

  /** Pending connections from this remote address (for tests). */
  countFrom(address: string): number {
    return this.perAddress.get(address) ?? 0;
  }

  /** A new connection, pending from now on; `evict` closes it should it have to make room later. */
  accept(sock: Socket, evict: Evict): void {
    const address = sock.remoteAddress ?? "?";
    if (this.countFrom(address) >= this.maxPerAddress) this.evictOldest(address);
    else if (this.entries.size >= this.limits.maxPending) this.evictOldest(null);
    const timer = setTimeout(() => {
      if (!this.forget(sock)) return;
      this.timedOut++;
      sock.destroy();
    }, this.limits.helloTimeoutMs);
    this.entries.set(sock, { address, timer, progressed: false, evict });
    this.perAddress.set(address, this.countFrom(address) + 1);
    sock.once("close", () => this.forget(sock));
  }

  /** The connection spoke the wire; `evict`, if given, replaces how to close it (e.g. now over WebSocket). */
  progressed(sock: Socket, evict?: Evict): void {
    const e = this.entries.get(sock);
    if (!e) return;
    e.progressed = true;
    if (evict) e.evict = evict;
  }

  /** The connection's hello was accepted: it leaves the pending set for good. */
  admitted(sock: Socket): void {
    this.forget(sock);
  }

  /** Clears every timer (server shutdown). */
  clear(): void {
    for (const e of this.entries.values()) clearTimeout(e.timer);
    this.entries.clear();
    this.perAddress.clear();
  }

  /** Evicts the oldest silent connection of `address` (null: of all), else the oldest that spoke. */
  private evictOldest(address: string | null): void {
    let oldest: Socket | null = null;
    for (const [sock, e] of this.entries) {
      if (address !== null && e.address !== address) continue;
      if (!e.progressed) {
        oldest = sock;
        break;
      }
      oldest ??= sock;
    }
    if (oldest === null) return;
    const e = this.entries.get(oldest)!;
    this.forget(oldest);
    this.evicted++;
    e.evict();
  }

  /** Drops the connection from the pending set; false if it was not in it. */
  private forget(sock: Socket): boolean {
    const e = this.entries.get(sock);
    if (e === undefined) return false;
    clearTimeout(e.timer);
    this.entries.delete(sock);
    const left = this.countFrom(e.address) - 1;
    if (left > 0) this.perAddress.set(e.address, left);
    else this.perAddress.delete(e.address);
    return true;
  }
}
