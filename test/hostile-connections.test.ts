// Connections that never authenticate, thrown at the coordinator of a real
// two-worker `syncbn train` run on each wire: headers declaring 256 MiB, streams
// of big data with no hello, hundreds of idle connections. The coordinator closes
// them all (idle ones at the hello deadline), its memory stays bounded, and the
// run ends bit-identical to an undisturbed one. Then each limit on its own, on an
// in-process coordinator server: pre-hello cap, pending bound, allocation failure.
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { afterEach, describe, expect, it } from "vitest";
import { startCoordinatorServer, type CoordinatorServer } from "../coordinator/server.js";
import { PRE_HELLO_MAX_BYTES } from "../coordinator/pending.js";
import { decode, encode } from "../shared/codec.js";
import type { RunConventions } from "../shared/config.js";
import { ErrorCode } from "../shared/errors.js";
import { PROTOCOL_VERSION } from "../shared/protocol.js";
import { toStreamUnit } from "../shared/stream-frames.js";
import { readCheckpoint } from "../worker/checkpoint.js";
import { CoordinatorClient } from "../worker/client.js";
import { runCli, startCli, waitForOutput, type CliResult } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));
const RUN = ["train", "--workers", "2", "--model", "mlp", "--data", "synthetic", "--train-size", "2048", "--test-size", "100", "--batch", "8", "--steps", "400", "--seed", "5", "--pin-cpus", "off"];
const HELLO_TIMEOUT_MS = 1000;
const MIB = 1024 * 1024;
/** Generous: the attack took a coordinator from 62 MB to 1.6 GB before the limits. */
const MAX_GROWTH_MIB = 200;

/** VmRSS and VmHWM (peak RSS) of a process, in MiB (Linux /proc). */
function memoryMiB(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (key: string): number => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status)![1]) / 1024;
  return { rss: kb("VmRSS"), peak: kb("VmHWM") };
}

function rawConnect(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: "127.0.0.1", port }, () => resolve(sock));
    sock.once("error", reject);
  });
}

/** Resolves true when the coordinator closes the socket, false (and destroys it) after ms. */
function closedByServer(sock: Socket, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    sock.on("error", () => {});
    sock.resume(); // read (and drop) what the coordinator sends: a paused socket never sees the end
    if (sock.destroyed) return resolve(true);
    const t = setTimeout(() => {
      sock.destroy();
      resolve(false);
    }, ms);
    sock.once("close", () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/** A raw socket that completed a WebSocket upgrade and has sent nothing since. */
async function upgraded(port: number): Promise<Socket> {
  const sock = await rawConnect(port);
  sock.write(
    `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  );
  const head = await new Promise<string>((resolve) => sock.once("data", (d: Buffer) => resolve(d.toString("latin1"))));
  expect(head).toMatch(/^HTTP\/1\.1 101/);
  return sock;
}

/** A masked binary WebSocket frame header declaring `bytes` of payload (64-bit length). */
function wsHeader(bytes: number, fin = true): Uint8Array {
  const h = new Uint8Array(14);
  h[0] = (fin ? 0x80 : 0) | 0x2;
  h[1] = 0x80 | 127;
  new DataView(h.buffer).setBigUint64(2, BigInt(bytes));
  h.set(randomBytes(4), 10);
  return h;
}

/** A tcp-wire envelope header (0xc2, u32 little-endian length) declaring `bytes`. */
function envelopeHeader(bytes: number): Uint8Array {
  const h = new Uint8Array(5);
  h[0] = 0xc2;
  new DataView(h.buffer).setUint32(1, bytes, true);
  return h;
}

function drainedOrClosed(sock: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      sock.off("drain", done);
      sock.off("close", done);
      resolve();
    };
    sock.on("drain", done);
    sock.on("close", done);
  });
}

/** Writes `first`, then 1 MiB chunks of junk until the coordinator closes the socket or 64 MiB went out. */
async function stream(sock: Socket, first: Uint8Array): Promise<boolean> {
  const closed = closedByServer(sock, 60_000);
  let gone = false;
  void closed.then(() => (gone = true));
  sock.write(first);
  const junk = randomBytes(MIB);
  for (let sent = 0; sent < 64 * MIB && !gone; sent += MIB) {
    if (!sock.write(junk)) await drainedOrClosed(sock);
  }
  return closed;
}

/** Every hostile pattern against one coordinator; the counts of connections the coordinator closed. */
async function attack(wire: "ws" | "tcp", port: number): Promise<{ declared: number; streams: number; idle: number; idleTotal: number }> {
  // 1. 20 connections that only declare a 256 MiB message.
  const declared = await Promise.all(
    Array.from({ length: 20 }, async () => {
      const sock = wire === "tcp" ? await rawConnect(port) : await upgraded(port);
      sock.write(wire === "tcp" ? envelopeHeader(256 * MIB) : wsHeader(256 * MIB));
      return closedByServer(sock, 30_000);
    }),
  );
  // 2. A few connections streaming big data without a hello, in every shape the wire allows.
  let streams: Promise<boolean>[];
  if (wire === "tcp") {
    const frameHeader = new Uint8Array(24).fill(0xff);
    frameHeader[0] = 0xc1; // a round frame whose header claims a huge payload
    streams = [
      rawConnect(port).then((s) => stream(s, envelopeHeader(256 * MIB))),
      rawConnect(port).then((s) => stream(s, frameHeader)),
      // Under the pre-hello cap but not a hello: refused as a bad message, then closed.
      rawConnect(port).then((s) => stream(s, envelopeHeader(60 * 1024))),
    ];
  } else {
    streams = [
      upgraded(port).then((s) => stream(s, wsHeader(256 * MIB))),
      // A fragmented message: each fragment small, the running total over the cap.
      upgraded(port).then(async (s) => {
        const closed = closedByServer(s, 60_000);
        const frag = randomBytes(16 * 1024);
        for (let i = 0; i < 64 && !s.destroyed; i++) s.write(Buffer.concat([wsHeader(frag.length, false), frag]));
        return closed;
      }),
      // One 8 MiB message through a real ws client.
      new Promise<boolean>((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false });
        ws.on("open", () => ws.send(randomBytes(8 * MIB)));
        ws.on("error", () => {});
        const t = setTimeout(() => (ws.terminate(), resolve(false)), 60_000);
        ws.on("close", () => (clearTimeout(t), resolve(true)));
      }),
    ];
  }
  const streamed = await Promise.all(streams);
  // 3. A few hundred connections that say nothing; on ws, half of them after a completed upgrade.
  const idleTotal = 300;
  const idle = await Promise.all(
    Array.from({ length: idleTotal }, async (_, i) => {
      const sock = await rawConnect(port);
      if (wire === "ws" && i % 2 === 1) {
        sock.write(`GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
      }
      return closedByServer(sock, 60_000);
    }),
  );
  const count = (xs: boolean[]): number => xs.filter(Boolean).length;
  return { declared: count(declared), streams: count(streamed), idle: count(idle), idleTotal };
}

let calm: Promise<CliResult & { out: string }> | null = null;
function calmRun(): Promise<CliResult & { out: string }> {
  const out = tmp("calm");
  calm ??= runCli([...RUN, "--out", out], { timeoutMs: 480_000 }).then((r) => ({ ...r, out }));
  return calm;
}

describe("unauthenticated connections during a real run", () => {
  for (const wire of ["ws", "tcp"] as const) {
    it(`closes 256 MiB headers, hello-less streams and 300 idle connections (--wire ${wire}) with bounded coordinator memory, and the run ends bit-identical`, async () => {
      const undisturbed = calmRun();
      const out = tmp(`flood-${wire}`);
      const run = startCli([...RUN, "--wire", wire, "--hello-timeout", String(HELLO_TIMEOUT_MS), "--out", out], { timeoutMs: 480_000 });
      await waitForOutput(run, (o) => new RegExp(`coordinator ${wire}://127\\.0\\.0\\.1:\\d+`).test(o), 20_000);
      const port = Number(new RegExp(`coordinator ${wire}://127\\.0\\.0\\.1:(\\d+)`).exec(run.stdout())![1]);
      await waitForOutput(run, (o) => /step \d+/.test(o), 60_000);
      const before = memoryMiB(run.child.pid!);
      const r = await attack(wire, port);
      const after = memoryMiB(run.child.pid!);
      console.log(`--wire ${wire}: coordinator RSS ${before.rss.toFixed(0)} MiB before, ${after.rss.toFixed(0)} after, peak ${after.peak.toFixed(0)}`);
      // The whole attack happened while the run went on.
      expect(run.child.exitCode).toBeNull();
      expect(r).toEqual({ declared: 20, streams: 3, idle: r.idleTotal, idleTotal: 300 });
      expect(after.peak - before.rss).toBeLessThan(MAX_GROWTH_MIB);
      const [a, b] = await Promise.all([run.done, undisturbed]);
      expect(a.code, a.stderr).toBe(0);
      expect(b.code, b.stderr).toBe(0);
      expect(a.stderr).not.toMatch(/RangeError|\n\s+at /);
      const got = readCheckpoint(join(out, "checkpoint.bin"));
      const want = readCheckpoint(join(b.out, "checkpoint.bin"));
      expect(got.header.step).toBe(400);
      want.params.forEach((p, i) => expect(Buffer.from(got.params[i]!.buffer).equals(Buffer.from(p.buffer))).toBe(true));
      want.bn.forEach((s, i) => {
        expect(Buffer.from(got.bn[i]!.mean.buffer).equals(Buffer.from(s.mean.buffer))).toBe(true);
        expect(Buffer.from(got.bn[i]!.var.buffer).equals(Buffer.from(s.var.buffer))).toBe(true);
      });
    }, 600_000);
  }
});

const CONV: RunConventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: "" };

describe("the limits on connections before their hello", () => {
  const servers: CoordinatorServer[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) await s.close();
  });
  async function server(wire: "ws" | "tcp", o: { maxPayload?: number; helloTimeoutMs?: number; maxPending?: number } = {}): Promise<CoordinatorServer> {
    const s = await startCoordinatorServer({ host: "127.0.0.1", port: 0, worldSize: 2, token: "tok", conventions: null, roundTimeoutMs: 10_000, maxPayload: 1 << 20, wire, ...o });
    servers.push(s);
    return s;
  }
  const client = (url: string, rank: number): Promise<CoordinatorClient> =>
    CoordinatorClient.connect({ url, rank, worldSize: 2, token: "tok", conventions: CONV, connectTimeoutMs: 10_000, roundTimeoutMs: 10_000, maxPayload: 1 << 20 });

  for (const wire of ["ws", "tcp"] as const) {
    it(`refuses a message over ${PRE_HELLO_MAX_BYTES / 1024} KiB before the hello from its header, and lets admitted workers send up to maxPayload (--wire ${wire})`, async () => {
      const s = await server(wire);
      const sock = wire === "tcp" ? await rawConnect(s.port) : await upgraded(s.port);
      sock.write(wire === "tcp" ? envelopeHeader(PRE_HELLO_MAX_BYTES + 1) : wsHeader(PRE_HELLO_MAX_BYTES + 1));
      expect(await closedByServer(sock, 10_000)).toBe(true);
      // 40,000 channels: 640 KB contributions and results, ten times the pre-hello cap.
      const [a, b] = await Promise.all([client(s.url, 0), client(s.url, 1)]);
      // Layout: C means, then C M2s.
      const stats = (mean: number): Float64Array => Float64Array.from({ length: 80_000 }, (_, i) => (i < 40_000 ? mean : 0.5));
      const [ra] = await Promise.all([a.round(0, "fwd", 0, 2, stats(1)), b.round(0, "fwd", 0, 2, stats(3))]);
      expect(ra.count).toBe(4);
      expect([ra.data[0], ra.data[39_999], ra.data[40_000], ra.data[79_999]]).toEqual([2, 2, 1.25, 1.25]);
      expect(s.coordinator.failed).toBeNull();
      await Promise.all([a.bye(), b.bye()]);
    });

    it(`closes connections beyond the pending bound at once and silent ones at the hello deadline, and a worker still joins after (--wire ${wire})`, async () => {
      const s = await server(wire, { maxPending: 4, helloTimeoutMs: 2000 });
      const socks: Socket[] = [];
      for (let i = 0; i < 10; i++) socks.push(await rawConnect(s.port));
      const closed = await Promise.all(socks.map((x) => closedByServer(x, 20_000)));
      expect(closed.every(Boolean)).toBe(true);
      expect(s.pending.refusedOverBound).toBe(6);
      expect(s.pending.timedOut).toBe(4);
      expect(s.pending.count).toBe(0);
      const [a, b] = await Promise.all([client(s.url, 0), client(s.url, 1)]);
      // Admitted connections are no longer pending: the deadline does not touch them.
      await new Promise((r) => setTimeout(r, 2500));
      const [ra] = await Promise.all([a.round(0, "fwd", 0, 2, Float64Array.of(1, 0.5)), b.round(0, "fwd", 0, 2, Float64Array.of(3, 0.5))]);
      expect(Array.from(ra.data)).toEqual([2, 1.25]);
      await Promise.all([a.bye(), b.bye()]);
    });
  }

  it("refuses a --hello-timeout outside 100..600000 ms before anything starts, saying the range", async () => {
    for (const [flag, v] of [["coordinator", "50"], ["coordinator", "9999999"], ["train", "99"]] as const) {
      const r = await runCli([flag, ...(flag === "coordinator" ? ["--world", "2", "--port", "0"] : ["--workers", "1", "--steps", "1"]), "--hello-timeout", v], { timeoutMs: 30_000 });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/--hello-timeout must be an integer in 100\.\.600000, got "\d+"/);
      expect(r.stdout).not.toMatch(/listening|syncbn train:/);
    }
  });

  it("drops a connection whose message cannot be allocated instead of crashing (--wire tcp)", async () => {
    // A limit above what one buffer can hold, so the header passes and the allocation itself fails.
    const s = await server("tcp", { maxPayload: 2 ** 33 });
    const sock = await rawConnect(s.port);
    const answers: unknown[] = [];
    sock.on("data", (d: Buffer) => answers.push(decode(d.subarray(5))));
    sock.write(toStreamUnit(encode({ type: "hello", version: PROTOCOL_VERSION, rank: 0, worldSize: 2, token: "tok", conventions: CONV })));
    while (answers.length === 0) await new Promise((r) => setTimeout(r, 20));
    expect(answers[0]).toMatchObject({ type: "welcome", rank: 0 });
    sock.write(envelopeHeader(0xffff_ffff)); // 4 GiB + 5: more than one ArrayBuffer may hold here
    expect(await closedByServer(sock, 10_000)).toBe(true);
    // The admitted worker is lost (the run stops, as for any lost worker); the coordinator lives on.
    expect(s.coordinator.failed?.code).toBe(ErrorCode.WorkerLost);
    expect(s.coordinator.failed?.message).toMatch(/could not buffer a message \(.*\)/);
  });
});
