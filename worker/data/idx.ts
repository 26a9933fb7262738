// Reader for the IDX format of (Fashion-)MNIST: train-images-idx3-ubyte,
// train-labels-idx1-ubyte, t10k-… , each plain or gzipped (detected by the 1f 8b
// magic, not by the name). Checks every header field against the byte length and
// names the file and the problem when anything is off; a gzip stream is inflated
// only as far as its header says (MAX_IDX_BYTES at most). Not a general IDX
// library: unsigned-byte data only (type 0x08), images (N, H, W) or (N, C, H, W)
// of any size, 1-d labels.

import { access } from "node:fs/promises";
import { join } from "node:path";
import { createGunzip } from "node:zlib";
import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { readInputFile } from "../input-file.js";

/** IDX magic = 0x00 0x00 <type> <ndims>; type 0x08 = unsigned byte. */
export const IDX_IMAGES_MAGIC = 0x00000803;
/** Images with a channel axis, (N, C, H, W). */
export const IDX_IMAGES4_MAGIC = 0x00000804;
export const IDX_LABELS_MAGIC = 0x00000801;
const IDX_TYPE_UBYTE = 0x08;
/**
 * The most bytes one IDX file may hold, header included, plain or after gunzip
 * (256 MiB: 5× Fashion-MNIST's 47 MB training images, 1 GiB as float32 in every
 * worker). The file on disk is held to the same bound.
 */
export const MAX_IDX_BYTES = 2 ** 28;

export interface IdxImages {
  file: string;
  count: number;
  /** 1 for a 3-d (N, H, W) file. */
  channels: number;
  rows: number;
  cols: number;
  pixels: Uint8Array; // (count, channels, rows, cols), raw 0..255
}

export interface IdxLabels {
  file: string;
  count: number;
  labels: Uint8Array; // (count)
}

/** One split as found on disk: the images and labels, counts already checked equal. */
export interface IdxSplit {
  images: IdxImages;
  labels: IdxLabels;
}

function dataError(file: string, problem: string): SyncbnError {
  return new SyncbnError(ErrorCode.Data, `${file}: ${problem}`);
}

function hex32(v: number): string {
  return `0x${(v >>> 0).toString(16).padStart(8, "0")}`;
}

/** True for a gzip stream (RFC 1952 magic 1f 8b). */
export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

function gzipError(file: string, reason: string): SyncbnError {
  return dataError(file, `truncated or corrupt gzip (${reason}); the download or copy is probably incomplete: re-install the package or fetch the file again`);
}

/**
 * The IDX bytes of a gzip stream, inflated no further than its header says: once
 * the header's dims are out, the stream is stopped past header + Π dims bytes (or
 * at once past MAX_IDX_BYTES), so a small file cannot inflate to gigabytes. When
 * the first bytes are not an IDX header the partial bytes come back and
 * parseIdx names the bad magic.
 */
export function gunzipIdx(raw: Uint8Array, file: string): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const z = createGunzip();
    const chunks: Buffer[] = [];
    let have = 0;
    let limit = -1; // header + payload bytes, once the header is out
    let settled = false;
    const finish = (err: SyncbnError | null): void => {
      if (settled) return;
      settled = true;
      z.destroy();
      if (err) reject(err);
      else resolve(Buffer.concat(chunks, have));
    };
    z.on("data", (c: Buffer) => {
      if (settled) return;
      chunks.push(c);
      have += c.length;
      if (limit < 0 && have >= 4) {
        const head = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, have);
        const ndims = head[3]!;
        if (head[0] !== 0 || head[1] !== 0 || head[2] !== IDX_TYPE_UBYTE || ndims < 1 || ndims > 4) return finish(null);
        const headerBytes = 4 + 4 * ndims;
        if (have < headerBytes) return;
        const dims = Array.from({ length: ndims }, (_, d) => head.readUInt32BE(4 + 4 * d));
        limit = headerBytes + dims.reduce((a, b) => a * b, 1);
        if (limit > MAX_IDX_BYTES) return finish(overLimit(file, dims));
      }
      if (limit >= 0 && have > limit) {
        finish(dataError(file, `wrong length: the header says ${limit} bytes in all, the gzip stream inflates to more (stopped at ${have}); the file is not what its header says`));
      }
    });
    z.on("end", () => finish(null));
    z.on("error", (e: Error) => finish(gzipError(file, e.message)));
    z.end(raw);
  });
}

function overLimit(file: string, dims: number[]): SyncbnError {
  return dataError(file, `header says ${dims.join("×")} = ${dims.reduce((a, b) => a * b, 1)} bytes, over the limit of ${MAX_IDX_BYTES} bytes (256 MiB) for one IDX file`);
}

/**
 * Parses an IDX header and checks the payload length. Returns dims and the
 * payload (a view into bytes, no copy). `gz` only changes the wording of errors.
 */
function parseIdx(
  bytes: Uint8Array,
  file: string,
  expectedMagic: number,
  what: string,
  gz: boolean,
): { dims: number[]; payload: Uint8Array } {
  const after = gz ? " after gunzip" : "";
  if (bytes.length < 4) {
    throw dataError(file, `truncated: ${bytes.length} bytes${after}, too short for the 4-byte IDX magic`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0, false); // IDX is big-endian throughout
  if (magic !== expectedMagic) {
    const other =
      magic === IDX_LABELS_MAGIC ? " (that is an IDX labels file)" : magic === IDX_IMAGES_MAGIC || magic === IDX_IMAGES4_MAGIC ? " (that is an IDX images file)" : "";
    const typeNote = bytes[0] === 0 && bytes[1] === 0 && bytes[2] !== IDX_TYPE_UBYTE ? `; only unsigned-byte data (type 0x08) is supported` : "";
    throw dataError(file, `bad magic ${hex32(magic)}${other}, expected ${hex32(expectedMagic)} for ${what}${typeNote}`);
  }
  const ndims = expectedMagic & 0xff;
  const headerBytes = 4 + 4 * ndims;
  if (bytes.length < headerBytes) {
    throw dataError(file, `truncated: ${bytes.length} bytes${after}, the header of ${what} alone needs ${headerBytes}`);
  }
  const dims: number[] = [];
  for (let d = 0; d < ndims; d++) dims.push(view.getUint32(4 + 4 * d, false));
  // Product in float64: exact below 2^53, far above any real IDX file.
  const expected = dims.reduce((a, b) => a * b, 1);
  if (headerBytes + expected > MAX_IDX_BYTES) throw overLimit(file, dims);
  const have = bytes.length - headerBytes;
  const shape = dims.length === 1 ? `${dims[0]}` : `${dims.join("×")} = ${expected}`;
  const noun = ndims === 1 ? "labels" : "bytes of pixels";
  if (have < expected) {
    throw dataError(file, `truncated: header says ${shape} ${noun}, file has ${have}${after}`);
  }
  if (have > expected) {
    throw dataError(file, `wrong length: header says ${shape} ${noun}, file has ${have}${after} (${have - expected} extra)`);
  }
  return { dims, payload: bytes.subarray(headerBytes) };
}

/** Parses the IDX bytes (already gunzipped; `gz` only words the errors) of an images file. */
export function parseIdxImages(bytes: Uint8Array, file: string, gz = false): IdxImages {
  // The 4th magic byte is the number of dimensions: 3 (N, H, W) or 4 (N, C, H, W).
  const magic = bytes.length >= 4 && bytes[0] === 0 && bytes[1] === 0 && bytes[2] === IDX_TYPE_UBYTE && bytes[3] === 4 ? IDX_IMAGES4_MAGIC : IDX_IMAGES_MAGIC;
  const { dims, payload } = parseIdx(bytes, file, magic, "an IDX images file", gz);
  const [count, channels, rows, cols] = dims.length === 4 ? (dims as [number, number, number, number]) : [dims[0]!, 1, dims[1]!, dims[2]!];
  if (channels < 1 || rows < 1 || cols < 1) throw dataError(file, `images of ${channels}×${rows}×${cols} pixels: every dimension must be at least 1`);
  return { file, count, channels, rows, cols, pixels: payload };
}

/** Parses the IDX bytes (already gunzipped) of a labels file; every label must be < classes. */
export function parseIdxLabels(bytes: Uint8Array, file: string, classes = 10, gz = false): IdxLabels {
  const { dims, payload } = parseIdx(bytes, file, IDX_LABELS_MAGIC, "an IDX labels file", gz);
  for (let i = 0; i < payload.length; i++) {
    if (payload[i]! >= classes) {
      throw dataError(file, `label ${payload[i]} at index ${i} is not a class 0..${classes - 1}`);
    }
  }
  return { file, count: dims[0]!, labels: payload };
}

/** The IDX bytes of a file, plain or gzipped: a regular file of at most MAX_IDX_BYTES, inflated within the same bound. */
async function readIdxBytes(file: string): Promise<{ bytes: Uint8Array; gz: boolean }> {
  let raw: Uint8Array;
  try {
    raw = readInputFile(file, MAX_IDX_BYTES);
  } catch (e) {
    throw dataError(file, `cannot read (${e instanceof Error ? e.message : String(e)})`);
  }
  const gz = isGzip(raw);
  return { bytes: gz ? await gunzipIdx(raw, file) : raw, gz };
}

export async function readIdxImages(file: string): Promise<IdxImages> {
  const { bytes, gz } = await readIdxBytes(file);
  return parseIdxImages(bytes, file, gz);
}

export async function readIdxLabels(file: string, classes = 10): Promise<IdxLabels> {
  const { bytes, gz } = await readIdxBytes(file);
  return parseIdxLabels(bytes, file, classes, gz);
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

/**
 * The path of `baseName` or `baseName.gz` in dir (the .gz first, as distributed),
 * or a Data error that lists both paths looked at.
 */
export async function findIdxFile(dir: string, baseName: string): Promise<string> {
  const candidates = [join(dir, `${baseName}.gz`), join(dir, baseName)];
  for (const c of candidates) if (await exists(c)) return c;
  throw new SyncbnError(
    ErrorCode.Data,
    `${dir}: no ${baseName}(.gz) (looked for ${candidates.join(" and ")}); an IDX data folder holds ` +
      `train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (gzipped or not)`,
  );
}

/**
 * Reads `<prefix>-images-idx3-ubyte(.gz)` (or, when there is none, `…-idx4-ubyte(.gz)`)
 * and `<prefix>-labels-idx1-ubyte(.gz)` from dir; prefix "train" or "t10k".
 */
export async function readIdxSplit(dir: string, prefix: string, classes = 10): Promise<IdxSplit> {
  const idx4 = `${prefix}-images-idx4-ubyte`;
  const [imagesFile, labelsFile] = await Promise.all([
    findIdxFile(dir, `${prefix}-images-idx3-ubyte`).catch(async (e: unknown) => {
      if (await exists(join(dir, `${idx4}.gz`)) || await exists(join(dir, idx4))) return findIdxFile(dir, idx4);
      throw e;
    }),
    findIdxFile(dir, `${prefix}-labels-idx1-ubyte`),
  ]);
  const [images, labels] = await Promise.all([readIdxImages(imagesFile), readIdxLabels(labelsFile, classes)]);
  if (images.count !== labels.count) {
    throw new SyncbnError(
      ErrorCode.Data,
      `${imagesFile} has ${images.count} images but ${labelsFile} has ${labels.count} labels; the two files of a split must match`,
    );
  }
  return { images, labels };
}
