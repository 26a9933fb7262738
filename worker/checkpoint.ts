// Model checkpoints: parameters, SGD momentum buffers and BN running statistics
// in one binary file, written atomically (temp file, every byte checked, fsync,
// rename, fsync of the folder) with a SHA-256 trailer, so a crash or a full disk
// mid-write never replaces the last good checkpoint. The header is validated like
// any input. Not a format for other tools.
//
// Layout (little-endian):
//   "SYNCBNCK" (8 bytes) | u32 format version | u32 header length H |
//   header JSON (H bytes, UTF-8) | params float32… | momentum buffers float32… |
//   per BN layer: running mean float64 (C), running var float64 (C) |
//   SHA-256 of everything before (32 bytes)

import { createHash } from "node:crypto";
import { readdirSync, unlinkSync } from "node:fs";
import { reasonOf, writeFileAtomic } from "./atomic-file.js";
import { MAX_MODEL_FILE_BYTES, readInputFile } from "./input-file.js";
import { basename, dirname, join } from "node:path";
import { ErrorCode, SyncbnError } from "../shared/errors.js";

const MAGIC = "SYNCBNCK";
export const CHECKPOINT_VERSION = 1;
/** Largest step a checkpoint header may hold (2^31 − 1); anything above is a crafted or corrupt file. */
export const MAX_CHECKPOINT_STEP = 2 ** 31 - 1;

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
  /** Workers of the run that wrote it (absent in checkpoints of older syncbn). */
  workers?: number;
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
  if (16 + hlen > body.length) bad(`header length ${hlen} runs past the end of the file`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(buf.subarray(16, 16 + hlen).toString("utf8"));
  } catch {
    return bad("unreadable header");
  }
  const problem = headerProblem(parsed);
  if (problem) bad(`bad header: ${problem}`);
  const header = parsed as CheckpointHeader;
  // Sizes are checked before anything is allocated: a header cannot make us allocate more than the file holds.
  const floats32 = header.params.reduce((a, p) => a + p.length, 0) + header.momentumBuffers.reduce((a, n) => a + n, 0);
  const floats64 = header.bn.reduce((a, b) => a + 2 * b.channels, 0);
  const payload = body.length - 16 - hlen;
  if (4 * floats32 + 8 * floats64 !== payload) bad(`the header describes ${4 * floats32 + 8 * floats64} payload bytes, the file holds ${payload}`);
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
  // A valid checksum proves only that the bytes are the writer's: a crafted or diverged file can still hold NaN or a negative variance.
  const valueProblem = (name: string, a: Float32Array | Float64Array, isVariance: boolean): void => {
    for (let i = 0; i < a.length; i++) {
      const v = a[i]!;
      if (!Number.isFinite(Math.fround(v))) bad(`${name}[${i}] is ${v}${Number.isFinite(v) ? ", which overflows float32" : ""}`);
      if (isVariance && v < 0) bad(`${name}[${i}] is ${v}: a running variance must be ≥ 0`);
    }
  };
  params.forEach((p, i) => valueProblem(header.params[i]!.name, p, false));
  momentum.forEach((m, i) => valueProblem(`the momentum buffer of ${header.params[i]!.name}`, m, false));
  bn.forEach((s, i) => {
    valueProblem(`${header.bn[i]!.name}.running_mean`, s.mean, false);
    valueProblem(`${header.bn[i]!.name}.running_var`, s.var, true);
  });
  return { header, params, momentum, bn };
}

const isCount = (v: unknown, max = Number.MAX_SAFE_INTEGER): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= max;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** What is wrong with a parsed header (null: nothing); every field a reader uses is checked for presence and type. */
function headerProblem(h: unknown): string | null {
  if (!isObject(h)) return "not a JSON object";
  if (!isCount(h.step, MAX_CHECKPOINT_STEP)) return `step must be an integer in 0..${MAX_CHECKPOINT_STEP}, got ${JSON.stringify(h.step)}`;
  for (const k of ["model", "norm", "training"]) if (typeof h[k] !== "string") return `${k} must be a string, got ${JSON.stringify(h[k])}`;
  try {
    if (!isObject(JSON.parse(h.training as string))) return "training must hold a JSON object";
  } catch {
    return "training is not JSON";
  }
  if (h.workers !== undefined && !(isCount(h.workers) && h.workers >= 1)) return `workers must be a positive integer, got ${JSON.stringify(h.workers)}`;
  if (!Array.isArray(h.params) || !h.params.every((p) => isObject(p) && typeof p.name === "string" && isCount(p.length))) {
    return "params must be a list of {name, length}";
  }
  if (!Array.isArray(h.momentumBuffers) || !h.momentumBuffers.every((n) => isCount(n))) return "momentumBuffers must be a list of lengths";
  const params = h.params as { length: number }[];
  if (h.momentumBuffers.length !== params.length || h.momentumBuffers.some((n, i) => n !== params[i]!.length)) {
    return "momentumBuffers must hold one buffer per param, of the param's length";
  }
  if (!Array.isArray(h.bn) || !h.bn.every((b) => isObject(b) && typeof b.name === "string" && isCount(b.channels) && isCount(b.tracked))) {
    return "bn must be a list of {name, channels, tracked}";
  }
  return null;
}

/**
 * Write atomically: a reader sees the old file or the complete new one, never a
 * partial one. Every write is checked for its byte count (a short write on a full
 * disk is retried, and fails with the next one); on any failure the temp file is
 * removed and the previous checkpoint is left as it was. midWrite (fault
 * injection in tests) runs after half the bytes.
 */
export function writeCheckpoint(path: string, ck: Checkpoint, midWrite?: () => void): void {
  const bytes = encodeCheckpoint(ck);
  removeStaleTemps(path);
  try {
    writeFileAtomic(path, bytes, midWrite);
  } catch (e) {
    throw new SyncbnError(ErrorCode.Checkpoint, `cannot write checkpoint ${path} (${reasonOf(e)}); the previous checkpoint there, if any, is untouched`);
  }
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
    buf = readInputFile(path, MAX_MODEL_FILE_BYTES);
  } catch (e) {
    throw new SyncbnError(ErrorCode.Checkpoint, `cannot read checkpoint ${path}: ${(e as Error).message}`);
  }
  return decodeCheckpoint(buf, path);
}
