// The values of an ONNX TensorProto (an initializer or a Constant), read only after
// its sizes are checked: dims non-negative and within MAX_TENSOR_ELEMENTS, and the
// data present exactly what the dims say, so a file cannot make the importer
// allocate more than it holds. Float values come out as float32, each one finite.
// Not the importer: onnx-import.ts decides what a tensor is used for.

import type { TensorProto } from "onnx-buf";
import { halfToNumber } from "../safetensors.js";

/** Elements of one initializer or Constant (32 Mi: 128 MiB as float32). */
export const MAX_TENSOR_ELEMENTS = 2 ** 25;
/** Elements of all initializers and Constants of a model together (64 Mi: 256 MiB as float32). */
export const MAX_MODEL_ELEMENTS = 2 ** 26;
/** Elements of a constant the shape arithmetic folds (ConstantOfShape's output, integer vectors): shapes are short. */
export const MAX_FOLDED_ELEMENTS = 1024;
/** Elements of one value per sample: an activation, or a convolution's unrolled input (cin·k²·outH·outW). */
export const MAX_VALUE_ELEMENTS = 2 ** 25;

export const ONNX_FLOAT = 1;
const ONNX_INT32 = 6;
const ONNX_INT64 = 7;
const ONNX_BOOL = 9;
const ONNX_FLOAT16 = 10;
const ONNX_DOUBLE = 11;
const EXTERNAL_DATA = 1;

const TYPE_NAMES = [
  "UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64", "STRING", "BOOL",
  "FLOAT16", "DOUBLE", "UINT32", "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16",
];
/** The element types a weight, bias or running statistic may have; read as float32. */
export const FLOAT_TYPES = "FLOAT, DOUBLE or FLOAT16";

export function typeName(dataType: number): string {
  return TYPE_NAMES[dataType] ?? `type ${dataType}`;
}

export function isFloatType(dataType: number): boolean {
  return dataType === ONNX_FLOAT || dataType === ONNX_DOUBLE || dataType === ONNX_FLOAT16;
}

/** A tensor whose sizes or values cannot be used; the message says why, after "what" (e.g. `initializer "fc.weight"`). */
export class TensorError extends Error {}

/** The element count of t's dims, checked: each a non-negative integer, the product within MAX_TENSOR_ELEMENTS. */
export function tensorElements(t: TensorProto, what: string): number {
  const dims = t.dims.map(Number);
  if (dims.some((d) => !Number.isSafeInteger(d) || d < 0)) throw new TensorError(`${what}: dims [${dims.join(", ")}] must be non-negative integers`);
  // Early out on the running product: dims like [1e8, 1e8, 1e8] never reach an inexact float.
  let n = 1;
  for (const d of dims) {
    n *= d;
    if (n > MAX_TENSOR_ELEMENTS) break;
  }
  if (dims.includes(0)) n = 0;
  if (n > MAX_TENSOR_ELEMENTS) throw new TensorError(`${what}: dims [${dims.join(", ")}] are over the limit of ${MAX_TENSOR_ELEMENTS} elements per tensor`);
  return n;
}

const RAW_BYTES: Record<number, number> = { [ONNX_FLOAT]: 4, [ONNX_INT32]: 4, [ONNX_INT64]: 8, [ONNX_FLOAT16]: 2, [ONNX_DOUBLE]: 8, [ONNX_BOOL]: 1 };

/** The values' source, after checking it holds exactly `count` elements: raw little-endian bytes, or the typed field. */
function source(t: TensorProto, count: number, what: string): DataView | null {
  if (t.dataLocation === EXTERNAL_DATA) throw new TensorError(`${what}: external data is not supported; export the model as one file`);
  const dims = `dims [${t.dims.join(", ")}]`;
  if (t.rawData.length > 0) {
    const size = RAW_BYTES[t.dataType]!;
    if (t.rawData.length !== count * size) throw new TensorError(`${what}: ${dims} need ${count} × ${size} = ${count * size} bytes of ${typeName(t.dataType)}, raw_data holds ${t.rawData.length}`);
    return new DataView(t.rawData.buffer, t.rawData.byteOffset, t.rawData.byteLength);
  }
  const typed =
    t.dataType === ONNX_FLOAT ? t.floatData.length
    : t.dataType === ONNX_DOUBLE ? t.doubleData.length
    : t.dataType === ONNX_INT64 ? t.int64Data.length
    : t.int32Data.length; // INT32, BOOL and FLOAT16 (its bits in the low 16 of each int32)
  if (typed !== count) throw new TensorError(`${what}: ${dims} hold ${count} elements, the tensor holds ${typed}`);
  return null;
}

/**
 * t's values as float32, or null when t is not FLOAT, DOUBLE or FLOAT16. Every
 * value must be finite after rounding to float32 (a DOUBLE 1e300 is refused, not
 * turned into +Inf); the error names the index.
 */
export function tensorFloats(t: TensorProto, what: string): Float32Array | null {
  if (!isFloatType(t.dataType)) return null;
  const n = tensorElements(t, what);
  const raw = source(t, n, what);
  const out = new Float32Array(n);
  let wide: (i: number) => number;
  if (t.dataType === ONNX_FLOAT) {
    if (raw) for (let i = 0; i < n; i++) out[i] = raw.getFloat32(4 * i, true);
    else out.set(t.floatData);
    wide = (i) => out[i]!;
  } else if (t.dataType === ONNX_DOUBLE) {
    wide = raw ? (i) => raw.getFloat64(8 * i, true) : (i) => t.doubleData[i]!;
  } else {
    wide = raw ? (i) => halfToNumber(raw.getUint16(2 * i, true)) : (i) => halfToNumber(t.int32Data[i]! & 0xffff);
  }
  for (let i = 0; i < n; i++) {
    const v = wide(i);
    out[i] = v;
    if (!Number.isFinite(out[i]!)) throw new TensorError(`${what}[${i}] is ${v}${Number.isFinite(v) ? ", which overflows float32" : ""}; every value must be finite`);
  }
  return out;
}

/**
 * t's values as numbers when shape arithmetic could fold them: INT64, INT32 or BOOL (0, 1: Dropout's training_mode), or a
 * float type, of at most MAX_FOLDED_ELEMENTS; null otherwise (not foldable, never
 * an error). Sizes are checked all the same.
 */
export function tensorInts(t: TensorProto, what: string): number[] | null {
  const n = tensorElements(t, what);
  if (isFloatType(t.dataType)) {
    const f = tensorFloats(t, what)!;
    return n <= MAX_FOLDED_ELEMENTS ? Array.from(f) : null;
  }
  if (t.dataType !== ONNX_INT64 && t.dataType !== ONNX_INT32 && t.dataType !== ONNX_BOOL) return null;
  const raw = source(t, n, what);
  if (n > MAX_FOLDED_ELEMENTS) return null;
  if (t.dataType === ONNX_BOOL) return raw ? Array.from({ length: n }, (_, i) => (raw.getUint8(i) !== 0 ? 1 : 0)) : t.int32Data.map((v) => (v !== 0 ? 1 : 0));
  if (t.dataType === ONNX_INT64) return raw ? Array.from({ length: n }, (_, i) => Number(raw.getBigInt64(8 * i, true))) : t.int64Data.map(Number);
  return raw ? Array.from({ length: n }, (_, i) => raw.getInt32(4 * i, true)) : [...t.int32Data];
}
