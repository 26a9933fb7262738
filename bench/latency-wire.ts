// What bench/latency.ts and its child processes say to each other (IPC), and the
// raw floor's frame: u32 payload length, u32 rank, then float64 values (8-byte
// aligned after the header). Bench-only; not the product protocol.

export const FLOOR_HEADER_BYTES = 8;

/**
 * ours: CoordinatorClient → real coordinator over the default WebSocket wire.
 * tcp: the same client and coordinator over the tcp wire (`--wire tcp`).
 * ws: bare `ws` client and server, the same bytes as one binary message each way (ws's own cost).
 * floor: node:net only, fixed-size frames (the physical floor).
 */
export type LatencyMethod = "ours" | "tcp" | "ws" | "floor";
export const LATENCY_METHODS: readonly LatencyMethod[] = ["ours", "tcp", "ws", "floor"];

export type LatencyCommand = { cmd: LatencyMethod; rounds: number } | { cmd: "exit" };

export interface LatencyReply {
  rank: number;
  lat: number[];
  /** CPU time (user + system) this worker process spent in the block, µs. */
  cpuUs: number;
}
