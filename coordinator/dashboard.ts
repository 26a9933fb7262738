// The live dashboard's HTTP server (node:http): the page, a server-sent-event
// stream of DashboardState, and a session endpoint. Read-only: no endpoint
// changes the run. Bounded: connections, SSE clients, header size, no request
// bodies; off loopback it requires the run token and never echoes it.

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { DASHBOARD_PAGE } from "./dashboard-page.js";
import type { DashboardState, Series } from "./dashboard-state.js";
import { isLoopback } from "./server.js";

/** Open TCP connections the dashboard accepts at once (page loads, SSE streams, probes). */
export const MAX_CONNECTIONS = 32;
/** Concurrent event streams; more are answered 503. */
export const MAX_SSE_CLIENTS = 8;
/** A stream whose unsent output passes this is dropped (a stalled reader). */
export const MAX_SSE_BACKLOG = 4 * 1024 * 1024;
/** Sessions remembered after a token check; the oldest is forgotten first. */
export const MAX_SESSIONS = 32;
/** How often the stream sends what changed. */
export const TICK_MS = 500;

export interface DashboardOptions {
  host: string;
  port: number;
  /** The run token; required ("" refused) off loopback. */
  token: string;
  state: DashboardState;
}

export interface DashboardServer {
  url: string;
  port: number;
  /** Clients currently streaming. */
  clients(): number;
  close(): Promise<void>;
}

const COOKIE = "syncbn_dashboard";

/** Parses `[HOST:]PORT` (HOST may be `[v6]`); HOST defaults to 127.0.0.1. */
export function parseDashboardSpec(spec: string): { host: string; port: number } {
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(spec.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) {
    throw new SyncbnError(ErrorCode.BadConfig, `--dashboard must be [HOST:]PORT (e.g. 8080, 127.0.0.1:8080 or 0.0.0.0:8080; port 0 picks a free one), got "${spec}"`);
  }
  const host = m[1] ? m[1].replace(/^\[|\]$/g, "") : "127.0.0.1";
  return { host, port };
}

/** The check made before anything starts: a dashboard reachable off this machine needs the run token. */
export function checkDashboardBind(host: string, token: string): void {
  if (!isLoopback(host) && token === "") {
    throw new SyncbnError(
      ErrorCode.BadConfig,
      `refusing to serve the dashboard on ${host} without a run token: anyone who can reach it could watch the run; set SYNCBN_TOKEN (or --token for the coordinator), or bind it to loopback (--dashboard PORT)`,
    );
  }
}

function digest(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

export async function startDashboard(o: DashboardOptions): Promise<DashboardServer> {
  checkDashboardBind(o.host, o.token);
  const open = isLoopback(o.host);
  const tokenDigest = digest(o.token);
  const sessions = new Set<string>();
  const streams = new Set<ServerResponse>();
  const fresh = new Set<ServerResponse>();
  const cursor = new Map<Series, { version: number; length: number }>();

  const authorized = (req: IncomingMessage): boolean => {
    if (open) return true;
    const auth = req.headers.authorization;
    if (auth?.startsWith("Bearer ") && timingSafeEqual(digest(auth.slice(7)), tokenDigest)) return true;
    const m = new RegExp(`(?:^|;\\s*)${COOKIE}=([0-9a-f]{64})`).exec(req.headers.cookie ?? "");
    return m !== null && sessions.has(m[1]!);
  };

  const server = createServer({ maxHeaderSize: 8192, requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 5_000 }, (req, res) => {
    const url = (req.url ?? "/").split("?")[0];
    res.setHeader("Cache-Control", "no-store");
    res.setHeader("X-Content-Type-Options", "nosniff");
    res.setHeader("Referrer-Policy", "no-referrer");
    if (req.method !== "GET" && req.method !== "HEAD") return refuse(res, 405, "read-only: GET only");
    // Nothing here takes a body; one is never read.
    if ((req.headers["content-length"] && req.headers["content-length"] !== "0") || req.headers["transfer-encoding"]) return refuse(res, 413, "no request bodies");
    // Loopback binds answer only to loopback names (a DNS-rebinding page cannot read them).
    if (open && !/^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$/.test(req.headers.host ?? "")) return refuse(res, 421, "unexpected Host header");
    if (url === "/") {
      res.writeHead(200, {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
      });
      return void res.end(req.method === "HEAD" ? undefined : DASHBOARD_PAGE);
    }
    if (url === "/session") {
      if (!authorized(req)) return refuse(res, 401, "token required");
      const headers: Record<string, string> = { "Content-Type": "application/json" };
      if (!open && req.headers.authorization) {
        // A random session id, not the token, goes into the cookie.
        const id = randomBytes(32).toString("hex");
        sessions.add(id);
        if (sessions.size > MAX_SESSIONS) sessions.delete(sessions.values().next().value!);
        headers["Set-Cookie"] = `${COOKIE}=${id}; HttpOnly; SameSite=Strict; Path=/`;
      }
      res.writeHead(200, headers);
      return void res.end(JSON.stringify({ ok: true, tokenRequired: !open }));
    }
    if (url === "/state") {
      if (!authorized(req)) return refuse(res, 401, "token required");
      res.writeHead(200, { "Content-Type": "application/json" });
      return void res.end(JSON.stringify(snapshot()));
    }
    if (url === "/events") {
      if (!authorized(req)) return refuse(res, 401, "token required");
      if (streams.size + fresh.size >= MAX_SSE_CLIENTS) return refuse(res, 503, `at most ${MAX_SSE_CLIENTS} dashboard streams at once`);
      res.writeHead(200, { "Content-Type": "text/event-stream", Connection: "keep-alive" });
      res.write("retry: 2000\n\n");
      fresh.add(res);
      const drop = (): void => {
        fresh.delete(res);
        streams.delete(res);
      };
      req.socket.setTimeout(0);
      res.on("close", drop);
      return;
    }
    refuse(res, 404, "not found");
  });
  server.maxConnections = MAX_CONNECTIONS;
  server.on("clientError", (_e, sock) => sock.destroy());

  const snapshot = (): object => {
    const h = o.state.histories();
    return { summary: o.state.summary(), loss: h.loss.points, accuracy: h.accuracy.points, bn: h.bn.map(([l, s]) => [l, s.points]) };
  };

  const send = (res: ServerResponse, event: string, data: string): void => {
    if (res.writableLength > MAX_SSE_BACKLOG) {
      res.destroy();
      return;
    }
    res.write(`event: ${event}\ndata: ${data}\n\n`);
  };

  const tick = (): void => {
    const h = o.state.histories();
    const all: Series[] = [h.loss, h.accuracy, ...h.bn.map(([, s]) => s)];
    const resized = all.some((s) => (cursor.get(s)?.version ?? 0) !== s.version);
    const since = (s: Series): (number | null)[][] => s.points.slice(cursor.get(s)?.length ?? 0);
    if (streams.size > 0) {
      if (resized) {
        const body = JSON.stringify(snapshot());
        for (const r of streams) send(r, "snapshot", body);
      } else {
        const body = JSON.stringify({ summary: o.state.summary(), loss: since(h.loss), accuracy: since(h.accuracy), bn: h.bn.map(([l, s]) => [l, since(s)]) });
        for (const r of streams) send(r, "update", body);
      }
    }
    for (const s of all) cursor.set(s, { version: s.version, length: s.points.length });
    if (fresh.size > 0) {
      const body = JSON.stringify(snapshot());
      for (const r of fresh) {
        send(r, "snapshot", body);
        streams.add(r);
      }
      fresh.clear();
    }
  };
  const timer = setInterval(tick, TICK_MS);
  timer.unref();

  await new Promise<void>((resolve, reject) => {
    server.once("error", (e) => reject(new SyncbnError(ErrorCode.BadConfig, `dashboard cannot listen on ${o.host}:${o.port}: ${e.message}`)));
    server.listen(o.port, o.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const urlHost = o.host.includes(":") ? `[${o.host}]` : o.host === "0.0.0.0" ? "127.0.0.1" : o.host;
  return {
    url: `http://${urlHost}:${port}/`,
    port,
    clients: () => streams.size + fresh.size,
    close: () =>
      new Promise<void>((resolve) => {
        clearInterval(timer);
        tick(); // the last state (finished, lost) reaches open pages
        for (const r of [...streams, ...fresh]) r.end();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function refuse(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { "Content-Type": "text/plain; charset=utf-8", Connection: "close" });
  res.end(`${text}\n`);
}
