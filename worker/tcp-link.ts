// A Link (worker/client.ts) over raw TCP, for a coordinator on the tcp wire
// (tcp://HOST:PORT): round frames are written whole in one write, everything
// else enveloped (shared/stream-frames.ts). Connection setup only: the
// handshake and rounds are the client's, the same as over WebSocket.

import { connect } from "node:net";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { StreamFrameReader, toStreamUnit } from "../shared/stream-frames.js";
import { closeGracefully, type Link } from "./client.js";

/** host and port of a tcp://HOST:PORT URL; throws a BadConfig error naming the URL otherwise. */
export function parseTcpUrl(url: string): { host: string; port: number } {
  const m = /^tcp:\/\/(\[[^\]]+\]|[^:/]+):(\d+)\/?$/.exec(url);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port > 0 && port < 65536)) {
    throw new SyncbnError(ErrorCode.BadConfig, `coordinator URL ${url} is not tcp://HOST:PORT`);
  }
  return { host: m[1]!.replace(/^\[(.*)\]$/, "$1"), port };
}

/** Connects; rejects (CoordinatorLost, so the caller retries) if the coordinator is not there yet. */
export function openTcpLink(url: string, maxPayload: number, timeoutMs: number): Promise<Link> {
  const { host, port } = parseTcpUrl(url);
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port, noDelay: true });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new SyncbnError(ErrorCode.CoordinatorLost, `no TCP connection to ${url} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once("error", (e) => {
      clearTimeout(timer);
      reject(new SyncbnError(ErrorCode.CoordinatorLost, e.message));
    });
    sock.once("connect", () => {
      clearTimeout(timer);
      sock.removeAllListeners("error");
      let closeDetail = "connection closed";
      sock.on("error", (e) => {
        closeDetail = e.message;
      });
      const link: Link = {
        label: url,
        onMessage: null,
        onClose: null,
        get isOpen() {
          return !sock.destroyed && sock.writable;
        },
        send: (bytes) => {
          if (!sock.destroyed && sock.writable) sock.write(toStreamUnit(bytes));
        },
        terminate: () => sock.destroy(),
        close: () => (sock.destroyed ? Promise.resolve() : closeGracefully(sock, () => sock.end(), () => sock.destroy())),
      };
      // maxPayload 0 (no limit) is the thread transport's; a socket always has one.
      const reader = new StreamFrameReader(maxPayload > 0 ? maxPayload : Number.MAX_SAFE_INTEGER, (bytes) => link.onMessage?.(bytes));
      sock.on("data", (chunk: Buffer) => {
        const broken = reader.feed(chunk);
        if (broken === null) return;
        closeDetail = broken;
        sock.destroy();
      });
      sock.once("close", () => link.onClose?.(closeDetail));
      resolve(link);
    });
  });
}
