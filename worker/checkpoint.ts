// Model checkpoints: parameters, SGD momentum buffers and BN running statistics
// in one binary file, written atomically (temp file, fsync, rename) with a
// SHA-256 trailer, so a crash mid-write never replaces the last good checkpoint.
//
// Layout (little-endian):
//   "SYNCBNCK" (8 bytes) | u32 format version | u32 header length H |
//   header JSON (H bytes, UTF-8) | params float32… | momentum buffers float32… |
//   per BN layer: running mean float64 (C), running var float64 (C) |
//   SHA-256 of everything before (32 bytes)

import { createHash } from "node:crypto";
import { closeSync, fsyncSync, openSync, readFileSync, readdirSync, renameSync, writeSync, unlinkSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { ErrorCode, SyncbnError } from "../shared/errors.js";

const MAGIC = "SYNCBNCK";
export const CHECKPOINT_VERSION = 1;

export interface CheckpointHeader {
  /** Completed training steps: resume starts at this step index. */
  step: number;
  model: string;
  norm: string;
  /** The training settings' canonical JSON (RunConventions.training). */
  training: string;
  params: { name: string; length: number }[];
  momentumBuffers: number[];
  bn: { name: string; channels: number; tracked: number }[];
}

export interface Checkpoint {
  header: CheckpointHeader;
  params: Float32Array[];
  momentum: Float32Array[];
  bn: { mean: Float64Array; var: Float64Array }[];
}

export function encodeCheckpoint(ck: Checkpoint): Buffer {
  const header = Buffer.from(JSON.stringify(ck.header), "utf8");
  const parts: Buffer[] = [Buffer.from(MAGIC, "ascii")];
  const fixed = Buffer.alloc(8);
  fixed.writeUInt32LE(CHECKPOINT_VERSION, 0);
  fixed.writeUInt32LE(header.length, 4);
  parts.push(fixed, header);
  const bytesOf = (a: Float32Array | Float64Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  for (const p of ck.params) parts.push(bytesOf(p));
  for (const m of ck.momentum) parts.push(bytesOf(m));
  for (const s of ck.bn) parts.push(bytesOf(s.mean), bytesOf(s.var));
  const body = Buffer.concat(parts);
  const digest = createHash("sha256").update(body).digest();
  return Buffer.concat([body, digest]);
}

export function decodeCheckpoint(buf: Buffer, file: string): Checkpoint {
  const bad = (what: string): never => {
    throw new SyncbnError(ErrorCode.Checkpoint, `${file}: ${what}; use an earlier checkpoint or start without --resume`);
  };
  if (buf.length < 16 + 32 || buf.subarray(0, 8).toString("ascii") !== MAGIC) bad("not a syncbn checkpoint (bad magic or too short)");
  const body = buf.subarray(0, buf.length - 32);
  const digest = createHash("sha256").update(body).digest();
  if (!digest.equals(buf.subarray(buf.length - 32))) bad("checksum mismatch: the file is truncated or corrupted");
  const version = buf.readUInt32LE(8);
  if (version !== CHECKPOINT_VERSION) bad(`format version ${version}, this syncbn reads ${CHECKPOINT_VERSION}`);
  const hlen = buf.readUInt32LE(12);
  let header: CheckpointHeader;
  try {
    header = JSON.parse(buf.subarray(16, 16 + hlen).toString("utf8")) as CheckpointHeader;
  } catch {
    return bad("unreadable header");
  }
  let off = 16 + hlen;
  // ArrayBuffer.slice copies, so every typed array is aligned whatever off is.
  const take32 = (n: number): Float32Array => {
    if (off + 4 * n > body.length) bad("payload shorter than the header says");
    const a = new Float32Array(body.buffer.slice(body.byteOffset + off, body.byteOffset + off + 4 * n));
    off += 4 * n;
    return a;
  };
  const take64 = (n: number): Float64Array => {
    if (off + 8 * n > body.length) bad("payload shorter than the header says");
    const a = new Float64Array(body.buffer.slice(body.byteOffset + off, body.byteOffset + off + 8 * n));
    off += 8 * n;
    return a;
  };
  const params = header.params.map((p) => take32(p.length));
  const momentum = header.momentumBuffers.map((n) => take32(n));
  const bn = header.bn.map((b) => ({ mean: take64(b.channels), var: take64(b.channels) }));
  if (off !== body.length) bad(`payload longer than the header says (${body.length - off} extra bytes)`);
  return { header, params, momentum, bn };
}

/**
 * Write atomically: a reader sees the old file or the complete new one, never a
 * partial one. midWrite (fault injection in tests) runs after half the bytes.
 */
export function writeCheckpoint(path: string, ck: Checkpoint, midWrite?: () => void): void {
  const bytes = encodeCheckpoint(ck);
  removeStaleTemps(path);
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, "w");
  try {
    const half = bytes.length >> 1;
    writeSync(fd, bytes, 0, half);
    midWrite?.();
    writeSync(fd, bytes, half, bytes.length - half);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      // nothing to clean
    }
    throw new SyncbnError(ErrorCode.Checkpoint, `cannot write checkpoint ${path}: ${(e as Error).message}`);
  }
  closeSync(fd);
  renameSync(tmp, path);
}

/** Temp files left by a writer that died mid-write. */
function removeStaleTemps(path: string): void {
  const dir = dirname(path);
  const prefix = `${basename(path)}.tmp-`;
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    if (n.startsWith(prefix)) {
      try {
        unlinkSync(join(dir, n));
      } catch {
        // another writer's or already gone
      }
    }
  }
}

export function readCheckpoint(path: string): Checkpoint {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new SyncbnError(ErrorCode.Checkpoint, `cannot read checkpoint ${path}: ${(e as Error).message}`);
  }
  return decodeCheckpoint(buf, path);
}
