// The one codec of the wire. Contributions and round results — the hot path, one
// per BN layer per pass — travel as a fixed binary frame (layout below); every
// other message (hello, welcome, error, bye, resync) as msgpack. Decoding never
// trusts a length: frames are checked against their byte size before any view is made.

import { Packr } from "msgpackr";
import { PHASES, type ClientMessage, type Contribution, type Phase, type RoundResult, type ServerMessage } from "./protocol.js";

// msgpackr with moreTypes, so Float32Array and Float64Array travel as typed-array
// extensions (without moreTypes msgpackr 2.x truncates their elements to bytes).
// Decoded typed arrays are fresh aligned copies.
const packr = new Packr({ useRecords: false, moreTypes: true });

/**
 * Binary frame of a contribution (worker → coordinator) or a round result
 * (coordinator → worker), little-endian:
 *
 *   offset  type  field
 *    0      u8    FRAME_MARKER 0xc1 (a byte msgpack never uses: frames and msgpack cannot be confused)
 *    1      u8    kind: 1 contribution, 2 result
 *    2      u8    phase: index in PHASES (0 fwd, 1 bwd, 2 grad, 3 sum)
 *    3      u8    flags: bit 0 data is float32 (else float64), bit 1 extra present, bit 2 checksum present
 *    4      i32   layer (≥ −1; −1 = the gradient round)
 *    8      u32   step
 *   12      u32   count (elements per channel, or samples)
 *   16      u32   n = data length in elements
 *   20      u32   m = extra length in elements (0 without extra)
 *   24      f64   checksum (0 without)
 *   32      data  n × f64, or n × f32 then zero padding to a multiple of 8 bytes
 *   32+D    extra m × f64
 *
 * Total size is exactly 32 + D + 8m: anything else is refused. The header is 32
 * bytes, so the payload is 8-byte aligned whenever the frame is.
 */
export const FRAME_MARKER = 0xc1;
export const FRAME_HEADER_BYTES = 32;
const KIND_CONTRIBUTION = 1;
const KIND_RESULT = 2;
const FLAG_F32 = 1;
const FLAG_EXTRA = 2;
const FLAG_CHECKSUM = 4;
const MAX_U32 = 0xffff_ffff;

// Typed arrays use the platform's byte order; the frame is little-endian.
if (new Uint8Array(Uint16Array.of(1).buffer)[0] !== 1) {
  throw new Error("syncbn's wire codec needs a little-endian platform");
}

function dataBytes(n: number, f32: boolean): number {
  return f32 ? (4 * n + 7) & ~7 : 8 * n;
}

/**
 * A frame's memory with its views, made once per buffer: a frame's size is a
 * multiple of 8 (header 32, data padded to 8, extra in f64), so one Float64Array
 * and one Float32Array span it all and payloads are written at an element index.
 */
interface FrameBuffer {
  bytes: Uint8Array;
  /** Header words 0..5 (u32). */
  words: Uint32Array;
  f64: Float64Array;
  f32: Float32Array;
}

/**
 * Frame buffers for reuse, by exact byte size: allocating a fresh ArrayBuffer
 * (and its views) per message costs more than the whole rest of the encode.
 * Transports put a frame back with releaseEncoded() once its sends completed;
 * frames never released are simply garbage-collected.
 */
const pool = new Map<number, FrameBuffer[]>();
/** The FrameBuffer behind each frame handed out or adopted, by its memory, for releaseEncoded. */
const frameOf = new WeakMap<ArrayBufferLike, FrameBuffer>();
let pooledBytes = 0;
const POOL_MAX_BYTES = 64 * 1024 * 1024;
const POOL_MAX_PER_SIZE = 8;

function takeFrame(size: number): FrameBuffer {
  const f = pool.get(size)?.pop();
  if (f !== undefined) {
    pooledBytes -= size;
    return f;
  }
  return frameOver(new ArrayBuffer(size));
}

function frameOver(buffer: ArrayBuffer): FrameBuffer {
  const frame: FrameBuffer = { bytes: new Uint8Array(buffer), words: new Uint32Array(buffer, 0, 6), f64: new Float64Array(buffer), f32: new Float32Array(buffer) };
  frameOf.set(buffer, frame);
  return frame;
}

/**
 * Gives an encoded frame's memory back for reuse. Call it only when nothing reads
 * `bytes` (or anything decoded from them) any more — for a transport, when every
 * send of them has completed. Anything that is not a frame from encode() or
 * beginResult() (msgpack bytes, views, transferred buffers) is ignored.
 */
export function releaseEncoded(bytes: Uint8Array): void {
  const frame = frameOf.get(bytes.buffer);
  const size = bytes.byteLength; // 0 once the buffer was transferred away
  if (frame === undefined || bytes !== frame.bytes || size < FRAME_HEADER_BYTES) return;
  if (pooledBytes + size > POOL_MAX_BYTES) return;
  let list = pool.get(size);
  if (!list) pool.set(size, (list = []));
  if (list.length >= POOL_MAX_PER_SIZE || list.includes(frame)) return;
  list.push(frame);
  pooledBytes += size;
}

/**
 * Takes the memory of a received frame into the pool, so a later encode reuses it
 * instead of allocating: for a transport whose received frames are this thread's
 * own (a MessagePort's clones; nothing else holds them). Call it only once nothing
 * reads the frame or anything decoded from it. Anything but a whole, well-formed
 * frame filling its own ArrayBuffer is ignored; so is a buffer already pooled.
 */
export function adoptFrame(bytes: Uint8Array): void {
  const buffer = bytes.buffer;
  if (!(buffer instanceof ArrayBuffer) || bytes.byteOffset !== 0 || bytes.byteLength !== buffer.byteLength) return;
  const size = buffer.byteLength;
  if (size < FRAME_HEADER_BYTES || size % 8 !== 0 || frameOf.has(buffer)) return;
  if (bytes[0] !== FRAME_MARKER || frameByteLength(bytes) !== size) return;
  releaseEncoded(frameOver(buffer).bytes);
}

/** Takes a frame of the given layout and writes its header (count 0, checksum 0). */
function startFrame(kind: number, phase: Phase, step: number, layer: number, n: number, f32: boolean, extraLength: number, checksum: boolean): FrameBuffer {
  const phaseIndex = PHASES.indexOf(phase);
  if (phaseIndex < 0) throw new Error(`cannot encode phase ${String(phase)}`);
  if (!Number.isInteger(step) || step < 0 || step > MAX_U32) throw new Error(`cannot encode step ${step}: must be an integer in 0..2^32−1`);
  const d = dataBytes(n, f32);
  const frame = takeFrame(FRAME_HEADER_BYTES + d + 8 * extraLength);
  // Every header byte is written here, every payload byte by the caller: a reused buffer carries nothing over.
  const { bytes, words } = frame;
  bytes[0] = FRAME_MARKER;
  bytes[1] = kind;
  bytes[2] = phaseIndex;
  bytes[3] = (f32 ? FLAG_F32 : 0) | (extraLength > 0 ? FLAG_EXTRA : 0) | (checksum ? FLAG_CHECKSUM : 0);
  words[1] = layer >>> 0; // i32 in two's complement
  words[2] = step;
  words[3] = 0;
  words[4] = n;
  words[5] = extraLength;
  frame.f64[3] = 0;
  if (f32 && d / 4 > n) frame.f32[FRAME_HEADER_BYTES / 4 + n] = 0; // padding to 8 bytes
  return frame;
}

function setCount(words: Uint32Array, count: number): void {
  if (!Number.isInteger(count) || count < 0 || count > MAX_U32) throw new Error(`cannot encode count ${count}: must be an integer in 0..2^32−1`);
  words[3] = count;
}

function encodeFrame(kind: number, m: Contribution | RoundResult): Uint8Array {
  const f32 = m.data instanceof Float32Array;
  const extra = m.extra;
  const checksum = m.type === "contrib" ? m.checksum : undefined;
  const frame = startFrame(kind, m.phase, m.step, m.layer, m.data.length, f32, extra?.length ?? 0, checksum !== undefined);
  setCount(frame.words, m.count);
  if (checksum !== undefined) frame.f64[3] = checksum;
  if (f32) frame.f32.set(m.data, FRAME_HEADER_BYTES / 4);
  else frame.f64.set(m.data, FRAME_HEADER_BYTES / 8);
  if (extra) frame.f64.set(extra, (FRAME_HEADER_BYTES + dataBytes(m.data.length, f32)) / 8);
  return frame.bytes;
}

/**
 * A result frame to reduce into, without an intermediate array or a copy: `data`
 * and `extra` are views of the frame's payload (contents undefined until
 * written); `finish(count)` sets the count and returns the frame's bytes.
 */
export interface ResultFrame {
  data: Float64Array | Float32Array;
  extra: Float64Array | undefined;
  finish(count: number): Uint8Array;
}

export function beginResult(step: number, phase: Phase, layer: number, n: number, f32: boolean, extraLength: number): ResultFrame {
  const frame = startFrame(KIND_RESULT, phase, step, layer, n, f32, extraLength, false);
  const at = FRAME_HEADER_BYTES / (f32 ? 4 : 8);
  const extraAt = (FRAME_HEADER_BYTES + dataBytes(n, f32)) / 8;
  return {
    data: f32 ? frame.f32.subarray(at, at + n) : frame.f64.subarray(at, at + n),
    extra: extraLength > 0 ? frame.f64.subarray(extraAt, extraAt + extraLength) : undefined,
    finish: (count) => {
      setCount(frame.words, count);
      return frame.bytes;
    },
  };
}

/**
 * Total byte size of the binary frame whose header starts at bytes[offset]
 * (needs FRAME_SIZE_BYTES of it): 32 + D + 8m, from the flags and the two length
 * fields. Lets a byte-stream reader find a frame's end before it has all of it;
 * decode() still checks every field.
 */
export function frameByteLength(bytes: Uint8Array, offset = 0): number {
  const f32 = (bytes[offset + 3]! & FLAG_F32) !== 0;
  return FRAME_HEADER_BYTES + dataBytes(u32le(bytes, offset + 16), f32) + 8 * u32le(bytes, offset + 20);
}

/** A little-endian u32 read byte by byte: no DataView per message, any alignment. */
export function u32le(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

const scratch64 = new Float64Array(1);
const scratchBytes = new Uint8Array(scratch64.buffer);
function f64le(bytes: Uint8Array, at: number): number {
  for (let i = 0; i < 8; i++) scratchBytes[i] = bytes[at + i]!;
  return scratch64[0]!;
}

/** Header bytes frameByteLength() reads. */
export const FRAME_SIZE_BYTES = 24;

/** A Float64Array/Float32Array over bytes[offset…], a view when aligned, else an aligned copy. */
function floats(bytes: Uint8Array, offset: number, n: number, f32: boolean): Float64Array | Float32Array {
  const at = bytes.byteOffset + offset;
  const size = f32 ? 4 : 8;
  if (at % size === 0) return f32 ? new Float32Array(bytes.buffer, at, n) : new Float64Array(bytes.buffer, at, n);
  // An explicit copy: a Node Buffer's slice() would be a view, still unaligned.
  const copy = new Uint8Array(n * size);
  copy.set(bytes.subarray(offset, offset + n * size));
  return f32 ? new Float32Array(copy.buffer) : new Float64Array(copy.buffer);
}

/** Parses and checks a binary frame; throws an Error naming what is wrong. */
function decodeFrame(bytes: Uint8Array, into: Float64Array | Float32Array | undefined): Contribution | RoundResult {
  if (bytes.length < FRAME_HEADER_BYTES) throw new Error(`binary frame of ${bytes.length} bytes is shorter than its ${FRAME_HEADER_BYTES}-byte header`);
  const kind = bytes[1]!;
  const phase = PHASES[bytes[2]!];
  const flags = bytes[3]!;
  if (kind !== KIND_CONTRIBUTION && kind !== KIND_RESULT) throw new Error(`binary frame of unknown kind ${kind}`);
  if (phase === undefined) throw new Error(`binary frame with unknown phase ${bytes[2]}`);
  if ((flags & ~(FLAG_F32 | FLAG_EXTRA | FLAG_CHECKSUM)) !== 0) throw new Error(`binary frame with unknown flags ${flags}`);
  const f32 = (flags & FLAG_F32) !== 0;
  const n = u32le(bytes, 16);
  const m = u32le(bytes, 20);
  const hasExtra = (flags & FLAG_EXTRA) !== 0;
  if (!hasExtra && m !== 0) throw new Error("binary frame has an extra length but no extra flag");
  const d = dataBytes(n, f32);
  const expected = FRAME_HEADER_BYTES + d + 8 * m;
  if (bytes.length !== expected) throw new Error(`binary frame is ${bytes.length} bytes, its header says ${expected} (${n} data, ${m} extra values)`);
  const step = u32le(bytes, 8);
  const layer = u32le(bytes, 4) | 0; // i32
  const count = u32le(bytes, 12);
  let data: Float64Array | Float32Array;
  if (into !== undefined && into.length === n && into instanceof Float32Array === f32) {
    // Straight into the caller's buffer: no allocation, alignment does not matter.
    new Uint8Array(into.buffer, into.byteOffset, into.byteLength).set(bytes.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + into.byteLength));
    data = into;
  } else {
    data = floats(bytes, FRAME_HEADER_BYTES, n, f32);
  }
  if (kind === KIND_RESULT) {
    if ((flags & FLAG_CHECKSUM) !== 0) throw new Error("result frame with a checksum flag");
    const r: RoundResult = { type: "result", step, phase, layer, count, data };
    if (hasExtra) r.extra = floats(bytes, FRAME_HEADER_BYTES + d, m, false) as Float64Array;
    return r;
  }
  const c: Contribution = { type: "contrib", step, phase, layer, count, data };
  if (hasExtra) c.extra = floats(bytes, FRAME_HEADER_BYTES + d, m, false) as Float64Array;
  if ((flags & FLAG_CHECKSUM) !== 0) c.checksum = f64le(bytes, 24);
  return c;
}

/** Largest layer id a round key holds (BN layer indices and sum-round ids are far below). */
export const MAX_KEY_LAYER = 0xfffe;

/**
 * The number a worker files a pending round under: (step, phase, layer) packed
 * as ((step·4 + phase index)·2^16 + layer + 1), exact for steps below 2^34.
 */
export function roundKey(step: number, phase: Phase, layer: number): number {
  return (step * 4 + PHASE_INDEX[phase]) * 0x10000 + (layer + 1);
}

const PHASE_INDEX: Record<Phase, number> = { fwd: 0, bwd: 1, grad: 2, sum: 3 };

/**
 * The round key of a binary frame, read from its header without decoding it
 * (null if `bytes` is not a frame, or too short to be one). Lets a receiver pick
 * the destination buffer before decoding.
 */
export function frameRoundKey(bytes: Uint8Array): number | null {
  if (bytes.length < FRAME_HEADER_BYTES || bytes[0] !== FRAME_MARKER || bytes[2]! >= PHASES.length) return null;
  const step = u32le(bytes, 8);
  const layer = u32le(bytes, 4) | 0; // i32
  return (step * 4 + bytes[2]!) * 0x10000 + (layer + 1);
}

/**
 * Encodes a message: contributions and results as a binary frame in an exactly
 * sized buffer of their own (transferable; possibly reused, see releaseEncoded);
 * the rest as msgpack (whose bytes may share a larger buffer with earlier messages).
 */
export function encode(msg: ClientMessage | ServerMessage): Uint8Array {
  if (msg.type === "contrib") return encodeFrame(KIND_CONTRIBUTION, msg);
  if (msg.type === "result") return encodeFrame(KIND_RESULT, msg);
  return packr.pack(msg);
}

/**
 * Decodes bytes to an unvalidated value (binary frames are checked for layout;
 * guards in protocol.ts check the rest); throws on malformed input. A frame's
 * data is copied into `into` when its type and length match (the message's
 * `data` is then `into`); otherwise frame payloads are views of `bytes` when
 * aligned (do not reuse `bytes` afterwards), aligned copies when not.
 */
export function decode(bytes: Uint8Array, into?: Float64Array | Float32Array): unknown {
  if (bytes.length > 0 && bytes[0] === FRAME_MARKER) return decodeFrame(bytes, into);
  return packr.unpack(bytes);
}
