// Tests of the safetensors format code (worker/safetensors.ts): the bytes the
// specification prescribes, round trips of every dtype, and every malformed file
// refused with one SYNCBN_ERR_DATA line naming the file and the problem.
// Not a training test: no model here (weights.test.ts has the model side).

import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import {
  DTYPE_SIZES,
  MAX_HEADER_BYTES,
  decodeSafetensors,
  encodeSafetensors,
  floatValues,
  integerValues,
  readSafetensors,
  writeSafetensors,
  type Dtype,
  type TensorBytes,
} from "../worker/safetensors.js";

/** A file built by hand from the specification: u64 LE header length, header text, buffer. */
function fileOf(header: string, buffer: Uint8Array = new Uint8Array(0), declared?: bigint): Uint8Array {
  const head = Buffer.from(header, "utf8");
  const out = Buffer.alloc(8 + head.length + buffer.length);
  out.writeBigUInt64LE(declared ?? BigInt(head.length), 0);
  head.copy(out, 8);
  out.set(buffer, 8 + head.length);
  return out;
}

function refusal(bytes: Uint8Array): SyncbnError {
  try {
    decodeSafetensors(bytes, "w.safetensors");
  } catch (e) {
    return e as SyncbnError;
  }
  throw new Error("the file was accepted");
}

const f32 = (...v: number[]): Uint8Array => new Uint8Array(Float32Array.from(v).buffer);

describe("safetensors writer", () => {
  it("writes the bytes the specification prescribes: u64 LE header length, space-padded JSON header, the buffer", () => {
    const bytes = encodeSafetensors(new Map([["attn.0", { dtype: "F32", shape: [1, 2, 3], data: f32(0, 1, 2, 3, 4, 5) } as TensorBytes]]));
    const header = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}';
    expect(header.length % 8).toBe(0); // 64: no padding needed
    expect(Buffer.from(bytes).equals(Buffer.from(fileOf(header, f32(0, 1, 2, 3, 4, 5))))).toBe(true);
    const empty = encodeSafetensors(new Map());
    expect([...empty]).toEqual([8, 0, 0, 0, 0, 0, 0, 0, ...Buffer.from("{}      ")]);
  });

  it("puts __metadata__ first, orders tensors widest dtype first then by name, and aligns each to its element size", () => {
    const bytes = encodeSafetensors(
      new Map<string, TensorBytes>([
        ["b", { dtype: "F32", shape: [3], data: f32(1, 2, 3) }],
        ["a", { dtype: "F32", shape: [1], data: f32(4) }],
        ["n", { dtype: "I64", shape: [], data: new Uint8Array(8) }],
      ]),
      { format: "pt" },
    );
    const n = Number(Buffer.from(bytes).readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const text = Buffer.from(bytes.subarray(8, 8 + n)).toString("utf8");
    expect(Object.keys(JSON.parse(text))).toEqual(["__metadata__", "n", "a", "b"]);
    expect(JSON.parse(text).n.data_offsets).toEqual([0, 8]);
    expect(JSON.parse(text).a.data_offsets).toEqual([8, 12]);
  });

  it("round-trips every dtype of the format, scalars and empty tensors included", () => {
    const tensors = new Map<string, TensorBytes>();
    for (const [i, dtype] of (Object.keys(DTYPE_SIZES) as Dtype[]).entries()) {
      const shape = i % 3 === 0 ? [] : i % 3 === 1 ? [2, 3] : [0, 4];
      const len = (shape.length === 0 ? 1 : shape[0]! * shape[1]!) * DTYPE_SIZES[dtype];
      tensors.set(`t${i}.${dtype}`, { dtype, shape, data: Uint8Array.from({ length: len }, (_, k) => (k * 37 + i) & 255) });
    }
    const back = decodeSafetensors(encodeSafetensors(tensors, { a: "b" }), "x");
    expect(back.metadata).toEqual({ a: "b" });
    expect(back.tensors.size).toBe(tensors.size);
    for (const [name, t] of tensors) {
      const u = back.tensors.get(name)!;
      expect([u.dtype, u.shape, [...u.data]]).toEqual([t.dtype, t.shape, [...t.data]]);
    }
  });

  it("converts F32, F64, F16 and BF16 to numbers and integer dtypes to bigints exactly", () => {
    const half = new Uint8Array([0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x7b]); // 1, −2, 2^-24, 65504
    expect([...floatValues({ dtype: "F16", shape: [4], data: half })!]).toEqual([1, -2, 2 ** -24, 65504]);
    const bf = new Uint8Array([0x80, 0x3f, 0xc0, 0xbf]); // 1, −1.5
    expect([...floatValues({ dtype: "BF16", shape: [2], data: bf })!]).toEqual([1, -1.5]);
    expect([...floatValues({ dtype: "F64", shape: [1], data: new Uint8Array(Float64Array.of(0.1).buffer) })!]).toEqual([0.1]);
    expect(floatValues({ dtype: "I64", shape: [], data: new Uint8Array(8) })).toBeNull();
    const i64 = new Uint8Array(8);
    new DataView(i64.buffer).setBigInt64(0, -5n, true);
    expect(integerValues({ dtype: "I64", shape: [], data: i64 })).toEqual([-5n]);
  });

  it("writes atomically: the file appears whole and no temp file is left", () => {
    const dir = mkdtempSync(join(tmpdir(), "syncbn-st-"));
    const path = join(dir, "w.safetensors");
    writeSafetensors(path, new Map([["x", { dtype: "F32", shape: [2], data: f32(1, 2) } as TensorBytes]]));
    expect(readdirSync(dir)).toEqual(["w.safetensors"]);
    expect([...floatValues(readSafetensors(path).tensors.get("x")!)!]).toEqual([1, 2]);
  });
});

describe("safetensors reader refuses a malformed file with one line naming the file and the problem", () => {
  const ok = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
  const cases: [string, Uint8Array, RegExp][] = [
    ["shorter than 8 bytes", new Uint8Array(5), /5 bytes, shorter than the 8-byte header length/],
    ["a header length past the end", fileOf(ok, f32(1, 2), 10_000n), /header length 10000 runs past the end of the file/],
    ["a header over 100 MB", fileOf(ok, f32(1, 2), BigInt(MAX_HEADER_BYTES + 1)), /over the format's 100 MB limit/],
    ["a header length near 2^64", fileOf(ok, f32(1, 2), 2n ** 64n - 1n), /over the format's 100 MB limit/],
    ["a header that is not JSON", fileOf('{"a":', f32(1, 2)), /header is not JSON/],
    ["a header that is not an object", fileOf("[1, 2]  ", new Uint8Array(0)), /header is not a JSON object/],
    ["invalid UTF-8", fileOf("\u0000", new Uint8Array(0)).map((b, i) => (i === 8 ? 0xff : b)), /not UTF-8/],
    ["an unknown dtype", fileOf('{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}', new Uint8Array(16)), /a: unknown dtype "F128"/],
    ["a negative shape", fileOf('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', f32(1, 2)), /a: shape \[-2\] is not a list of non-negative integers/],
    ["offsets that are not a pair", fileOf('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}', f32(1, 2)), /data_offsets \[0\] is not \[begin, end\]/],
    ["offsets that end before they begin", fileOf('{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}', f32(1, 2)), /end before they begin/],
    ["shape × dtype size ≠ byte length", fileOf('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', f32(1, 2)), /a: F32 shape \[3\] needs 12 bytes, data_offsets \[0, 8\] hold 8/],
    ["out-of-range offsets (truncated buffer)", fileOf(ok, f32(1)), /a: data_offsets \[0, 8\] run past the 4-byte buffer/],
    [
      "overlapping offsets",
      fileOf('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', f32(1, 2, 3)),
      /b: data_offsets \[4, 12\] overlap the previous tensor's bytes/,
    ],
    [
      "a gap between tensors",
      fileOf('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', f32(1, 2, 3)),
      /b: data_offsets \[8, 12\] leave a gap after byte 4/,
    ],
    ["trailing bytes after the last tensor", fileOf(ok, f32(1, 2, 3)), /cover 8 bytes of the 12-byte buffer/],
    ["non-string metadata", fileOf('{"__metadata__":{"k":1}}', new Uint8Array(0)), /__metadata__.k is not a string/],
  ];
  for (const [what, bytes, message] of cases) {
    it(`refuses ${what}`, () => {
      const e = refusal(bytes);
      expect(e).toBeInstanceOf(SyncbnError);
      expect(e.code).toBe(ErrorCode.Data);
      expect(e.message).toMatch(/^SYNCBN_ERR_DATA: w\.safetensors: not a valid safetensors file: /);
      expect(e.message).toMatch(message);
      expect(e.message).not.toContain("\n");
    });
  }

  it("refuses a real file cut short at every length, never crashing", () => {
    const whole = encodeSafetensors(new Map([["a", { dtype: "F32", shape: [2], data: f32(1, 2) } as TensorBytes]]), { format: "pt" });
    for (let len = 0; len < whole.length; len++) expect(refusal(whole.subarray(0, len)).code).toBe(ErrorCode.Data);
    expect(decodeSafetensors(whole, "w").tensors.size).toBe(1);
  });

  it("names a missing file", () => {
    expect(() => readSafetensors("/nonexistent/w.safetensors")).toThrow(/SYNCBN_ERR_DATA: cannot read \/nonexistent\/w\.safetensors/);
    const dir = mkdtempSync(join(tmpdir(), "syncbn-st-"));
    writeFileSync(join(dir, "t.safetensors"), Buffer.from([1, 2, 3]));
    expect(() => readSafetensors(join(dir, "t.safetensors"))).toThrow(/t\.safetensors: not a valid safetensors file: 3 bytes/);
    expect(readFileSync(join(dir, "t.safetensors")).length).toBe(3);
  });
});
