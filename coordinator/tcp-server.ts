// The coordinator's raw-TCP wire (`--wire tcp`): a node:net server whose
// connections carry the same messages as the WebSocket wire, cut apart by
// shared/stream-frames.ts (round frames self-delimiting and written in one
// write; the rest enveloped). What it saves over ws is per-message framing,
// masking and stream work on both ends; the Coordinator behind it is the same.
// Until its hello is accepted a connection is held to pending.ts's limits.

import { createServer, type Server, type Socket } from "node:net";
import { StreamFrameReader, toStreamUnit } from "../shared/stream-frames.js";
import { encode } from "../shared/codec.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { toErrorMessage, type Coordinator, type Peer } from "./coordinator.js";
import { noteSent } from "./frame-release.js";
import { PRE_HELLO_MAX_BYTES, PendingConnections, evictionDetail, type PendingLimits } from "./pending.js";

export interface TcpListener {
  port: number;
  /** Connections not yet admitted (for tests). */
  pending: PendingConnections;
  close(): Promise<void>;
}

export async function listenTcp(coordinator: Coordinator, host: string, port: number, maxPayload: number, limits: PendingLimits): Promise<TcpListener> {
  const sockets = new Set<Socket>();
  const pending = new PendingConnections(limits);
  const evicted = encode(toErrorMessage(new SyncbnError(ErrorCode.CoordinatorLost, evictionDetail(limits))));
  const server: Server = createServer({ noDelay: true }, (sock) => {
    sockets.add(sock);
    sock.once("close", () => sockets.delete(sock));
    attachSocket(coordinator, sock, maxPayload, pending, evicted);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", () => {
    // after listening, errors surface per connection
  });
  return {
    port: (server.address() as { port: number }).port,
    pending,
    close: () =>
      new Promise<void>((resolve) => {
        pending.clear();
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

function attachSocket(coordinator: Coordinator, sock: Socket, maxPayload: number, pending: PendingConnections, evicted: Uint8Array): void {
  const label = `${sock.remoteAddress}:${sock.remotePort}`;
  let closeDetail = "connection closed";
  /** Set once the coordinator closed this peer (or evicted it before its hello): what it still sends is not read. */
  let closing = false;
  // The same answer whether or not it sent bytes yet: a retryable error the worker's handshake understands.
  pending.accept(sock, () => {
    closing = true;
    sock.end(toStreamUnit(evicted));
    setTimeout(() => sock.destroy(), 1000).unref();
  });
  const peer: Peer = {
    label,
    send: (bytes) => {
      if (sock.destroyed || !sock.writable) return;
      sock.write(toStreamUnit(bytes));
      // Fully handed to the kernel (nothing queued in the socket): the frame may be reused.
      noteSent(bytes, sock.writableLength === 0);
    },
    close: (_code, reason) => {
      closing = true;
      closeDetail = reason;
      // end() flushes what was written (the error message) before the FIN.
      sock.end();
      setTimeout(() => sock.destroy(), 1000).unref();
    },
    admitted: () => {
      // Called from inside the hello's delivery: the next unit's header is checked against the full limit.
      reader.maxBytes = maxPayload;
      pending.admitted(sock);
    },
  };
  // Until the hello is accepted, a header declaring more than a hello can need is refused at once.
  const reader = new StreamFrameReader(Math.min(PRE_HELLO_MAX_BYTES, maxPayload), (bytes) => {
    if (!closing) coordinator.receive(peer, bytes);
  });
  let spoke = false;
  sock.on("data", (chunk: Buffer) => {
    if (!spoke) {
      spoke = true;
      pending.progressed(sock);
    }
    const broken = reader.feed(chunk);
    if (broken === null) return;
    closeDetail = broken;
    sock.destroy();
  });
  sock.on("error", (e) => {
    closeDetail = e.message;
  });
  sock.once("close", () => coordinator.disconnected(peer, reader.midMessage ? `${closeDetail}, in the middle of a message` : closeDetail));
}
