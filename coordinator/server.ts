// The coordinator's network transports: a `ws` server (no compression, explicit
// maxPayload; the default wire) or a raw-TCP listener (tcp-server.ts), each turning
// connections into Peers of the socket-free Coordinator. Binds 127.0.0.1 by
// default; refuses a non-loopback bind without a token.

import { WebSocketServer, type WebSocket } from "ws";
import type { AddressInfo } from "node:net";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { Coordinator, type CoordinatorOptions, type Peer } from "./coordinator.js";
import { noteSent } from "./frame-release.js";
import { listenTcp } from "./tcp-server.js";

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
}

export const DEFAULT_MAX_PAYLOAD = 256 * 1024 * 1024;

export interface CoordinatorServer {
  coordinator: Coordinator;
  host: string;
  port: number;
  url: string;
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
  const coordinator = new Coordinator(opts);
  const urlHost = opts.host.includes(":") && !opts.host.startsWith("[") ? `[${opts.host}]` : opts.host;
  if (opts.wire === "tcp") {
    const tcp = await listenTcp(coordinator, opts.host, opts.port, opts.maxPayload).catch((e: Error) => {
      throw new SyncbnError(ErrorCode.BadConfig, `coordinator cannot listen on ${opts.host}:${opts.port}: ${e.message}`);
    });
    return {
      coordinator,
      host: opts.host,
      port: tcp.port,
      url: `tcp://${urlHost}:${tcp.port}`,
      close: () => {
        coordinator.shutdown("coordinator shut down");
        return tcp.close();
      },
    };
  }
  const wss = new WebSocketServer({
    host: opts.host,
    port: opts.port,
    perMessageDeflate: false,
    maxPayload: opts.maxPayload,
    clientTracking: true,
  });
  await new Promise<void>((resolve, reject) => {
    wss.once("listening", resolve);
    wss.once("error", (e) =>
      reject(new SyncbnError(ErrorCode.BadConfig, `coordinator cannot listen on ${opts.host}:${opts.port}: ${(e as Error).message}`)),
    );
  });
  wss.on("error", () => {
    // after listening, server errors surface per connection
  });
  wss.on("connection", (ws, req) => attach(coordinator, ws, `${req.socket.remoteAddress}:${req.socket.remotePort}`));
  const port = (wss.address() as AddressInfo).port;
  return {
    coordinator,
    host: opts.host,
    port,
    url: `ws://${urlHost}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        coordinator.shutdown("coordinator shut down");
        for (const c of wss.clients) c.terminate();
        wss.close(() => resolve());
      }),
  };
}

function sendPooled(ws: WebSocket, bytes: Uint8Array): void {
  ws.send(bytes, { binary: true });
  // Written through to the kernel: ws and the socket hold no reference any more.
  noteSent(bytes, ws.bufferedAmount === 0);
}

function attach(coordinator: Coordinator, ws: WebSocket, label: string): void {
  const peer: Peer = {
    label,
    send: (bytes) => {
      if (ws.readyState === ws.OPEN) sendPooled(ws, bytes);
    },
    close: (code, reason) => {
      // Let the error message flush before closing.
      ws.close(code, reason.slice(0, 120));
      setTimeout(() => ws.terminate(), 1000).unref();
    },
  };
  // Text frames are fed through too: they fail decoding or validation like any bad message.
  ws.on("message", (data) => {
    const bytes = Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data;
    coordinator.receive(peer, bytes);
  });
  ws.on("close", (code, reason) => coordinator.disconnected(peer, `close code ${code}${reason.length ? ` ${reason.toString()}` : ""}`));
  ws.on("error", () => {
    // e.g. maxPayload exceeded; the close event follows and reports it
  });
}
