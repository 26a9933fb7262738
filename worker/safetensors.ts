// The safetensors file format (Hugging Face), written and read exactly as its
// specification states: u64 little-endian header length N | N bytes of UTF-8 JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {str: str}},
// space-padded to a multiple of 8 | the byte buffer, tensors little-endian, row-major.
// Not a tensor library: it moves named byte ranges; weights.ts maps them to a model.

import { reasonOf, writeFileAtomic } from "./atomic-file.js";
import { MAX_MODEL_FILE_BYTES, readInputFile } from "./input-file.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";

/** Every dtype of the format, with its element size in bytes, in the format's own order. */
export const DTYPE_SIZES = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4, F64: 8, I64: 8, U64: 8,
} as const;
export type Dtype = keyof typeof DTYPE_SIZES;
const DTYPE_ORDER = Object.keys(DTYPE_SIZES) as Dtype[];

/** The reference implementation refuses headers over 100 MB (no huge JSON parse from a hostile file). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface TensorBytes {
  dtype: Dtype;
  shape: number[];
  /** Little-endian element bytes, row-major; length = Π shape × element size. */
  data: Uint8Array;
}

export interface SafetensorsFile {
  /** In buffer order. */
  tensors: Map<string, TensorBytes>;
  metadata: Record<string, string>;
}

export function isDtype(s: unknown): s is Dtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZES, s);
}

function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * The file's bytes. Tensors are laid out as the reference writer does: by dtype,
 * widest-aligned first, then by name, so every tensor starts at a multiple of its
 * element size (the header is padded to 8).
 */
export function encodeSafetensors(tensors: ReadonlyMap<string, TensorBytes>, metadata: Record<string, string> = {}): Buffer {
  const names = [...tensors.keys()].sort((a, b) => {
    const da = DTYPE_ORDER.indexOf(tensors.get(a)!.dtype), db = DTYPE_ORDER.indexOf(tensors.get(b)!.dtype);
    return da !== db ? db - da : a < b ? -1 : a > b ? 1 : 0;
  });
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    if (name === "__metadata__") throw new RangeError(`safetensors: "__metadata__" is reserved, not a tensor name`);
    const t = tensors.get(name)!;
    const bytes = elementCount(t.shape) * DTYPE_SIZES[t.dtype];
    if (t.data.length !== bytes) throw new RangeError(`safetensors: ${name} has ${t.data.length} bytes, its ${t.dtype} shape [${t.shape.join(", ")}] needs ${bytes}`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json, "utf8") % 8)) % 8);
  const head = Buffer.from(json, "utf8");
  const out = Buffer.alloc(8 + head.length + offset);
  out.writeBigUInt64LE(BigInt(head.length), 0);
  head.copy(out, 8);
  let at = 8 + head.length;
  for (const name of names) {
    out.set(tensors.get(name)!.data, at);
    at += tensors.get(name)!.data.length;
  }
  return out;
}

/**
 * Parses and validates a whole file: header length within the file and ≤ 100 MB,
 * UTF-8 JSON object, known dtypes, non-negative integer shapes and offsets, each
 * tensor's byte length = Π shape × dtype size, offsets contiguous from 0 with no
 * overlap and ending exactly at the end of the file. Any problem is one
 * SyncbnError(Data) naming `file` and the problem; nothing is half-returned.
 */
export function decodeSafetensors(bytes: Uint8Array, file: string): SafetensorsFile {
  const bad = (problem: string): never => {
    throw new SyncbnError(ErrorCode.Data, `${file}: not a valid safetensors file: ${problem}`);
  };
  if (bytes.length < 8) bad(`${bytes.length} bytes, shorter than the 8-byte header length (truncated)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const declared = view.getBigUint64(0, true);
  if (declared > BigInt(MAX_HEADER_BYTES)) bad(`header length ${declared} is over the format's 100 MB limit`);
  const n = Number(declared);
  if (8 + n > bytes.length) bad(`header length ${n} runs past the end of the file (${bytes.length} bytes; truncated?)`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n));
  } catch {
    return bad("header is not UTF-8");
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    return bad(`header is not JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) return bad("header is not a JSON object");

  const metadata: Record<string, string> = {};
  const entries: { name: string; dtype: Dtype; shape: number[]; begin: number; end: number }[] = [];
  const isIndex = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
  for (const [name, info] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof info !== "object" || info === null || Array.isArray(info)) bad(`__metadata__ is not a map of strings`);
      for (const [k, v] of Object.entries(info as Record<string, unknown>)) {
        if (typeof v !== "string") bad(`__metadata__.${k} is not a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    if (typeof info !== "object" || info === null) return bad(`${name}: entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = info as Record<string, unknown>;
    if (!isDtype(dtype)) return bad(`${name}: unknown dtype ${JSON.stringify(dtype)} (the format has ${DTYPE_ORDER.join(", ")})`);
    if (!Array.isArray(shape) || !shape.every(isIndex)) return bad(`${name}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) {
      return bad(`${name}: data_offsets ${JSON.stringify(offsets)} is not [begin, end] with non-negative integers`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) bad(`${name}: data_offsets [${begin}, ${end}] end before they begin`);
    const need = elementCount(shape as number[]) * DTYPE_SIZES[dtype];
    if (end - begin !== need) {
      bad(`${name}: ${dtype} shape [${(shape as number[]).join(", ")}] needs ${need} bytes, data_offsets [${begin}, ${end}] hold ${end - begin}`);
    }
    entries.push({ name, dtype, shape: shape as number[], begin, end });
  }
  const bufferBytes = bytes.length - 8 - n;
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const e of entries) {
    if (e.end > bufferBytes) bad(`${e.name}: data_offsets [${e.begin}, ${e.end}] run past the ${bufferBytes}-byte buffer (truncated?)`);
    if (e.begin < at) bad(`${e.name}: data_offsets [${e.begin}, ${e.end}] overlap the previous tensor's bytes (up to ${at})`);
    if (e.begin > at) bad(`${e.name}: data_offsets [${e.begin}, ${e.end}] leave a gap after byte ${at} (offsets must be contiguous)`);
    at = e.end;
  }
  if (at !== bufferBytes) bad(`the tensors cover ${at} bytes of the ${bufferBytes}-byte buffer (trailing bytes)`);
  const tensors = new Map<string, TensorBytes>();
  const base = 8 + n;
  // Copies: the caller may keep tensors while the file's buffer is dropped, and typed views need alignment.
  for (const e of entries) tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: bytes.slice(base + e.begin, base + e.end) });
  return { tensors, metadata };
}

/** Reads a regular file of at most MAX_MODEL_FILE_BYTES (input-file.ts) and decodes it. */
export function readSafetensors(path: string): SafetensorsFile {
  let bytes: Buffer;
  try {
    bytes = readInputFile(path, MAX_MODEL_FILE_BYTES);
  } catch (e) {
    throw new SyncbnError(ErrorCode.Data, `cannot read ${path}: ${(e as Error).message}`);
  }
  return decodeSafetensors(bytes, path);
}

/** Writes atomically (worker/atomic-file.ts): a reader sees the old file or the whole new one. */
export function writeSafetensors(path: string, tensors: ReadonlyMap<string, TensorBytes>, metadata: Record<string, string> = {}): void {
  try {
    writeFileAtomic(path, encodeSafetensors(tensors, metadata));
  } catch (e) {
    throw new SyncbnError(ErrorCode.Checkpoint, `cannot write ${path} (${reasonOf(e)}); the previous file there, if any, is untouched`);
  }
}

// ---- element conversions (little-endian) -------------------------------------

/** The values of a floating tensor (F32, F64, F16, BF16) as float64, or null for other dtypes. */
export function floatValues(t: TensorBytes): Float64Array | null {
  const v = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const n = t.data.length / DTYPE_SIZES[t.dtype];
  const out = new Float64Array(n);
  switch (t.dtype) {
    case "F32":
      for (let i = 0; i < n; i++) out[i] = v.getFloat32(4 * i, true);
      return out;
    case "F64":
      for (let i = 0; i < n; i++) out[i] = v.getFloat64(8 * i, true);
      return out;
    case "F16":
      for (let i = 0; i < n; i++) out[i] = halfToNumber(v.getUint16(2 * i, true));
      return out;
    case "BF16": {
      const f = new DataView(new ArrayBuffer(4));
      for (let i = 0; i < n; i++) {
        f.setUint32(0, v.getUint16(2 * i, true) << 16);
        out[i] = f.getFloat32(0);
      }
      return out;
    }
    default:
      return null;
  }
}

/** IEEE 754 binary16 → number (exact). */
export function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** The values of an integer tensor as bigint, or null for other dtypes. */
export function integerValues(t: TensorBytes): bigint[] | null {
  const v = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const size = DTYPE_SIZES[t.dtype];
  const n = t.data.length / size;
  const read: ((i: number) => bigint) | null =
    t.dtype === "I64" ? (i) => v.getBigInt64(8 * i, true)
    : t.dtype === "U64" ? (i) => v.getBigUint64(8 * i, true)
    : t.dtype === "I32" ? (i) => BigInt(v.getInt32(4 * i, true))
    : t.dtype === "U32" ? (i) => BigInt(v.getUint32(4 * i, true))
    : t.dtype === "I16" ? (i) => BigInt(v.getInt16(2 * i, true))
    : t.dtype === "U16" ? (i) => BigInt(v.getUint16(2 * i, true))
    : t.dtype === "I8" ? (i) => BigInt(v.getInt8(i))
    : t.dtype === "U8" ? (i) => BigInt(v.getUint8(i))
    : null;
  return read ? Array.from({ length: n }, (_, i) => read(i)) : null;
}

/** values rounded to float32, little-endian whatever the host's byte order. */
export function float32Tensor(shape: number[], values: ArrayLike<number>): TensorBytes {
  const data = new Uint8Array(4 * values.length);
  const v = new DataView(data.buffer);
  for (let i = 0; i < values.length; i++) v.setFloat32(4 * i, values[i]!, true);
  return { dtype: "F32", shape, data };
}

export function int64Scalar(value: number): TensorBytes {
  const data = new Uint8Array(8);
  new DataView(data.buffer).setBigInt64(0, BigInt(value), true);
  return { dtype: "I64", shape: [], data };
}
