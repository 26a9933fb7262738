// The tcp wire: cutting a byte stream back into messages (shared/stream-frames.ts),
// and the raw-TCP coordinator behind it, with real sockets on 127.0.0.1.
import { connect, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { startCoordinatorServer, type CoordinatorServer } from "../coordinator/server.js";
import { decode, encode } from "../shared/codec.js";
import type { RunConventions } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { Rng } from "../shared/rng.js";
import { ENVELOPE_MARKER, StreamFrameError, StreamFrameReader, toStreamUnit } from "../shared/stream-frames.js";
import { CoordinatorClient } from "../worker/client.js";
import { parseTcpUrl } from "../worker/tcp-link.js";

const CONV: RunConventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: "" };

/** Three messages of each kind the wire carries, as they go on the stream. */
function sampleMessages(): Uint8Array[] {
  return [
    encode({ type: "contrib", step: 3, phase: "fwd", layer: 1, count: 8, data: Float64Array.from({ length: 10 }, (_, i) => i / 3) }),
    encode({ type: "hello", version: 2, rank: 1, worldSize: 2, token: "t", conventions: CONV }),
    encode({ type: "contrib", step: 3, phase: "grad", layer: -1, count: 8, data: Float32Array.of(1, 2, 3), extra: Float64Array.of(5, 6), checksum: 0.25 }),
    encode({ type: "result", step: 3, phase: "bwd", layer: 0, count: 16, data: new Float64Array(0) }),
  ];
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

describe("StreamFrameReader", () => {
  it("gives back every message whole and in order, however the stream is cut", () => {
    const msgs = sampleMessages();
    const stream = concat(msgs.map(toStreamUnit));
    const expected = msgs.map((m) => decode(m));
    // Every single cut point, and cuts into pieces of 1, 3 and 7 bytes.
    const cuttings: number[][] = [];
    for (let cut = 0; cut <= stream.length; cut++) cuttings.push([cut]);
    for (const size of [1, 3, 7]) cuttings.push(Array.from({ length: Math.ceil(stream.length / size) }, (_, i) => i * size).slice(1));
    for (const cuts of cuttings) {
      const got: unknown[] = [];
      const reader = new StreamFrameReader(1 << 20, (b) => got.push(decode(b)));
      let from = 0;
      for (const to of [...cuts, stream.length]) {
        reader.push(stream.slice(from, to));
        from = to;
      }
      expect(got, `cut at ${cuts.slice(0, 3).join(",")}`).toEqual(expected);
      expect(reader.midMessage).toBe(false);
    }
  });

  it("keeps handed-out bytes intact while later chunks arrive (receivers keep views)", () => {
    const msgs = sampleMessages();
    const stream = concat(msgs.map(toStreamUnit));
    const kept: Uint8Array[] = [];
    const reader = new StreamFrameReader(1 << 20, (b) => kept.push(b));
    for (let i = 0; i < stream.length; i += 5) reader.push(stream.slice(i, i + 5));
    expect(kept.map((b) => decode(b))).toEqual(msgs.map((m) => decode(m)));
  });

  it("refuses a message over the limit from its header, before buffering it", () => {
    const big = encode({ type: "contrib", step: 0, phase: "fwd", layer: 0, count: 1, data: new Float64Array(1000) });
    const reader = new StreamFrameReader(4000, () => {});
    expect(() => reader.push(big.subarray(0, 24))).toThrow(/message of 8032 bytes exceeds the limit of 4000 bytes/);
    const env = toStreamUnit(new Uint8Array(5000).fill(0x80));
    expect(() => new StreamFrameReader(4000, () => {}).push(env.subarray(0, 5))).toThrow(/exceeds the limit of 4000 bytes/);
  });

  it("refuses a stream that is not the tcp wire, naming the byte", () => {
    const reader = new StreamFrameReader(1 << 20, () => {});
    expect(() => reader.push(new TextEncoder().encode("GET / HTTP/1.1\r\n"))).toThrow(StreamFrameError);
    expect(() => new StreamFrameReader(1 << 20, () => {}).push(Uint8Array.of(0x81, 0xa4))).toThrow(/starts with byte 0x81/);
  });
});

describe("the tcp wire", () => {
  const servers: CoordinatorServer[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) await s.close();
  });

  async function tcpServer(world: number): Promise<CoordinatorServer> {
    const s = await startCoordinatorServer({ host: "127.0.0.1", port: 0, worldSize: world, token: "tok", conventions: null, roundTimeoutMs: 5_000, maxPayload: 1 << 20, wire: "tcp" });
    servers.push(s);
    return s;
  }

  const client = (url: string, rank: number, token = "tok"): Promise<CoordinatorClient> =>
    CoordinatorClient.connect({ url, rank, worldSize: 2, token, conventions: CONV, connectTimeoutMs: 5_000, roundTimeoutMs: 5_000, maxPayload: 1 << 20 });

  it("reduces a round between two real clients, as over WebSocket", async () => {
    const s = await tcpServer(2);
    expect(s.url).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    const [a, b] = await Promise.all([client(s.url, 0), client(s.url, 1)]);
    const [ra, rb] = await Promise.all([
      a.round(0, "fwd", 0, 2, Float64Array.of(1, 0.5)), // mean 1, M2 0.5 over 2 values
      b.round(0, "fwd", 0, 2, Float64Array.of(3, 0.5)),
    ]);
    // Global: 4 values, mean 2, M2 = 0.5 + 0.5 + (3−1)²·2·2/4 = 5, biased var 5/4.
    expect(ra.count).toBe(4);
    expect(Array.from(ra.data)).toEqual([2, 1.25]);
    expect(Array.from(rb.data)).toEqual([2, 1.25]);
    await Promise.all([a.bye(), b.bye()]);
  });

  it("refuses a wrong token with the same error as the WebSocket wire", async () => {
    const s = await tcpServer(2);
    const e = await client(s.url, 0, "wrong").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SyncbnError);
    expect((e as SyncbnError).code).toBe(ErrorCode.Token);
  });

  it("closes a connection that sends bytes that are not the wire, and one over the payload limit", async () => {
    const s = await tcpServer(2);
    const { host, port } = parseTcpUrl(s.url);
    const closedAfter = (bytes: Uint8Array): Promise<boolean> =>
      new Promise((resolve) => {
        const sock: Socket = connect({ host, port }, () => sock.write(bytes));
        const t = setTimeout(() => {
          sock.destroy();
          resolve(false);
        }, 5_000);
        sock.on("error", () => {});
        sock.once("close", () => {
          clearTimeout(t);
          resolve(true);
        });
      });
    expect(await closedAfter(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"))).toBe(true);
    const huge = encode({ type: "contrib", step: 0, phase: "fwd", layer: 0, count: 1, data: new Float64Array(1 << 18) });
    expect(await closedAfter(huge.subarray(0, 32))).toBe(true);
  });

  it("keeps reducing two real workers' rounds exactly while hostile connections send 600 garbage streams", async () => {
    const s = await tcpServer(2);
    const { host, port } = parseTcpUrl(s.url);
    const rng = new Rng(7);
    const frame = (): Uint8Array => encode({ type: "contrib", step: rng.int(100), phase: "fwd", layer: 0, count: 4, data: new Float64Array(4) });
    const garbage = (): Uint8Array => {
      switch (rng.int(6)) {
        case 0: // random bytes
          return Uint8Array.from({ length: 1 + rng.int(300) }, () => rng.int(256));
        case 1: { // a frame header claiming a huge payload
          const f = frame();
          f[16] = 0xff;
          f[19] = 0x7f;
          return f.subarray(0, 24 + rng.int(8));
        }
        case 2: { // an envelope holding random bytes
          const body = Uint8Array.from({ length: rng.int(64) }, () => rng.int(256));
          return concat([Uint8Array.of(ENVELOPE_MARKER, body.length, 0, 0, 0), body]);
        }
        case 3: // a well-formed contribution before any hello
          return frame();
        case 4: // a hello with a wrong token, then a cut frame
          return concat([toStreamUnit(encode({ type: "hello", version: 2, rank: 0, worldSize: 2, token: "guess", conventions: CONV })), frame().subarray(0, 10)]);
        default: // a frame cut short, then the connection ends
          return frame().subarray(0, 1 + rng.int(40));
      }
    };
    let closed = 0;
    let answered = 0;
    const rogue = async (): Promise<void> => {
      for (let i = 0; i < 100; i++) {
        await new Promise<void>((resolve) => {
          const sock: Socket = connect({ host, port }, () => sock.end(garbage()));
          sock.on("error", () => {});
          sock.on("data", () => answered++); // error messages from the coordinator, read and dropped
          sock.once("close", () => {
            closed++;
            resolve();
          });
        });
      }
    };
    const [a, b] = await Promise.all([client(s.url, 0), client(s.url, 1)]);
    const honest = async (): Promise<void> => {
      for (let step = 0; step < 200; step++) {
        const [ra, rb] = await Promise.all([
          a.round(step, "fwd", 0, 2, Float64Array.of(step, 0.5)),
          b.round(step, "fwd", 0, 2, Float64Array.of(step + 2, 0.5)),
        ]);
        // mean step+1; M2 = 0.5 + 0.5 + 2²·2·2/4 = 5 → biased var 5/4
        expect(Array.from(ra.data)).toEqual([step + 1, 1.25]);
        expect(Array.from(rb.data)).toEqual([step + 1, 1.25]);
      }
    };
    await Promise.all([honest(), ...Array.from({ length: 6 }, rogue)]);
    expect(closed).toBe(600);
    expect(answered).toBeGreaterThan(0); // refusals were sent back, not just dropped
    expect(s.coordinator.failed).toBeNull();
    await Promise.all([a.bye(), b.bye()]);
  });

  it("rejects a malformed tcp URL as bad configuration, not as an unreachable coordinator to retry", async () => {
    const e = await client("tcp://127.0.0.1:notaport", 0).catch((x: unknown) => x);
    // Retrying would end, after connectTimeoutMs, in COORDINATOR_LOST instead.
    expect((e as SyncbnError).code).toBe(ErrorCode.BadConfig);
    expect((e as Error).message).toMatch(/not tcp:\/\/HOST:PORT/);
  });
});
