// Message boundaries on a byte stream, for the tcp wire (`--wire tcp`): a binary
// round frame (codec.ts) is self-delimiting, its header gives its size, so it is
// written as it is, in one write; every other message (hello, welcome, error,
// bye, resync: msgpack) travels in an envelope, ENVELOPE_MARKER then a u32
// little-endian length. Pure byte logic, no sockets: the transports own those.

import { FRAME_MARKER, FRAME_SIZE_BYTES, frameByteLength, u32le } from "./codec.js";

/** First byte of an enveloped message; neither a frame (0xc1) nor anything else on this wire. */
export const ENVELOPE_MARKER = 0xc2;
const ENVELOPE_HEADER_BYTES = 5;

/** What goes on the stream for one encoded message: frames as they are, the rest enveloped. */
export function toStreamUnit(bytes: Uint8Array): Uint8Array {
  if (bytes.length > 0 && bytes[0] === FRAME_MARKER) return bytes;
  const unit = new Uint8Array(ENVELOPE_HEADER_BYTES + bytes.length);
  unit[0] = ENVELOPE_MARKER;
  new DataView(unit.buffer).setUint32(1, bytes.length, true);
  unit.set(bytes, ENVELOPE_HEADER_BYTES);
  return unit;
}

/** The stream broke the wire's rules; the connection cannot be resynchronized. */
export class StreamFrameError extends Error {}

/**
 * Cuts a byte stream back into messages. Units that arrive whole are handed on
 * as views of the chunk (no copy); a unit split across chunks is assembled in a
 * buffer of its exact size, allocated once its header says the size. Handed-on
 * bytes are never written again, so a receiver may keep views of them.
 */
export class StreamFrameReader {
  /** The unit being assembled (exact size) and how much of it has arrived. */
  private unit: Uint8Array | null = null;
  private fill = 0;
  /** The first bytes of a unit whose header is still incomplete (< 24 bytes). */
  private carry: Uint8Array | null = null;

  constructor(
    /**
     * Largest message accepted, in bytes; a larger header fails at once, before any
     * buffering. Transports may change it between messages (raised once a peer is admitted).
     */
    public maxBytes: number,
    private readonly onMessage: (bytes: Uint8Array) => void,
  ) {}

  /** Feeds the next chunk of the stream; throws StreamFrameError on a malformed or oversized unit. */
  push(chunk: Uint8Array): void {
    let data = chunk;
    if (this.carry) {
      data = new Uint8Array(this.carry.length + chunk.length);
      data.set(this.carry);
      data.set(chunk, this.carry.length);
      this.carry = null;
    }
    let off = 0;
    while (off < data.length) {
      if (this.unit) {
        const take = Math.min(this.unit.length - this.fill, data.length - off);
        this.unit.set(data.subarray(off, off + take), this.fill);
        this.fill += take;
        off += take;
        if (this.fill === this.unit.length) {
          const whole = this.unit;
          this.unit = null;
          this.deliver(whole);
        }
        continue;
      }
      const size = this.unitSize(data, off);
      if (size < 0) {
        this.carry = data.slice(off);
        return;
      }
      if (data.length - off >= size) {
        const whole = data.subarray(off, off + size);
        off += size;
        this.deliver(whole);
      } else {
        this.unit = new Uint8Array(size);
        this.fill = 0;
      }
    }
  }

  /**
   * push() for a transport: the reason the stream must be dropped (a malformed or
   * oversized unit, or a buffer that could not be allocated), or null when the
   * chunk was taken. An allocation failure drops this connection, never the whole coordinator.
   */
  feed(chunk: Uint8Array): string | null {
    try {
      this.push(chunk);
      return null;
    } catch (e) {
      if (e instanceof StreamFrameError) return e.message;
      if (e instanceof RangeError) {
        this.unit = null;
        this.carry = null;
        return `could not buffer a message (${e.message})`;
      }
      throw e;
    }
  }

  /** True while part of a unit is buffered (a stream that ends now was cut mid-message). */
  get midMessage(): boolean {
    return this.unit !== null || this.carry !== null;
  }

  private deliver(unit: Uint8Array): void {
    this.onMessage(unit[0] === ENVELOPE_MARKER ? unit.subarray(ENVELOPE_HEADER_BYTES) : unit);
  }

  /** Size of the unit at data[off], or −1 if its header has not fully arrived. */
  private unitSize(data: Uint8Array, off: number): number {
    const avail = data.length - off;
    const first = data[off]!;
    let size: number;
    if (first === FRAME_MARKER) {
      if (avail < FRAME_SIZE_BYTES) return -1;
      size = frameByteLength(data, off);
    } else if (first === ENVELOPE_MARKER) {
      if (avail < ENVELOPE_HEADER_BYTES) return -1;
      size = ENVELOPE_HEADER_BYTES + u32le(data, off + 1);
    } else {
      throw new StreamFrameError(`stream message starts with byte 0x${first.toString(16)}, neither a round frame (0xc1) nor an envelope (0xc2): not a syncbn tcp peer, or the stream is corrupt`);
    }
    if (size - (first === ENVELOPE_MARKER ? ENVELOPE_HEADER_BYTES : 0) > this.maxBytes) {
      throw new StreamFrameError(`a message of ${size} bytes exceeds the limit of ${this.maxBytes} bytes`);
    }
    return size;
  }
}
