// Connections that never authenticate, thrown at the coordinator of a real
// two-worker `syncbn train` run on each wire: headers declaring 256 MiB, streams
// of big data with no hello, hundreds of idle connections. The coordinator closes
// them all (idle ones at the hello deadline), its memory stays bounded, and the
// run ends bit-identical to an undisturbed one.
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { describe, expect, it } from "vitest";
import { readCheckpoint } from "../worker/checkpoint.js";
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
