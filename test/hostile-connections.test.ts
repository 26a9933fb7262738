// Connections that never authenticate, thrown at the coordinator of a real
// two-worker `syncbn train` run on each wire: headers declaring 256 MiB, streams
// of big data with no hello, hundreds of idle connections. The coordinator closes
// them all (idle ones at the hello deadline), its memory stays bounded, and the
// run ends bit-identical to an undisturbed one. Then each limit on its own, on an
// in-process coordinator server: pre-hello cap, pending bound, allocation failure.
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { afterEach, describe, expect, it } from "vitest";
import { startCoordinatorServer, type CoordinatorServer } from "../coordinator/server.js";
import { DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_PER_ADDRESS, PRE_HELLO_MAX_BYTES } from "../coordinator/pending.js";
import { decode, encode } from "../shared/codec.js";
import type { RunConventions } from "../shared/config.js";
import { ErrorCode } from "../shared/errors.js";
import { PROTOCOL_VERSION, TOO_MANY_PENDING } from "../shared/protocol.js";
import { toStreamUnit } from "../shared/stream-frames.js";
import { CoordinatorClient } from "../worker/client.js";
import { runCli, startCli, waitForOutput, type CliResult } from "./helpers.js";
import { expectSameCheckpointBits } from "./compare.js";

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

/** A TCP connection to the coordinator, from `from` (any 127.x.y.z works on Linux loopback). */
function rawConnect(port: number, from = "127.0.0.1"): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: "127.0.0.1", port, localAddress: from }, () => resolve(sock));
    sock.once("error", reject);
  });
}

/** Everything the coordinator sends on a socket until it closes it (or `ms` pass). */
function answerOf(sock: Socket, ms = 10_000): Promise<Buffer> {
  const chunks: Buffer[] = [];
  sock.on("data", (d: Buffer) => chunks.push(d));
  return closedByServer(sock, ms).then(() => Buffer.concat(chunks));
}

/**
 * `size` connections from one address that never send a byte, each reopened
 * `reopenMs` after the coordinator closes it, until stop(). Bounded: stop() ends
 * them all, and the caller stops it within seconds.
 */
function idleFlood(port: number, size: number, reopenMs: number): { opened: () => number; stop: () => Promise<void> } {
  let opened = 0;
  let stopped = false;
  const live = new Set<Socket>();
  const slot = async (): Promise<void> => {
    while (!stopped) {
      const sock = await rawConnect(port).catch(() => null);
      if (sock === null) continue;
      opened++;
      live.add(sock);
      await closedByServer(sock, 60_000);
      live.delete(sock);
      await new Promise((r) => setTimeout(r, reopenMs));
    }
  };
  const slots = Array.from({ length: size }, slot);
  return {
    opened: () => opened,
    stop: async () => {
      stopped = true;
      for (const sock of live) sock.destroy();
      await Promise.all(slots);
    },
  };
}

/** A TCP relay to the coordinator that holds each client byte back `delayMs`: a worker whose hello is slow to arrive. */
async function slowRelay(port: number, delayMs: number): Promise<{ port: number; close: () => Promise<void> }> {
  const pairs = new Set<Socket>();
  const relay = createServer((client) => {
    const up = connect({ host: "127.0.0.1", port });
    pairs.add(client).add(up);
    client.on("data", (d: Buffer) => setTimeout(() => up.writable && up.write(d), delayMs));
    up.on("data", (d: Buffer) => client.writable && client.write(d));
    const end = (): void => {
      client.destroy();
      up.destroy();
    };
    for (const sock of [client, up]) {
      sock.on("error", end);
      sock.once("close", () => setTimeout(end, delayMs));
    }
  });
  await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
  return {
    port: (relay.address() as AddressInfo).port,
    close: () => {
      for (const sock of pairs) sock.destroy();
      return new Promise((resolve) => relay.close(() => resolve()));
    },
  };
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
async function upgraded(port: number, from = "127.0.0.1"): Promise<Socket> {
  const sock = await rawConnect(port, from);
  sock.write(
    `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  );
  const head = await new Promise<string>((resolve) => sock.once("data", (d: Buffer) => resolve(d.toString("latin1"))));
  expect(head).toMatch(/^HTTP\/1\.1 101/);
  return sock;
}

/** The unmasked frames a WebSocket server sent: opcode and payload each (lengths up to 64 KiB). */
function wsFrames(bytes: Buffer): { opcode: number; payload: Buffer }[] {
  const frames: { opcode: number; payload: Buffer }[] = [];
  for (let at = 0; at + 2 <= bytes.length; ) {
    let length = bytes[at + 1]! & 0x7f;
    let start = at + 2;
    if (length === 126) {
      length = bytes.readUInt16BE(at + 2);
      start += 2;
    }
    frames.push({ opcode: bytes[at]! & 0x0f, payload: bytes.subarray(start, start + length) });
    at = start + length;
  }
  return frames;
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
  // 1. 20 connections that only declare a 256 MiB message, each from its own address (one address may hold only 8 pending).
  const declared = await Promise.all(
    Array.from({ length: 20 }, async (_, i) => {
      const from = `127.0.0.${10 + i}`;
      const sock = wire === "tcp" ? await rawConnect(port, from) : await upgraded(port, from);
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
      rawConnect(port, "127.0.0.40").then((s) => stream(s, envelopeHeader(256 * MIB))),
      rawConnect(port, "127.0.0.41").then((s) => stream(s, frameHeader)),
      // Under the pre-hello cap but not a hello: refused as a bad message, then closed.
      rawConnect(port, "127.0.0.42").then((s) => stream(s, envelopeHeader(60 * 1024))),
    ];
  } else {
    streams = [
      upgraded(port, "127.0.0.40").then((s) => stream(s, wsHeader(256 * MIB))),
      // A fragmented message: each fragment small, the running total over the cap.
      upgraded(port, "127.0.0.41").then(async (s) => {
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
      expectSameCheckpointBits(join(out, "checkpoint.bin"), join(b.out, "checkpoint.bin"), 400);
    }, 600_000);
  }
});

const CONV: RunConventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: "" };

describe("the limits on connections before their hello", () => {
  const servers: CoordinatorServer[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) await s.close();
  });
  async function server(wire: "ws" | "tcp", o: { maxPayload?: number; helloTimeoutMs?: number; maxPending?: number; maxPendingPerAddress?: number } = {}): Promise<CoordinatorServer> {
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

    it(`closes the oldest pending connection for each one beyond the pending bound and silent ones at the hello deadline, and a worker still joins after (--wire ${wire})`, async () => {
      const s = await server(wire, { maxPending: 4, helloTimeoutMs: 2000 });
      const socks: Socket[] = [];
      for (let i = 0; i < 10; i++) socks.push(await rawConnect(s.port));
      const closed = await Promise.all(socks.map((x) => closedByServer(x, 20_000)));
      expect(closed.every(Boolean)).toBe(true);
      expect(s.pending.evicted).toBe(6);
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

  for (const wire of ["ws", "tcp"] as const) {
    it(`lets two real workers join and reduce while one address holds ${DEFAULT_MAX_PENDING} idle connections, reopening each as it closes (--wire ${wire})`, async () => {
      const s = await server(wire);
      const flood = idleFlood(s.port, DEFAULT_MAX_PENDING, 25);
      try {
        // Every slot open once, and reopened once more: the flood is churning through its address's bound.
        while (flood.opened() < 2 * DEFAULT_MAX_PENDING) await new Promise((r) => setTimeout(r, 20));
        const t0 = performance.now();
        const [a, b] = await Promise.all([client(s.url, 0), client(s.url, 1)]);
        console.log(`--wire ${wire}: two workers joined in ${(performance.now() - t0).toFixed(0)} ms under the flood (${s.pending.evicted} evictions so far)`);
        const [ra] = await Promise.all([a.round(0, "fwd", 0, 2, Float64Array.of(1, 0.5)), b.round(0, "fwd", 0, 2, Float64Array.of(3, 0.5))]);
        expect(Array.from(ra.data)).toEqual([2, 1.25]);
        expect(s.pending.countFrom("127.0.0.1")).toBeLessThanOrEqual(DEFAULT_MAX_PENDING_PER_ADDRESS);
        await Promise.all([a.bye(), b.bye()]);
      } finally {
        await flood.stop();
      }
      expect(s.coordinator.failed).toBeNull();
    });

    it(`tells a worker evicted before its hello that the coordinator has too many unauthenticated connections, not to check that it runs (--wire ${wire})`, async () => {
      const s = await server(wire);
      // The worker's bytes reach the coordinator 1 s late; meanwhile 8 newer silent connections from its address evict it.
      const relay = await slowRelay(s.port, 1000);
      const opener = setInterval(() => void rawConnect(s.port).then((x) => closedByServer(x, 10_000)).catch(() => {}), 20);
      try {
        const err = await CoordinatorClient.connect({
          url: `${wire}://127.0.0.1:${relay.port}`,
          rank: 0,
          worldSize: 2,
          token: "tok",
          conventions: CONV,
          connectTimeoutMs: 2500,
          roundTimeoutMs: 10_000,
          maxPayload: 1 << 20,
        }).then(
          () => null,
          (e: unknown) => e as Error,
        );
        expect(err?.message).toMatch(new RegExp(`^SYNCBN_ERR_COORDINATOR_LOST: \\[rank 0\\] could not reach the coordinator at ${wire}://127\\.0\\.0\\.1:\\d+ within 2500 ms \\(${TOO_MANY_PENDING}: at most 8 from one address and 64 in all`));
        expect(err?.message).not.toMatch(/is it running/);
      } finally {
        clearInterval(opener);
        await relay.close();
      }
    });
  }

  it("keeps at most 8 pending connections per address and 64 in all, making room by closing the oldest silent one, then the oldest that spoke", async () => {
    const s = await server("ws", { maxPending: 4, maxPendingPerAddress: 2 });
    // Per address: a third connection from 127.0.0.2 closes its oldest, told by an HTTP 503 (no upgrade yet).
    const [a1, a2] = [await rawConnect(s.port, "127.0.0.2"), await rawConnect(s.port, "127.0.0.2")];
    const b1 = await rawConnect(s.port, "127.0.0.3");
    const a1Answer = answerOf(a1);
    const a3 = await rawConnect(s.port, "127.0.0.2");
    expect((await a1Answer).toString()).toMatch(new RegExp(`^HTTP/1\\.1 503 [^]*\r\n\r\n${TOO_MANY_PENDING}: at most 2 from one address and 4 in all`));
    expect([s.pending.countFrom("127.0.0.2"), s.pending.countFrom("127.0.0.3"), s.pending.evicted]).toEqual([2, 1, 1]);
    // In all: c1 (upgraded, so it spoke) fills the bound; each newer one closes the oldest silent one, whatever its address.
    const c1 = await upgraded(s.port, "127.0.0.4");
    const c1Answer = answerOf(c1, 20_000);
    const silent = [a2, b1, a3].map((x) => closedByServer(x, 5000));
    const d = [await upgraded(s.port, "127.0.0.5"), await upgraded(s.port, "127.0.0.6"), await upgraded(s.port, "127.0.0.7")];
    expect(await Promise.all(silent)).toEqual([true, true, true]);
    expect([s.pending.count, s.pending.evicted, c1.destroyed]).toEqual([4, 4, false]);
    // Only connections that spoke are left: the oldest of them goes, told over WebSocket (an error message, then close 1013).
    d.push(await upgraded(s.port, "127.0.0.8"));
    const frames = wsFrames(await c1Answer);
    expect(frames.map((f) => f.opcode)).toEqual([0x2, 0x8]);
    const message = decode(frames[0]!.payload) as { type: string; code: string; message: string };
    expect(message).toMatchObject({ type: "error", code: ErrorCode.CoordinatorLost });
    expect(message.message).toContain(`${TOO_MANY_PENDING}: at most 2 from one address and 4 in all`);
    expect(frames[1]!.payload.readUInt16BE(0)).toBe(1013);
    for (const x of d) x.destroy();
  });

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
