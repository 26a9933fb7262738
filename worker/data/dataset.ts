// The data sets a worker trains on: the common Dataset type, loadDataset for
// "synthetic", "fashion-mnist", a folder of IDX files or of CIFAR-10/100's binary
// files (cifar.ts), and gatherBatch to copy a
// mini-batch into preallocated buffers. Not a sampler or shuffler (the training
// loop owns the order), and reads no environment: the caller passes the folders.

import { stat } from "node:fs/promises";
import { basename, resolve } from "node:path";
import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { readIdxSplit, type IdxSplit } from "./idx.js";
import { CIFAR_LAYOUTS, CIFAR_SHAPE, detectCifar, normalizeCifar, readCifarSplit, type CifarKind } from "./cifar.js";
import { SYNTHETIC_DEFAULT_TEST, SYNTHETIC_DEFAULT_TRAIN, generateSynthetic } from "./synthetic.js";

export interface Dataset {
  /** e.g. "synthetic/train", "fashion-mnist/test". */
  name: string;
  images: Float32Array; // (N, C, H, W), normalized (see loadDataset)
  labels: Uint8Array; // (N), each < classes
  count: number; // N
  /** (C, H, W) of one sample: synthetic 1×28×28, an IDX folder what its header says. */
  sampleShape: [number, number, number];
  classes: number;
}

export interface LoadedData {
  train: Dataset;
  test: Dataset;
  /** One line for logs: what was loaded from where. */
  source: string;
}

export interface LoadOptions {
  seed: number;
  /** Use only the first trainSize training samples (default: all; synthetic: 12000). */
  trainSize?: number;
  /** Use only the first testSize test samples (default: all; synthetic: 2000). */
  testSize?: number;
  /** Where "fashion-mnist" is looked for; default DEFAULT_FASHION_MNIST_DIR. */
  fashionMnistDir?: string;
}

/** Where Debian's dataset-fashion-mnist package installs the four .gz files. */
export const DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist";
/** The environment variable that overrides DEFAULT_FASHION_MNIST_DIR. */
export const FASHION_MNIST_DIR_ENV = "SYNCBN_FASHION_MNIST_DIR";

/**
 * The Fashion-MNIST folder named by the environment, or undefined. Takes the
 * environment as a parameter: the project reads process.env in one module only,
 * which passes it here.
 */
export function fashionMnistDirFromEnv(env: Readonly<Record<string, string | undefined>>): string | undefined {
  const dir = env[FASHION_MNIST_DIR_ENV];
  return dir !== undefined && dir !== "" ? dir : undefined;
}

// Fashion-MNIST's standard per-pixel mean and std of v/255 over the 60000 training
// images (0.2860, 0.3530): x = (v/255 − mean)/std gives inputs of mean ≈ 0, std ≈ 1.
// The same constants are applied to any IDX folder (MNIST's own would be
// 0.1307/0.3081; the difference is a fixed affine map the first layer absorbs).
export const FASHION_MNIST_MEAN = 0.286;
export const FASHION_MNIST_STD = 0.353;

const CLASSES = 10;

function checkSize(what: string, size: number | undefined, available: number, source: string): number {
  if (size === undefined) return available;
  if (!Number.isInteger(size) || size < 1) {
    throw new SyncbnError(ErrorCode.BadConfig, `${what} must be a positive integer, got ${size}`);
  }
  if (size > available) {
    throw new SyncbnError(ErrorCode.BadConfig, `${what} ${size} is more than the ${available} samples ${source} has; lower ${what} or leave it out`);
  }
  return size;
}

/** The first `size` samples of an IDX split as a normalized Dataset. */
function idxToDataset(split: IdxSplit, size: number, name: string): Dataset {
  const { images, labels } = split;
  const per = images.channels * images.rows * images.cols;
  // 256-entry lookup table: one load per pixel instead of a divide and a multiply.
  const table = new Float32Array(256);
  for (let v = 0; v < 256; v++) table[v] = (v / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD;
  const out = new Float32Array(size * per); // (N, C, H, W)
  const pixels = images.pixels; // (N, C, H, W), 0..255
  for (let i = 0; i < out.length; i++) out[i] = table[pixels[i]!]!;
  return {
    name,
    images: out,
    labels: labels.labels.slice(0, size),
    count: size,
    sampleShape: [images.channels, images.rows, images.cols],
    classes: CLASSES,
  };
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

/** The sizes of a folder's two splits after --train-size/--test-size; both splits must have one image shape. */
function checkSplits(dir: string, trainSplit: IdxSplit, testSplit: IdxSplit, opts: LoadOptions): { train: number; test: number } {
  const shapeOf = (s: IdxSplit): string => `${s.images.channels}×${s.images.rows}×${s.images.cols}`;
  if (shapeOf(trainSplit) !== shapeOf(testSplit)) {
    throw new SyncbnError(
      ErrorCode.Data,
      `${dir}: train images are ${shapeOf(trainSplit)} (${trainSplit.images.file}) but test images are ${shapeOf(testSplit)} (${testSplit.images.file}); both splits must have one shape`,
    );
  }
  return {
    train: checkSize("--train-size", opts.trainSize, trainSplit.images.count, `${dir} (train)`),
    test: checkSize("--test-size", opts.testSize, testSplit.images.count, `${dir} (t10k)`),
  };
}

async function loadIdxFolder(dir: string, label: string, opts: LoadOptions): Promise<LoadedData> {
  const [trainSplit, testSplit] = await Promise.all([readIdxSplit(dir, "train", CLASSES), readIdxSplit(dir, "t10k", CLASSES)]);
  const { train: trainSize, test: testSize } = checkSplits(dir, trainSplit, testSplit, opts);
  const train = idxToDataset(trainSplit, trainSize, `${label}/train`);
  const test = idxToDataset(testSplit, testSize, `${label}/test`);
  return { train, test, source: `${label} from ${dir}: ${trainSize} train / ${testSize} test` };
}

async function readCifarFolder(dir: string, kind: CifarKind, opts: LoadOptions) {
  const [train, test] = await Promise.all([readCifarSplit(dir, kind, "train"), readCifarSplit(dir, kind, "test")]);
  const sizes = {
    train: checkSize("--train-size", opts.trainSize, train.count, `${dir} (${kind} train)`),
    test: checkSize("--test-size", opts.testSize, test.count, `${dir} (${kind} test)`),
  };
  return { train, test, sizes };
}

async function loadCifarFolder(dir: string, kind: CifarKind, opts: LoadOptions): Promise<LoadedData> {
  const { train, test, sizes } = await readCifarFolder(dir, kind, opts);
  const classes = CIFAR_LAYOUTS[kind].classes;
  const dataset = (split: typeof train, size: number, name: string): Dataset => ({
    name: `${kind}/${name}`,
    images: normalizeCifar(split, size, kind),
    labels: split.labels.slice(0, size),
    count: size,
    sampleShape: [...CIFAR_SHAPE],
    classes,
  });
  return {
    train: dataset(train, sizes.train, "train"),
    test: dataset(test, sizes.test, "test"),
    source: `${kind} (binary version) from ${dir}: ${sizes.train} train / ${sizes.test} test`,
  };
}

/** The folder of IDX files a non-synthetic spec names, or a Data error saying what to do. */
async function idxFolderOf(spec: string, opts: LoadOptions): Promise<{ dir: string; label: string }> {
  if (spec === "fashion-mnist") {
    const dir = opts.fashionMnistDir ?? DEFAULT_FASHION_MNIST_DIR;
    if (!(await isDirectory(dir))) {
      throw new SyncbnError(
        ErrorCode.Data,
        `fashion-mnist: no folder at ${dir}` +
          (opts.fashionMnistDir === undefined ? ` (the default; ${FASHION_MNIST_DIR_ENV} overrides it)` : "") +
          `. Install it with "apt-get install dataset-fashion-mnist", or pass --data DIR (a folder with the IDX files), or use --data synthetic`,
      );
    }
    return { dir, label: "fashion-mnist" };
  }
  const dir = resolve(spec);
  if (!(await isDirectory(dir))) {
    throw new SyncbnError(
      ErrorCode.Data,
      `--data ${spec}: not "synthetic" or "fashion-mnist", and no folder at ${dir}. ` +
        `Pass a folder with train-images-idx3-ubyte(.gz) and the other three IDX files, or with CIFAR-10's or CIFAR-100's binary files, ` +
        `"fashion-mnist" (apt-get install dataset-fashion-mnist), or "synthetic"`,
    );
  }
  return { dir, label: basename(dir) };
}

/**
 * Loads a data set by spec:
 * - "synthetic": generated from opts.seed (see synthetic.ts), already standardized.
 * - "fashion-mnist": IDX files in opts.fashionMnistDir (default
 *   /usr/share/datasets/fashion-mnist), pixels mapped to (v/255 − 0.2860)/0.3530.
 * - anything else: a folder holding CIFAR-10's binary files (data_batch_1.bin …,
 *   test_batch.bin) or CIFAR-100's (train.bin, test.bin), normalized per channel
 *   (cifar.ts); else the four (Fashion-)MNIST IDX files, same mapping as above;
 *   images of any size, (N, H, W) or (N, C, H, W), as their headers say.
 * trainSize/testSize take the first samples of each split. Missing or malformed
 * data is a SyncbnError(Data) that names the path and what to do.
 */
export async function loadDataset(spec: string, opts: LoadOptions): Promise<LoadedData> {
  if (spec === "synthetic") {
    for (const [what, size] of [["--train-size", opts.trainSize], ["--test-size", opts.testSize]] as const) {
      if (size !== undefined) checkSize(what, size, Number.MAX_SAFE_INTEGER, "synthetic");
    }
    const { train, test } = generateSynthetic(opts);
    return { train, test, source: `synthetic (seed ${opts.seed}): ${train.count} train / ${test.count} test, generated in memory` };
  }
  const { dir, label } = await idxFolderOf(spec, opts);
  const cifar = spec === "fashion-mnist" ? null : await detectCifar(dir);
  if (cifar) return loadCifarFolder(dir, cifar, opts);
  return loadIdxFolder(dir, label, opts);
}

/**
 * What loadDataset(spec, opts) would give, without building it: the sample counts
 * of each split after trainSize/testSize, with every check loadDataset makes
 * (folder, files, IDX headers against byte lengths, labels, image size, sizes).
 * Reads and gunzips the files (~0.3 s for Fashion-MNIST); keeps nothing.
 */
export async function probeDataset(spec: string, opts: LoadOptions): Promise<{ train: number; test: number; sampleShape: [number, number, number]; classes: number }> {
  if (spec === "synthetic") {
    return { train: opts.trainSize ?? SYNTHETIC_DEFAULT_TRAIN, test: opts.testSize ?? SYNTHETIC_DEFAULT_TEST, sampleShape: [1, 28, 28], classes: CLASSES };
  }
  const { dir } = await idxFolderOf(spec, opts);
  const cifar = spec === "fashion-mnist" ? null : await detectCifar(dir);
  if (cifar) {
    const { sizes } = await readCifarFolder(dir, cifar, opts);
    return { ...sizes, sampleShape: [...CIFAR_SHAPE], classes: CIFAR_LAYOUTS[cifar].classes };
  }
  const [trainSplit, testSplit] = await Promise.all([readIdxSplit(dir, "train", CLASSES), readIdxSplit(dir, "t10k", CLASSES)]);
  const sampleShape: [number, number, number] = [trainSplit.images.channels, trainSplit.images.rows, trainSplit.images.cols];
  return { ...checkSplits(dir, trainSplit, testSplit, opts), sampleShape, classes: CLASSES };
}

/**
 * Copies samples indices[from .. from+n) of ds into out (n, C, H, W) and
 * outLabels (n). Allocates nothing; cost n·C·H·W float copies. Misuse (buffers too
 * small, range or index out of bounds) throws a RangeError at once.
 */
export function gatherBatch(
  out: Float32Array, // (≥n, C, H, W)
  outLabels: Uint8Array, // (≥n)
  ds: Dataset,
  indices: ArrayLike<number>, // sample indices into ds, e.g. a shuffled permutation
  from: number,
  n: number,
): void {
  const [c, h, w] = ds.sampleShape;
  const per = c * h * w;
  if (out.length < n * per || outLabels.length < n) {
    throw new RangeError(`gatherBatch: buffers hold ${out.length / per} images / ${outLabels.length} labels, batch needs ${n}`);
  }
  if (from < 0 || from + n > indices.length) {
    throw new RangeError(`gatherBatch: range [${from}, ${from + n}) is outside the ${indices.length} indices`);
  }
  const src = ds.images;
  for (let b = 0; b < n; b++) {
    const idx = indices[from + b]!;
    if (!Number.isInteger(idx) || idx < 0 || idx >= ds.count) {
      throw new RangeError(`gatherBatch: index ${idx} (position ${from + b}) is outside ${ds.name}'s ${ds.count} samples`);
    }
    outLabels[b] = ds.labels[idx]!;
    out.set(src.subarray(idx * per, (idx + 1) * per), b * per); // a block copy (memmove), not an element loop
  }
}
