// The dashboard's server and state without a browser: bounded history over
// 10,000 steps of a real (socket-free) Coordinator streamed over real HTTP,
// its limits (methods, bodies, SSE clients), and the token rules of the real CLI.
import { request } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { BnSpreadTracker } from "../coordinator/bn-spread.js";
import { Coordinator, type Peer } from "../coordinator/coordinator.js";
import { MAX_SSE_CLIENTS, parseDashboardSpec, startDashboard, type DashboardServer } from "../coordinator/dashboard.js";
import { DashboardState, MAX_POINTS, Series } from "../coordinator/dashboard-state.js";
import { encode } from "../shared/codec.js";
import type { RunConventions } from "../shared/config.js";
import { GradExtra, PROTOCOL_VERSION } from "../shared/protocol.js";
import { runCli, scratchDir, startCli, waitForOutput } from "./helpers.js";

const CONV: RunConventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: JSON.stringify({ model: "mlp", batch: 4, data: "synthetic" }) };

class MemPeer implements Peer {
  constructor(readonly label: string) {}
  send(): void {}
  close(): void {}
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One HTTP request; for an event stream, the body received within `streamMs`. */
function get(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string; streamMs?: number } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: opts.method ?? "GET", headers: opts.headers }, (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      const done = (): void => resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
      if (opts.streamMs && res.statusCode === 200) {
        setTimeout(() => {
          done();
          req.destroy();
        }, opts.streamMs);
      } else res.on("end", done);
    });
    req.on("error", reject);
    if (opts.body) req.write(opts.body);
    req.end();
  });
}

const servers: DashboardServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

describe("dashboard history", () => {
  it("keeps at most MAX_POINTS evenly spaced points of a series however many are offered, first point kept", () => {
    const s = new Series();
    for (let i = 0; i < 100_000; i++) s.add([i, i / 2]);
    expect(s.points.length).toBeLessThanOrEqual(MAX_POINTS);
    expect(s.points.length).toBeGreaterThan(MAX_POINTS / 2);
    expect(s.points[0]).toEqual([0, 0]);
    const gaps = new Set(s.points.slice(1).map((p, i) => p[0]! - s.points[i]![0]!));
    expect([...gaps]).toEqual([s.stride]);
  });

  it("does not grow over 10,000 steps of a real coordinator while a page streams it", async () => {
    const W = 2;
    const coord = new Coordinator({ worldSize: W, token: "t", conventions: CONV, roundTimeoutMs: 5_000 });
    const state = new DashboardState(coord, () => ({ title: "test", settings: {}, bnNote: null }));
    coord.observers.push(new BnSpreadTracker(coord, (r) => state.addBn(r), 1), state);
    const server = await startDashboard({ host: "127.0.0.1", port: 0, token: "", state });
    servers.push(server);
    const stream = get(server.url.replace(/\/$/, "/events"), { streamMs: 4_000 });
    const peers = Array.from({ length: W }, (_, r) => new MemPeer(`p${r}`));
    peers.forEach((p, rank) => coord.receive(p, encode({ type: "hello", version: PROTOCOL_VERSION, rank, worldSize: W, token: "t", conventions: CONV })));
    const extra = new Float64Array(GradExtra.length);
    extra[GradExtra.count] = 4;
    extra[GradExtra.lossSum] = 8;
    extra[GradExtra.computeMs] = 3;
    extra[GradExtra.syncWaitMs] = 1;
    const sizes: number[] = [];
    for (let step = 0; step < 10_000; step++) {
      for (const [r, p] of peers.entries()) {
        const data = Float64Array.of(r + step * 1e-4, 1 - r, 3, 4); // [mean(2), M2(2)]
        coord.receive(p, encode({ type: "contrib", step, phase: "fwd", layer: 0, count: 4, data }));
      }
      for (const p of peers) coord.receive(p, encode({ type: "contrib", step, phase: "bwd", layer: 0, count: 4, data: new Float64Array(4) }));
      for (const p of peers) coord.receive(p, encode({ type: "contrib", step, phase: "grad", layer: -1, count: 4, data: new Float32Array(2), extra }));
      if (step % 1000 === 999) {
        await new Promise((r) => setTimeout(r, 20)); // let the BN records and a tick through
        sizes.push(JSON.stringify(state.histories()).length);
      }
    }
    await new Promise((r) => setTimeout(r, 50));
    expect(coord.failed).toBeNull();
    const h = state.histories();
    expect(h.loss.points.length).toBeLessThanOrEqual(MAX_POINTS);
    expect(h.bn[0]![1].points.length).toBeLessThanOrEqual(MAX_POINTS);
    expect(h.bn[0]![1].points.length).toBeGreaterThan(MAX_POINTS / 2);
    // Past the first 1000 steps, what is kept (and sent to a new page) stays the same size.
    expect(Math.max(...sizes.slice(1))).toBeLessThan(1.3 * sizes[1]!);
    const ranks = state.ranks();
    expect(ranks.map((r) => [r.rank, r.status, r.step, r.samplesPerSecond])).toEqual([
      [0, "running", 10_000, 1000], // steps completed, as metrics.jsonl counts them
      [1, "running", 10_000, 1000],
    ]);
    const r = await stream;
    expect(r.status).toBe(200);
    expect(r.body).toMatch(/event: (snapshot|update)\ndata: \{/);
    coord.shutdown("test over");
  }, 60_000);
});

describe("dashboard server limits", () => {
  async function serve(token = ""): Promise<DashboardServer> {
    const coord = new Coordinator({ worldSize: 1, token: "t", conventions: CONV, roundTimeoutMs: 5_000 });
    const state = new DashboardState(coord, () => ({ title: "test", settings: {}, bnNote: null }));
    const s = await startDashboard({ host: "127.0.0.1", port: 0, token, state });
    servers.push(s);
    return s;
  }

  it("answers only GET, refuses request bodies and foreign Host headers, and serves the page with no external resource", async () => {
    const s = await serve();
    expect((await get(s.url, { method: "POST" })).status).toBe(405);
    expect((await get(`${s.url}state`, { headers: { "Content-Length": "5" }, body: "hello" })).status).toBe(413);
    expect((await get(s.url, { headers: { Host: "attacker.example:80" } })).status).toBe(421);
    const page = await get(s.url);
    expect(page.status).toBe(200);
    expect(page.headers["content-security-policy"]).toContain("default-src 'none'");
    expect(page.body).toContain("syncbn · live");
    expect(page.body).not.toMatch(/(src|href)=["']?(https?:)?\/\//);
  });

  it(`serves at most ${MAX_SSE_CLIENTS} event streams at once and refuses the next with 503`, async () => {
    const s = await serve();
    const open = Array.from({ length: MAX_SSE_CLIENTS }, () => get(`${s.url}events`, { streamMs: 1_500 }));
    await new Promise((r) => setTimeout(r, 300));
    const extra = await get(`${s.url}events`);
    expect(extra.status).toBe(503);
    expect((await Promise.all(open)).map((r) => r.status)).toEqual(new Array(MAX_SSE_CLIENTS).fill(200));
  });

  it("parses [HOST:]PORT and refuses anything else with one line", () => {
    expect(parseDashboardSpec("8080")).toEqual({ host: "127.0.0.1", port: 8080 });
    expect(parseDashboardSpec("0.0.0.0:0")).toEqual({ host: "0.0.0.0", port: 0 });
    expect(parseDashboardSpec("[::1]:9000")).toEqual({ host: "::1", port: 9000 });
    expect(() => parseDashboardSpec("host:99999")).toThrow(/--dashboard must be \[HOST:\]PORT/);
    expect(() => parseDashboardSpec("http://x:1")).toThrow(/--dashboard must be/);
  });
});

describe("dashboard token rules (real CLI)", () => {
  it("refuses to serve the dashboard off loopback without a token, before anything starts (train and coordinator)", async () => {
    const env = { SYNCBN_TOKEN: "" };
    const t = await runCli(["train", "--workers", "2", "--model", "mlp", "--steps", "5", "--dashboard", "0.0.0.0:0", "--out", "/tmp/syncbn-dash-refused"], { env, timeoutMs: 30_000 });
    expect(t.code).toBe(2);
    expect(t.stderr.trim().split("\n")).toHaveLength(1);
    expect(t.stderr).toMatch(/refusing to serve the dashboard on 0\.0\.0\.0 without a run token/);
    expect(t.stdout).not.toMatch(/syncbn train:/); // no coordinator, no workers
    const c = await runCli(["coordinator", "--world", "2", "--port", "0", "--dashboard", "0.0.0.0:0"], { env, timeoutMs: 30_000 });
    expect(c.code).toBe(2);
    expect(c.stderr).toMatch(/refusing to serve the dashboard on 0\.0\.0\.0 without a run token/);
  }, 60_000);

  it("off loopback asks for the token, trades it for a session cookie that is not the token, and never sends the token back", async () => {
    const TOKEN = `tok-${Math.random().toString(36).slice(2)}-secret`;
    const p = startCli(["coordinator", "--world", "2", "--port", "0", "--dashboard", "0.0.0.0:0"], { env: { SYNCBN_TOKEN: TOKEN }, timeoutMs: 60_000, cwd: scratchDir("coordinator") });
    try {
      await waitForOutput(p, (o) => /dashboard: http:\/\/\S+/.test(o), 30_000);
      const url = /dashboard: (http:\/\/\S+)/.exec(p.stdout())![1]!;
      expect(p.stdout() + p.stderr()).not.toContain(TOKEN);
      const page = await get(url);
      expect(page.status).toBe(200);
      expect(page.body).not.toContain(TOKEN);
      expect((await get(`${url}events`)).status).toBe(401);
      expect((await get(`${url}state`)).status).toBe(401);
      expect((await get(`${url}session`, { headers: { Authorization: "Bearer wrong" } })).status).toBe(401);
      const session = await get(`${url}session`, { headers: { Authorization: `Bearer ${TOKEN}` } });
      expect(session.status).toBe(200);
      const cookie = String(session.headers["set-cookie"]).split(";")[0]!;
      expect(cookie).toMatch(/^syncbn_dashboard=[0-9a-f]{64}$/);
      expect(cookie).not.toContain(TOKEN);
      const events = await get(`${url}events`, { headers: { Cookie: cookie }, streamMs: 1_500 });
      expect(events.status).toBe(200);
      expect(events.body).toContain("event: snapshot");
      expect(events.body).not.toContain(TOKEN);
      expect(session.body + JSON.stringify(session.headers)).not.toContain(TOKEN);
    } finally {
      p.child.kill("SIGINT");
      await p.done;
    }
  }, 90_000);
});
