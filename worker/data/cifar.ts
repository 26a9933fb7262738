// Reader for the "binary version" of CIFAR-10 (data_batch_1.bin … data_batch_5.bin,
// test_batch.bin: records of 1 label byte + 3072 pixel bytes) and CIFAR-100
// (train.bin, test.bin: coarse label, fine label, 3072 pixel bytes; the fine label
// is used, 100 classes), pixels 3×32×32 channel-major (R plane, G, B). Checks sizes
// and labels and names the file when anything is off. Not the Python (pickle) version.

import { access, readFile } from "node:fs/promises";
import { join } from "node:path";
import { ErrorCode, SyncbnError } from "../../shared/errors.js";

export const CIFAR_SHAPE: [number, number, number] = [3, 32, 32];
const PIXELS = 3 * 32 * 32;

export type CifarKind = "cifar-10" | "cifar-100";

interface CifarLayout {
  train: string[];
  test: string[];
  /** Label bytes before the pixels; the last one is the label used. */
  labelBytes: number;
  classes: number;
  /**
   * Per-channel mean and std of v/255 over the training split (R, G, B), the values
   * in common use (e.g. torchvision examples, timm): x = (v/255 − mean_c)/std_c.
   */
  mean: [number, number, number];
  std: [number, number, number];
}

export const CIFAR_LAYOUTS: Record<CifarKind, CifarLayout> = {
  "cifar-10": {
    train: [1, 2, 3, 4, 5].map((i) => `data_batch_${i}.bin`),
    test: ["test_batch.bin"],
    labelBytes: 1,
    classes: 10,
    mean: [0.4914, 0.4822, 0.4465],
    std: [0.247, 0.2435, 0.2616],
  },
  "cifar-100": {
    train: ["train.bin"],
    test: ["test.bin"],
    labelBytes: 2,
    classes: 100,
    mean: [0.5071, 0.4865, 0.4409],
    std: [0.2673, 0.2564, 0.2762],
  },
};

export interface CifarSplit {
  pixels: Uint8Array; // (N, 3, 32, 32), raw 0..255
  labels: Uint8Array; // (N), each < classes
  count: number;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** Which CIFAR binary set a folder holds (by its file names), or null: CIFAR-10 if both would match. */
export async function detectCifar(dir: string): Promise<CifarKind | null> {
  for (const kind of ["cifar-10", "cifar-100"] as const) {
    if (await exists(join(dir, CIFAR_LAYOUTS[kind].train[0]!))) return kind;
  }
  return null;
}

/** Parses one file's records into out at sample offset `at`; returns the records it held. */
function parseRecords(bytes: Uint8Array, file: string, l: CifarLayout, kind: CifarKind): { pixels: Uint8Array; labels: Uint8Array } {
  const record = l.labelBytes + PIXELS;
  if (bytes.length === 0 || bytes.length % record !== 0) {
    throw new SyncbnError(
      ErrorCode.Data,
      `${file}: ${bytes.length} bytes is not a whole number of ${kind} records (${record} bytes: ${l.labelBytes === 1 ? "1 label byte" : "coarse and fine label bytes"} + 3072 pixel bytes); ` +
        `the file is truncated or not the binary version (cs.toronto.edu/~kriz/cifar.html)`,
    );
  }
  const n = bytes.length / record;
  const pixels = new Uint8Array(n * PIXELS);
  const labels = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const off = i * record;
    const label = bytes[off + l.labelBytes - 1]!;
    if (label >= l.classes) throw new SyncbnError(ErrorCode.Data, `${file}: record ${i} has label ${label}, outside 0..${l.classes - 1}; not a ${kind} file`);
    labels[i] = label;
    pixels.set(bytes.subarray(off + l.labelBytes, off + record), i * PIXELS);
  }
  return { pixels, labels };
}

/** Reads and concatenates a split's files (every file must be there). */
export async function readCifarSplit(dir: string, kind: CifarKind, split: "train" | "test"): Promise<CifarSplit> {
  const l = CIFAR_LAYOUTS[kind];
  const parts: { pixels: Uint8Array; labels: Uint8Array }[] = [];
  for (const name of l[split]) {
    const file = join(dir, name);
    let bytes: Uint8Array;
    try {
      bytes = await readFile(file);
    } catch (e) {
      const reason = (e as NodeJS.ErrnoException).code ?? String(e);
      throw new SyncbnError(ErrorCode.Data, `${file}: cannot read it (${reason}); a ${kind} folder needs ${[...l.train, ...l.test].join(", ")}`);
    }
    parts.push(parseRecords(bytes, file, l, kind));
  }
  const count = parts.reduce((a, p) => a + p.labels.length, 0);
  const pixels = new Uint8Array(count * PIXELS);
  const labels = new Uint8Array(count);
  let at = 0;
  for (const p of parts) {
    pixels.set(p.pixels, at * PIXELS);
    labels.set(p.labels, at);
    at += p.labels.length;
  }
  return { pixels, labels, count };
}

/**
 * The first `size` samples as float32 (N, 3, 32, 32), per channel (v/255 − mean_c)/std_c.
 * 4 bytes per value: the whole CIFAR-10 training split is 614 MB per worker process.
 */
export function normalizeCifar(split: CifarSplit, size: number, kind: CifarKind): Float32Array {
  const l = CIFAR_LAYOUTS[kind];
  const tables = [0, 1, 2].map((c) => Float32Array.from({ length: 256 }, (_, v) => (v / 255 - l.mean[c]!) / l.std[c]!));
  const out = new Float32Array(size * PIXELS);
  const plane = 32 * 32;
  for (let i = 0; i < out.length; i++) out[i] = tables[((i % PIXELS) / plane) | 0]![split.pixels[i]!]!;
  return out;
}
