// An in-memory coordinator peer for tests that drive the Coordinator without
// sockets: it decodes and records everything sent to it, and its close.
import type { Peer } from "../coordinator/coordinator.js";
import { decode } from "../shared/codec.js";
import type { ServerMessage } from "../shared/protocol.js";

export class MemPeer implements Peer {
  readonly received: ServerMessage[] = [];
  closed: { code: number; reason: string } | null = null;
  constructor(readonly label: string) {}
  send(bytes: Uint8Array): void {
    this.received.push(decode(bytes) as ServerMessage);
  }
  close(code: number, reason: string): void {
    this.closed = { code, reason };
  }
  last(): ServerMessage | undefined {
    return this.received[this.received.length - 1];
  }
  results(): Extract<ServerMessage, { type: "result" }>[] {
    return this.received.filter((m): m is Extract<ServerMessage, { type: "result" }> => m.type === "result");
  }
  errors(): Extract<ServerMessage, { type: "error" }>[] {
    return this.received.filter((m): m is Extract<ServerMessage, { type: "error" }> => m.type === "error");
  }
}
