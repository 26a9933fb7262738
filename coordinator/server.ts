// The coordinator's network transports: a `ws` server (no compression, explicit
// maxPayload; the default wire) or a raw-TCP listener (tcp-server.ts), each turning
// connections into Peers of the socket-free Coordinator. Binds 127.0.0.1 by
// default; refuses a non-loopback bind without a token, and a port in use in one
// line. Connections not yet admitted are held to pending.ts's limits on both wires.

import { createServer, type IncomingMessage } from "node:http";
import { WebSocketServer, type WebSocket } from "ws";
import type { AddressInfo, Socket } from "node:net";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { noteSent } from "./frame-release.js";
import { listenTcp } from "./tcp-server.js";
import { encode } from "../shared/codec.js";
import { Coordinator, toErrorMessage, type CoordinatorOptions, type Peer } from "./coordinator.js";
import {
  DEFAULT_HELLO_TIMEOUT_MS,
  DEFAULT_MAX_PENDING,
  DEFAULT_MAX_PENDING_PER_ADDRESS,
  MAX_HELLO_TIMEOUT_MS,
  PRE_HELLO_MAX_BYTES,
  PendingConnections,
  evictionDetail,
  type PendingLimits,
} from "./pending.js";

/** ws: WebSocket (DESIGN.md §5.1, the default); tcp: the same messages on raw TCP, less work per message. */
export type Wire = "ws" | "tcp";
export const WIRES: readonly Wire[] = ["ws", "tcp"];

export interface ServerOptions extends CoordinatorOptions {
  host: string;
  /** 0 picks a free port; the chosen one is in the returned handle. */
  port: number;
  /** Largest accepted message in bytes; larger ones close the connection (1009). */
  maxPayload: number;
  /** Default "ws". */
  wire?: Wire;
  /** A connection whose hello is not accepted this long after it was accepted is closed (default 5 s). */
  helloTimeoutMs?: number;
  /** At most this many connections open but not yet admitted (default 64); a newer one makes the oldest close (pending.ts). */
  maxPending?: number;
  /** The same bound per remote address (default 8). */
  maxPendingPerAddress?: number;
}

export const DEFAULT_MAX_PAYLOAD = 256 * 1024 * 1024;

export interface CoordinatorServer {
  coordinator: Coordinator;
  host: string;
  port: number;
  url: string;
  /** Connections not yet admitted (for tests). */
  pending: PendingConnections;
  close(): Promise<void>;
}

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export async function startCoordinatorServer(opts: ServerOptions): Promise<CoordinatorServer> {
  if (!isLoopback(opts.host) && opts.token === "") {
    throw new SyncbnError(
      ErrorCode.BadConfig,
      `refusing to listen on ${opts.host} without a token: anyone who can reach it could join the run; pass --token (or set SYNCBN_TOKEN), or bind 127.0.0.1`,
    );
  }
  const limits: PendingLimits = {
    helloTimeoutMs: opts.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS,
    maxPending: opts.maxPending ?? DEFAULT_MAX_PENDING,
    maxPendingPerAddress: opts.maxPendingPerAddress ?? DEFAULT_MAX_PENDING_PER_ADDRESS,
  };
  if (!Number.isInteger(limits.helloTimeoutMs) || limits.helloTimeoutMs < 1 || limits.helloTimeoutMs > MAX_HELLO_TIMEOUT_MS) {
    throw new SyncbnError(ErrorCode.BadConfig, `the hello timeout must be an integer from 1 to ${MAX_HELLO_TIMEOUT_MS} ms, got ${limits.helloTimeoutMs}`);
  }
  for (const bound of [limits.maxPending, limits.maxPendingPerAddress]) {
    if (!Number.isInteger(bound) || bound! < 1) throw new SyncbnError(ErrorCode.BadConfig, `the pending-connection bounds must be positive integers, got ${bound}`);
  }
  const coordinator = new Coordinator(opts);
  const urlHost = opts.host.includes(":") && !opts.host.startsWith("[") ? `[${opts.host}]` : opts.host;
  if (opts.wire === "tcp") {
    const tcp = await listenTcp(coordinator, opts.host, opts.port, opts.maxPayload, limits).catch((e: Error) => {
      throw new SyncbnError(ErrorCode.BadConfig, `coordinator cannot listen on ${opts.host}:${opts.port}: ${e.message}`);
    });
    return {
      coordinator,
      host: opts.host,
      port: tcp.port,
      url: `tcp://${urlHost}:${tcp.port}`,
      pending: tcp.pending,
      close: () => {
        coordinator.shutdown("coordinator shut down");
        return tcp.close();
      },
    };
  }
  // Our own HTTP server, so that the pending bound and the hello deadline count from
  // the TCP accept (a connection that never sends its upgrade request is timed too).
  const pending = new PendingConnections(limits);
  const sockets = new Set<Socket>();
  const http = createServer();
  const evicted = evictionDetail(limits);
  /** Sockets evicted before their upgrade: an upgrade request still in flight on one is not served. */
  const evictedRaw = new WeakSet<Socket>();
  http.on("connection", (sock: Socket) => {
    // Not upgraded yet: the client's WebSocket sees an HTTP answer (worker/client.ts reads its body).
    pending.accept(sock, () => {
      evictedRaw.add(sock);
      sock.end(`HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(evicted)}\r\n\r\n${evicted}`);
      setTimeout(() => sock.destroy(), 1000).unref();
    });
    sockets.add(sock);
    sock.once("close", () => sockets.delete(sock));
  });
  http.on("request", (_req, res) => {
    res.writeHead(426, { connection: "close" }).end("syncbn coordinator: WebSocket only\n");
  });
  // maxPayload is the PRE-hello cap for every connection: `ws` checks each frame's
  // declared length (and a fragmented message's running total) against it from the
  // header, before buffering, and closes with 1009. Once the hello is accepted the
  // connection's receiver gets the full maxPayload (attach/raisePayloadLimit).
  const wss = new WebSocketServer({
    server: http,
    perMessageDeflate: false,
    maxPayload: Math.min(PRE_HELLO_MAX_BYTES, opts.maxPayload),
    clientTracking: true,
  });
  // `ws` re-emits the HTTP server's errors (EADDRINUSE among them) on the WebSocketServer:
  // without a listener there, a port in use is an uncaught exception, not the refusal below.
  wss.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    http.once("listening", resolve);
    http.once("error", (e) =>
      reject(new SyncbnError(ErrorCode.BadConfig, `coordinator cannot listen on ${opts.host}:${opts.port}: ${(e as Error).message}`)),
    );
    http.listen(opts.port, opts.host);
  });
  http.on("error", () => {
    // after listening, server errors surface per connection
  });
  wss.on("connection", (ws, req) => {
    if (evictedRaw.has(req.socket)) ws.terminate();
    else attach(coordinator, ws, req, opts.maxPayload, pending, evicted);
  });
  const port = (http.address() as AddressInfo).port;
  return {
    coordinator,
    host: opts.host,
    port,
    url: `ws://${urlHost}:${port}`,
    pending,
    close: () =>
      new Promise<void>((resolve) => {
        coordinator.shutdown("coordinator shut down");
        pending.clear();
        for (const c of wss.clients) c.terminate();
        for (const s of sockets) s.destroy();
        wss.close(() => http.close(() => resolve()));
      }),
  };
}

/**
 * Gives an admitted connection the full message limit. `ws` fixes maxPayload per
 * server, so this sets the connection's own receiver limit, `_receiver._maxPayload`
 * (ws 8: read on every frame header). That field is internal: if a `ws` upgrade
 * renames it, this refuses the worker with a message saying so instead of letting
 * its first large round fail obscurely (the real runs of the test suite cover it).
 */
function raisePayloadLimit(ws: WebSocket, maxPayload: number): boolean {
  const receiver = (ws as unknown as { _receiver?: { _maxPayload?: unknown } })._receiver;
  if (!receiver || typeof receiver._maxPayload !== "number") return false;
  receiver._maxPayload = maxPayload;
  return true;
}

function sendPooled(ws: WebSocket, bytes: Uint8Array): void {
  ws.send(bytes, { binary: true });
  // Written through to the kernel: ws and the socket hold no reference any more.
  noteSent(bytes, ws.bufferedAmount === 0);
}

/** WebSocket close code "try again later": the reason an evicted, upgraded connection closes with. */
const CLOSE_TRY_AGAIN = 1013;

function attach(coordinator: Coordinator, ws: WebSocket, req: IncomingMessage, maxPayload: number, pending: PendingConnections, evicted: string): void {
  /** Set once the coordinator closed this peer: what it still sends is not read. */
  let closing = false;
  // Upgraded: an evicted connection is told over WebSocket, as a retryable error the worker's handshake understands.
  pending.progressed(req.socket, () => {
    closing = true;
    ws.send(encode(toErrorMessage(new SyncbnError(ErrorCode.CoordinatorLost, evicted))));
    ws.close(CLOSE_TRY_AGAIN, "too many unauthenticated connections");
    setTimeout(() => ws.terminate(), 1000).unref();
  });
  const peer: Peer = {
    label: `${req.socket.remoteAddress}:${req.socket.remotePort}`,
    send: (bytes) => {
      if (ws.readyState === ws.OPEN) sendPooled(ws, bytes);
    },
    close: (code, reason) => {
      closing = true;
      // Let the error message flush before closing.
      ws.close(code, reason.slice(0, 120));
      setTimeout(() => ws.terminate(), 1000).unref();
    },
    admitted: () => {
      if (!raisePayloadLimit(ws, maxPayload)) {
        throw new Error("this version of the ws package does not let syncbn raise a connection's message limit after its hello (ws 8 receiver internals); install the ws version in package-lock.json");
      }
      pending.admitted(req.socket);
    },
  };
  // Text frames are fed through too: they fail decoding or validation like any bad message.
  ws.on("message", (data) => {
    if (closing) return;
    const bytes = Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data;
    coordinator.receive(peer, bytes);
  });
  ws.on("close", (code, reason) => coordinator.disconnected(peer, `close code ${code}${reason.length ? ` ${reason.toString()}` : ""}`));
  ws.on("error", () => {
    // e.g. maxPayload exceeded; the close event follows and reports it
  });
}
