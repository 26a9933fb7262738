import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Packr } from "msgpackr";
import { describe, expect, it } from "vitest";
import { decode, encode } from "../shared/codec.js";
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

describe("protocol guards", () => {
  const conventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: "" };
  it("accepts a well-formed hello and names the bad field of a broken one", () => {
    expect(checkHello({ type: "hello", version: PROTOCOL_VERSION, rank: 0, worldSize: 2, token: "", conventions })).toBeNull();
    expect(checkHello({ type: "hello", version: 1, rank: -1, worldSize: 2, token: "", conventions })).toMatch(/rank/);
    expect(checkHello({ type: "hello", version: 1, rank: 0, worldSize: 2, token: 5, conventions })).toMatch(/token/);
    expect(checkHello({ type: "hello", version: 1, rank: 0, worldSize: 2, token: "", conventions: { eps: "x" } })).toMatch(/conventions/);
    expect(checkHello("hello")).toMatch(/hello/);
  });

  it("requires float64 statistics in BN rounds and float32 gradients in grad rounds", () => {
    const base = { type: "contrib", step: 0, layer: 0, count: 3 };
    expect(checkContribution({ ...base, phase: "fwd", data: new Float64Array(4) })).toBeNull();
    expect(checkContribution({ ...base, phase: "fwd", data: new Float32Array(4) })).toMatch(/Float64Array/);
    expect(checkContribution({ ...base, phase: "fwd", data: new Float64Array(3) })).toMatch(/2·C/);
    expect(checkContribution({ ...base, phase: "grad", data: new Float64Array(4) })).toMatch(/Float32Array/);
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
