// The coordinator's raw-TCP wire (`--wire tcp`): a node:net server whose
// connections carry the same messages as the WebSocket wire, cut apart by
// shared/stream-frames.ts (round frames self-delimiting and written in one
// write; the rest enveloped). What it saves over ws is per-message framing,
// masking and stream work on both ends; the Coordinator behind it is the same.

import { createServer, type Server, type Socket } from "node:net";
import { StreamFrameReader, toStreamUnit } from "../shared/stream-frames.js";
import type { Coordinator, Peer } from "./coordinator.js";
import { noteSent } from "./frame-release.js";

export interface TcpListener {
  port: number;
  close(): Promise<void>;
}

export async function listenTcp(coordinator: Coordinator, host: string, port: number, maxPayload: number): Promise<TcpListener> {
  const sockets = new Set<Socket>();
  const server: Server = createServer({ noDelay: true }, (sock) => {
    sockets.add(sock);
    sock.once("close", () => sockets.delete(sock));
    attachSocket(coordinator, sock, maxPayload);
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
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

function attachSocket(coordinator: Coordinator, sock: Socket, maxPayload: number): void {
  const label = `${sock.remoteAddress}:${sock.remotePort}`;
  let closeDetail = "connection closed";
  /** Set once the coordinator closed this peer: what it still sends is not read. */
  let closing = false;
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
  };
  const reader = new StreamFrameReader(maxPayload, (bytes) => {
    if (!closing) coordinator.receive(peer, bytes);
  });
  sock.on("data", (chunk: Buffer) => {
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
