// The limits on connections that have not (yet) been admitted by a hello, shared
// by both wires: how many may be pending at once, how long each may stay silent,
// and how big a message each may send. Socket bookkeeping only; what a hello must
// contain is admission.ts, and the per-message cap itself is enforced by the wires.

import type { Socket } from "node:net";

/** Largest message a connection may send before its hello is accepted (a hello is a few hundred bytes). */
export const PRE_HELLO_MAX_BYTES = 64 * 1024;
/** Default time a new connection has to get its hello accepted before it is closed. */
export const DEFAULT_HELLO_TIMEOUT_MS = 5_000;
/** Upper bound of --hello-timeout (the round deadlines are the place for long waits). */
export const MAX_HELLO_TIMEOUT_MS = 600_000;
/** Default bound on connections open but not yet admitted; more are closed at once. */
export const DEFAULT_MAX_PENDING = 64;

export interface PendingLimits {
  helloTimeoutMs: number;
  maxPending: number;
}

/**
 * Tracks accepted sockets from accept() until admitted() or their close. A socket
 * over the bound is destroyed at accept; one still pending at the hello deadline
 * is destroyed then. Admitted sockets are no longer counted or timed.
 */
export class PendingConnections {
  private readonly timers = new Map<Socket, ReturnType<typeof setTimeout>>();
  /** Connections closed for being over the bound, or silent past the deadline (for tests and logs). */
  refusedOverBound = 0;
  timedOut = 0;

  constructor(private readonly limits: PendingLimits) {}

  get count(): number {
    return this.timers.size;
  }

  /** A new connection; false when it was over the bound and has been destroyed. */
  accept(sock: Socket): boolean {
    if (this.timers.size >= this.limits.maxPending) {
      this.refusedOverBound++;
      sock.destroy();
      return false;
    }
    const timer = setTimeout(() => {
      this.timers.delete(sock);
      this.timedOut++;
      sock.destroy();
    }, this.limits.helloTimeoutMs);
    this.timers.set(sock, timer);
    sock.once("close", () => this.forget(sock));
    return true;
  }

  /** The connection's hello was accepted: it leaves the pending set for good. */
  admitted(sock: Socket): void {
    this.forget(sock);
  }

  /** Clears every timer (server shutdown). */
  clear(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  private forget(sock: Socket): void {
    const t = this.timers.get(sock);
    if (t === undefined) return;
    clearTimeout(t);
    this.timers.delete(sock);
  }
}
