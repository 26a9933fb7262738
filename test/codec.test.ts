import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Packr } from "msgpackr";
import { describe, expect, it } from "vitest";
import { FRAME_HEADER_BYTES, FRAME_MARKER, adoptFrame, decode, encode, frameRoundKey, releaseEncoded, roundKey } from "../shared/codec.js";
import { PROTOCOL_VERSION, checkContribution, checkHello } from "../shared/protocol.js";
import { ROOT } from "./helpers.js";

describe("codec", () => {
  it("round-trips Float64Array and Float32Array bit-exactly, including NaN payloads, -0 and subnormals", () => {
    const f64 = Float64Array.of(Math.PI, -0, 5e-324, 1e308, -1.5, Number.NaN);
    const f32 = Float32Array.of(Math.fround(Math.E), -0, 1e-45, 3.4e38, Number.NaN);
    const out = decode(encode({ type: "contrib", step: 1, phase: "grad", layer: -1, count: 2, data: f32, extra: f64 })) as {
      data: Float32Array;
      extra: Float64Array;
    };
    expect(out.data).toBeInstanceOf(Float32Array);
    expect(out.extra).toBeInstanceOf(Float64Array);
    expect(new Uint8Array(out.data.buffer, out.data.byteOffset, out.data.byteLength)).toEqual(new Uint8Array(f32.buffer));
    expect(new Uint8Array(out.extra.buffer, out.extra.byteOffset, out.extra.byteLength)).toEqual(new Uint8Array(f64.buffer));
  });

  it("decodes typed arrays aligned even when the message buffer is not", () => {
    const bytes = encode({ type: "contrib", step: 0, phase: "sum", layer: 0, count: 1, data: Float64Array.of(1, 2, 3) });
    const shifted = new Uint8Array(bytes.length + 3).subarray(3);
    shifted.set(bytes);
    const out = decode(shifted) as { data: Float64Array };
    expect(out.data.byteOffset % 8).toBe(0);
    expect(Array.from(out.data)).toEqual([1, 2, 3]);
  });

  it("pins why moreTypes is required: without it msgpackr truncates float arrays", () => {
    const plain = new Packr({ useRecords: false });
    const back = plain.unpack(plain.pack({ d: Float64Array.of(1.5, 2.25) })) as { d: unknown };
    const ok = back.d instanceof Float64Array && back.d[0] === 1.5 && back.d[1] === 2.25;
    expect(ok).toBe(false);
  });
});

describe("binary frames (contributions and results)", () => {
  it("round-trips a result with float32 data of odd length and an extra vector, zero-padding to 8 bytes", () => {
    const msg = { type: "result", step: 7, phase: "grad", layer: -1, count: 24, data: Float32Array.of(1.5, -2, 3), extra: Float64Array.of(0.25, 9) } as const;
    const bytes = encode(msg);
    expect(bytes[0]).toBe(FRAME_MARKER);
    expect(bytes.length).toBe(FRAME_HEADER_BYTES + 16 + 16);
    expect(Array.from(bytes.subarray(FRAME_HEADER_BYTES + 12, FRAME_HEADER_BYTES + 16))).toEqual([0, 0, 0, 0]);
    const out = decode(bytes) as typeof msg;
    expect(out).toMatchObject({ type: "result", step: 7, phase: "grad", layer: -1, count: 24 });
    expect(Array.from(out.data)).toEqual([1.5, -2, 3]);
    expect(Array.from(out.extra)).toEqual([0.25, 9]);
    expect(frameRoundKey(bytes)).toBe(roundKey(7, "grad", -1));
    expect(roundKey(7, "grad", -1)).not.toBe(roundKey(7, "grad", 0));
    expect(roundKey(2 ** 33, "sum", 2)).not.toBe(roundKey(2 ** 33, "sum", 1));
  });

  it("keeps msgpack for every other message, so the first byte tells the two apart", () => {
    const hello = encode({ type: "bye" });
    expect(hello[0]).not.toBe(FRAME_MARKER);
    expect(frameRoundKey(hello)).toBeNull();
    expect(decode(hello)).toEqual({ type: "bye" });
  });

  it("refuses a frame whose size, kind, phase or flags disagree with its header, saying what is wrong", () => {
    const good = encode({ type: "contrib", step: 1, phase: "fwd", layer: 0, count: 4, data: new Float64Array(4) });
    const cut = good.slice(0, good.length - 8);
    expect(() => decode(cut)).toThrow(/is \d+ bytes, its header says \d+/);
    expect(() => decode(good.slice(0, 10))).toThrow(/shorter than its 32-byte header/);
    const kind = good.slice();
    kind[1] = 9;
    expect(() => decode(kind)).toThrow(/unknown kind 9/);
    const phase = good.slice();
    phase[2] = 7;
    expect(() => decode(phase)).toThrow(/unknown phase 7/);
    const flags = good.slice();
    flags[3] = 0x80;
    expect(() => decode(flags)).toThrow(/unknown flags/);
    const longer = new Uint8Array(good.length + 8);
    longer.set(good);
    expect(() => decode(longer)).toThrow(/its header says/);
  });

  it("decodes a result straight into the caller's buffer when type and length match, and leaves it alone otherwise", () => {
    const bytes = encode({ type: "result", step: 0, phase: "fwd", layer: 2, count: 8, data: Float64Array.of(1, 2, 3, 4) });
    const shifted = new Uint8Array(bytes.length + 1).subarray(1);
    shifted.set(bytes);
    const into = new Float64Array(4);
    const out = decode(shifted, into) as { data: Float64Array };
    expect(out.data).toBe(into);
    expect(Array.from(into)).toEqual([1, 2, 3, 4]);
    const wrong = new Float64Array(6);
    const other = decode(shifted, wrong) as { data: Float64Array };
    expect(other.data).not.toBe(wrong);
    expect(Array.from(other.data)).toEqual([1, 2, 3, 4]);
    expect(Array.from(wrong)).toEqual([0, 0, 0, 0, 0, 0]);
  });

  it("reuses a released frame buffer without carrying over its old checksum or padding", () => {
    const a = encode({ type: "contrib", step: 3, phase: "grad", layer: -1, count: 8, data: Float32Array.of(1, 2, 3), checksum: 123.5 });
    a.fill(0xff, FRAME_HEADER_BYTES); // garbage in data and padding
    releaseEncoded(a);
    const b = encode({ type: "contrib", step: 4, phase: "grad", layer: -1, count: 8, data: Float32Array.of(5, 6, 7) });
    expect(b.buffer).toBe(a.buffer);
    const out = decode(b) as { data: Float32Array; checksum?: number };
    expect(out.checksum).toBeUndefined();
    expect(Array.from(out.data)).toEqual([5, 6, 7]);
    expect(Array.from(b.subarray(24, 32))).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(b.subarray(FRAME_HEADER_BYTES + 12, FRAME_HEADER_BYTES + 16))).toEqual([0, 0, 0, 0]);
  });

  it("adopts a received frame's memory for the next encode of its size, and ignores views, non-frames and broken frames", () => {
    // Sizes no other test encodes, so the pool holds nothing of them beforehand.
    const result = (n: number): Uint8Array => encode({ type: "result", step: 1, phase: "grad", layer: -1, count: 8, data: new Float32Array(n).fill(1.5), extra: Float64Array.of(2) });
    const received = result(37).slice(); // a copy: memory the codec never handed out, as a clone arrives
    adoptFrame(received);
    const next = encode({ type: "contrib", step: 2, phase: "grad", layer: -1, count: 8, data: new Float32Array(37).fill(-3), extra: Float64Array.of(4) });
    expect(next.buffer).toBe(received.buffer);
    expect(Array.from((decode(next) as { data: Float32Array }).data)).toEqual(new Array<number>(37).fill(-3));
    // A view into a larger buffer, msgpack bytes, or a frame whose header disagrees with its size: left alone.
    const padded = new Uint8Array(result(41).byteLength + 8);
    padded.set(result(41));
    const view = padded.subarray(0, padded.length - 8);
    const hello = encode({ type: "bye" });
    const broken = result(43).slice();
    broken[16] = 99; // n no longer matches the byte size
    for (const bytes of [view, hello, broken]) adoptFrame(bytes);
    const fresh = [41, 43].map((n) => encode({ type: "contrib", step: 2, phase: "grad", layer: -1, count: 8, data: new Float32Array(n), extra: Float64Array.of(4) }));
    expect(fresh[0]!.buffer).not.toBe(padded.buffer);
    expect(fresh[1]!.buffer).not.toBe(broken.buffer);
  });
});

describe("protocol guards", () => {
  const conventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: "" };
  it("accepts a well-formed hello and names the bad field of a broken one", () => {
    expect(checkHello({ type: "hello", version: PROTOCOL_VERSION, rank: 0, worldSize: 2, token: "", conventions })).toBeNull();
    expect(checkHello({ type: "hello", version: 1, rank: -1, worldSize: 2, token: "", conventions })).toMatch(/rank/);
    expect(checkHello({ type: "hello", version: 1, rank: 0, worldSize: 2, token: 5, conventions })).toMatch(/token/);
    expect(checkHello({ type: "hello", version: 1, rank: 0, worldSize: 2, token: "", conventions: { eps: "x" } })).toMatch(/conventions/);
    expect(checkHello("hello")).toMatch(/hello/);
  });

  it("requires float64 statistics in BN rounds and float32 (one rank) or float64 (a block of ranks) gradients in grad rounds", () => {
    const base = { type: "contrib", step: 0, layer: 0, count: 3 };
    expect(checkContribution({ ...base, phase: "fwd", data: new Float64Array(4) })).toBeNull();
    expect(checkContribution({ ...base, phase: "fwd", data: new Float32Array(4) })).toMatch(/Float64Array/);
    expect(checkContribution({ ...base, phase: "fwd", data: new Float64Array(3) })).toMatch(/2·C/);
    expect(checkContribution({ ...base, phase: "grad", data: new Float32Array(4) })).toBeNull();
    expect(checkContribution({ ...base, phase: "grad", data: new Float64Array(4) })).toBeNull();
    expect(checkContribution({ ...base, phase: "grad", data: new Uint8Array(4) })).toMatch(/Float32Array or Float64Array/);
    expect(checkContribution({ ...base, phase: "nope", data: new Float64Array(4) })).toMatch(/phase/);
    expect(checkContribution({ ...base, phase: "bwd", count: 1.5, data: new Float64Array(4) })).toMatch(/count/);
  });
});

describe("shared/ boundary", () => {
  it("imports nothing from Node or ws: only relative modules and msgpackr", () => {
    const dir = join(ROOT, "shared");
    const files = readdirSync(dir).filter((f) => f.endsWith(".ts"));
    expect(files.length).toBeGreaterThan(4);
    for (const f of files) {
      const src = readFileSync(join(dir, f), "utf8");
      for (const m of src.matchAll(/(?:import|export)[^;]*?from\s+"([^"]+)"/g)) {
        const spec = m[1]!;
        expect(spec.startsWith("./") || spec === "msgpackr", `${f} imports ${spec}`).toBe(true);
      }
      expect(src, `${f} uses a Node global`).not.toMatch(/\b(process\.|Buffer\.|require\()/);
    }
  });
});
