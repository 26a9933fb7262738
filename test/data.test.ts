// Tests of the data layer: the IDX reader on files this test writes (round trip
// and every malformed case), the environment override, and the real Fashion-MNIST
// when the Debian package is installed. The synthetic set and gatherBatch are in
// synthetic-data.test.ts. Not a training test: no model is involved.

import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import {
  DEFAULT_FASHION_MNIST_DIR,
  FASHION_MNIST_MEAN,
  FASHION_MNIST_STD,
  fashionMnistDirFromEnv,
  gatherBatch,
  loadDataset,
} from "../worker/data/dataset.js";
import { IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, parseIdxImages, readIdxImages, readIdxLabels } from "../worker/data/idx.js";
import { meanStd } from "./compare.js";

const PIXELS = 784;

// ---------------------------------------------------------------- helpers

/** An IDX file: big-endian magic, dims, then the bytes. */
function idxBytes(magic: number, dims: number[], data: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + 4 * dims.length + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, magic, false);
  dims.forEach((d, i) => view.setUint32(4 + 4 * i, d, false));
  out.set(data, 4 + 4 * dims.length);
  return out;
}

/** count images whose pixel j of image i is (i·7 + j) mod 256, and labels i mod 10. */
function fakeSplit(count: number, rows = 28, cols = 28): { images: Uint8Array; labels: Uint8Array } {
  const px = new Uint8Array(count * rows * cols);
  for (let i = 0; i < count; i++) for (let j = 0; j < rows * cols; j++) px[i * rows * cols + j] = (i * 7 + j) % 256;
  const labels = Uint8Array.from({ length: count }, (_, i) => i % 10);
  return { images: idxBytes(IDX_IMAGES_MAGIC, [count, rows, cols], px), labels: idxBytes(IDX_LABELS_MAGIC, [count], labels) };
}

async function writeFolder(
  dir: string,
  files: { trainImages: Uint8Array; trainLabels: Uint8Array; testImages: Uint8Array; testLabels: Uint8Array },
  gz: { images: boolean; labels: boolean },
): Promise<void> {
  const put = (name: string, bytes: Uint8Array, zip: boolean) =>
    writeFile(join(dir, zip ? `${name}.gz` : name), zip ? gzipSync(bytes) : bytes);
  await Promise.all([
    put("train-images-idx3-ubyte", files.trainImages, gz.images),
    put("train-labels-idx1-ubyte", files.trainLabels, gz.labels),
    put("t10k-images-idx3-ubyte", files.testImages, gz.images),
    put("t10k-labels-idx1-ubyte", files.testLabels, gz.labels),
  ]);
}

async function goodFolder(dir: string, gz: { images: boolean; labels: boolean }): Promise<void> {
  const train = fakeSplit(5);
  const test = fakeSplit(3);
  await writeFolder(dir, { trainImages: train.images, trainLabels: train.labels, testImages: test.images, testLabels: test.labels }, gz);
}

/** The SyncbnError a promise rejects with; fails the test if it resolves or throws something else. */
async function dataErrorOf(p: Promise<unknown>): Promise<SyncbnError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SyncbnError);
    const err = e as SyncbnError;
    expect(err.code).toBe(ErrorCode.Data);
    return err;
  }
  throw new Error("expected a SyncbnError, but the call succeeded");
}


describe("IDX files", () => {
  let root = "";
  let n = 0;
  const freshDir = async (): Promise<string> => {
    const d = join(root, `case-${n++}`);
    await mkdir(d);
    return d;
  };
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "syncbn-data-test-"));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  for (const gz of [
    { images: false, labels: false },
    { images: true, labels: true },
    { images: true, labels: false },
  ]) {
    const kind = gz.images && gz.labels ? "gzipped" : !gz.images && !gz.labels ? "plain" : "mixed gzipped and plain";
    it(`reads back ${kind} files written by the test, normalized with the Fashion-MNIST mean and std`, async () => {
      const dir = await freshDir();
      await goodFolder(dir, gz);
      const { train, test, source } = await loadDataset(dir, { seed: 0 });
      expect(train.count).toBe(5);
      expect(test.count).toBe(3);
      expect(Array.from(train.labels)).toEqual([0, 1, 2, 3, 4]);
      expect(train.sampleShape).toEqual([1, 28, 28]);
      expect(source).toContain(dir);
      // pixel j of image i is (i·7 + j) mod 256
      for (const [i, j] of [[0, 0], [0, 255], [2, 100], [4, 783]] as const) {
        const v = (i * 7 + j) % 256;
        expect(train.images[i * PIXELS + j]).toBeCloseTo((v / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD, 6);
      }
    });
  }

  it("takes the first trainSize/testSize samples of a folder and refuses more than it has", async () => {
    const dir = await freshDir();
    await goodFolder(dir, { images: true, labels: true });
    const { train, test } = await loadDataset(dir, { seed: 0, trainSize: 2, testSize: 1 });
    expect(train.count).toBe(2);
    expect(train.images.length).toBe(2 * PIXELS);
    expect(Array.from(train.labels)).toEqual([0, 1]);
    expect(test.count).toBe(1);
    await expect(loadDataset(dir, { seed: 0, trainSize: 6 })).rejects.toThrow(/--train-size 6 is more than the 5 samples/);
  });

  it("reports a truncated images file with its path and the sizes the header promised", async () => {
    const file = join(await freshDir(), "train-images-idx3-ubyte");
    await writeFile(file, fakeSplit(3).images.subarray(0, 16 + 1000));
    const err = await dataErrorOf(readIdxImages(file));
    expect(err.message).toContain(`${file}: truncated: header says 3×28×28 = 2352 bytes of pixels, file has 1000`);
  });

  it("reports a truncated gzipped images file, saying the sizes are after gunzip", async () => {
    const file = join(await freshDir(), "train-images-idx3-ubyte.gz");
    await writeFile(file, gzipSync(fakeSplit(3).images.subarray(0, 16 + 1000)));
    const err = await dataErrorOf(readIdxImages(file));
    expect(err.message).toContain(`${file}: truncated: header says 3×28×28 = 2352 bytes of pixels, file has 1000 after gunzip`);
  });

  it("reports a file longer than its header says", async () => {
    const file = join(await freshDir(), "t10k-labels-idx1-ubyte");
    const good = fakeSplit(4).labels;
    await writeFile(file, Buffer.concat([good, new Uint8Array(3)]));
    const err = await dataErrorOf(readIdxLabels(file));
    expect(err.message).toContain(`${file}: wrong length: header says 4 labels, file has 7 (3 extra)`);
  });

  it("reports a labels file given where images are expected as a bad magic", async () => {
    const file = join(await freshDir(), "train-images-idx3-ubyte");
    await writeFile(file, fakeSplit(3).labels);
    const err = await dataErrorOf(readIdxImages(file));
    expect(err.message).toContain(`${file}: bad magic 0x00000801 (that is an IDX labels file), expected 0x00000803`);
  });

  it("reports a file that is not IDX at all as a bad magic", async () => {
    const file = join(await freshDir(), "train-labels-idx1-ubyte");
    await writeFile(file, new TextEncoder().encode("<html>404 not found</html>"));
    const err = await dataErrorOf(readIdxLabels(file));
    expect(err.message).toContain(`${file}: bad magic 0x3c68746d, expected 0x00000801`);
  });

  it("reports a file too short for a header", async () => {
    const err = (() => {
      try {
        parseIdxImages(new Uint8Array([0, 0, 8, 3, 0, 0]), "tiny");
      } catch (e) {
        return e as SyncbnError;
      }
      throw new Error("expected an error");
    })();
    expect(err.code).toBe(ErrorCode.Data);
    expect(err.message).toContain("tiny: truncated: 6 bytes, the header of an IDX images file alone needs 16");
  });

  it("reports a gzip stream cut short as truncated gzip, naming the file", async () => {
    const file = join(await freshDir(), "train-images-idx3-ubyte.gz");
    const zipped = gzipSync(fakeSplit(3).images);
    await writeFile(file, zipped.subarray(0, Math.floor(zipped.length / 2)));
    const err = await dataErrorOf(readIdxImages(file));
    expect(err.message).toContain(`${file}: truncated or corrupt gzip`);
  });

  it("reports a split whose images and labels counts differ, naming both files", async () => {
    const dir = await freshDir();
    const train = fakeSplit(3);
    const test = fakeSplit(2);
    await writeFolder(dir, { trainImages: train.images, trainLabels: fakeSplit(2).labels, testImages: test.images, testLabels: test.labels }, { images: false, labels: false });
    const err = await dataErrorOf(loadDataset(dir, { seed: 0 }));
    expect(err.message).toContain(
      `${join(dir, "train-images-idx3-ubyte")} has 3 images but ${join(dir, "train-labels-idx1-ubyte")} has 2 labels`,
    );
  });

  it("reports a label outside 0..9 with its index", async () => {
    const file = join(await freshDir(), "train-labels-idx1-ubyte");
    await writeFile(file, idxBytes(IDX_LABELS_MAGIC, [3], new Uint8Array([1, 12, 3])));
    const err = await dataErrorOf(readIdxLabels(file));
    expect(err.message).toContain(`${file}: label 12 at index 1 is not a class 0..9`);
  });

  it("refuses a folder whose train and test images differ in shape, naming both", async () => {
    const dir = await freshDir();
    const train = fakeSplit(2, 32, 32);
    const test = fakeSplit(2);
    await writeFolder(dir, { trainImages: train.images, trainLabels: train.labels, testImages: test.images, testLabels: test.labels }, { images: true, labels: true });
    const err = await dataErrorOf(loadDataset(dir, { seed: 0 }));
    expect(err.message).toContain("train images are 1×32×32");
    expect(err.message).toContain("test images are 1×28×28");
  });

  it("loads 3-d IDX images of any size as (1, H, W), as the header says", async () => {
    const dir = await freshDir();
    const train = fakeSplit(4, 12, 10);
    const test = fakeSplit(3, 12, 10);
    await writeFolder(dir, { trainImages: train.images, trainLabels: train.labels, testImages: test.images, testLabels: test.labels }, { images: false, labels: true });
    const { train: ds, test: ts } = await loadDataset(dir, { seed: 0 });
    expect(ds.sampleShape).toEqual([1, 12, 10]);
    expect(ts.sampleShape).toEqual([1, 12, 10]);
    expect(ds.images.length).toBe(4 * 120);
    // Pixel j of image i is (i·7 + j) mod 256: image 2's pixel 119 ends the buffer's third image.
    expect(ds.images[2 * 120 + 119]).toBeCloseTo(((2 * 7 + 119) % 256 / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD, 5);
    const out = new Float32Array(2 * 120);
    const labels = new Uint8Array(2);
    gatherBatch(out, labels, ds, [3, 1], 0, 2);
    expect(Array.from(out.subarray(0, 120))).toEqual(Array.from(ds.images.subarray(3 * 120, 4 * 120)));
    expect(Array.from(labels)).toEqual([3, 1]);
  });

  it("loads 4-d IDX images (N, C, H, W) from …-idx4-ubyte files as (C, H, W), channel-major like the file", async () => {
    const dir = await freshDir();
    const [c, h, w] = [3, 5, 4];
    const per = c * h * w;
    const split = (count: number): { images: Uint8Array; labels: Uint8Array } => ({
      images: idxBytes(IDX_IMAGES_MAGIC + 1, [count, c, h, w], Uint8Array.from({ length: count * per }, (_, i) => i % 251)),
      labels: idxBytes(IDX_LABELS_MAGIC, [count], Uint8Array.from({ length: count }, (_, i) => (i * 3) % 10)),
    });
    const [train, test] = [split(5), split(2)];
    await writeFile(join(dir, "train-images-idx4-ubyte"), train.images);
    await writeFile(join(dir, "t10k-images-idx4-ubyte.gz"), gzipSync(test.images));
    await writeFile(join(dir, "train-labels-idx1-ubyte"), train.labels);
    await writeFile(join(dir, "t10k-labels-idx1-ubyte"), test.labels);
    const { train: ds, test: ts } = await loadDataset(dir, { seed: 0 });
    expect(ds.sampleShape).toEqual([3, 5, 4]);
    expect(ts.count).toBe(2);
    const at = (i: number, ch: number, y: number, x: number): number => ds.images[i * per + (ch * h + y) * w + x]!;
    expect(at(4, 2, 3, 1)).toBeCloseTo((((4 * per + (2 * h + 3) * w + 1) % 251) / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD, 5);
    expect(Array.from(ds.labels)).toEqual([0, 3, 6, 9, 2]);
  });

  it("reports a missing file with both names it looked for", async () => {
    const dir = await freshDir();
    await goodFolder(dir, { images: true, labels: true });
    await rm(join(dir, "t10k-labels-idx1-ubyte.gz"));
    const err = await dataErrorOf(loadDataset(dir, { seed: 0 }));
    expect(err.message).toContain(join(dir, "t10k-labels-idx1-ubyte.gz"));
    expect(err.message).toContain(join(dir, "t10k-labels-idx1-ubyte"));
  });

  it("reports a missing Fashion-MNIST folder with the path looked at and how to install it", async () => {
    const dir = join(root, "no-such-folder");
    const err = await dataErrorOf(loadDataset("fashion-mnist", { seed: 0, fashionMnistDir: dir }));
    expect(err.message).toContain(`no folder at ${dir}`);
    expect(err.message).toContain("apt-get install dataset-fashion-mnist");
    expect(err.message).toContain("--data DIR");
  });

  it("reports a --data value that is neither a known name nor a folder", async () => {
    const err = await dataErrorOf(loadDataset(join(root, "mnist-typo"), { seed: 0 }));
    expect(err.message).toContain(`no folder at ${join(root, "mnist-typo")}`);
    expect(err.message).toContain('"synthetic"');
  });
});

// ---------------------------------------------------------------- environment

describe("fashionMnistDirFromEnv", () => {
  it("returns SYNCBN_FASHION_MNIST_DIR when set and non-empty, else undefined", () => {
    expect(fashionMnistDirFromEnv({ SYNCBN_FASHION_MNIST_DIR: "/data/fm" })).toBe("/data/fm");
    expect(fashionMnistDirFromEnv({ SYNCBN_FASHION_MNIST_DIR: "" })).toBeUndefined();
    expect(fashionMnistDirFromEnv({})).toBeUndefined();
  });
});

// ---------------------------------------------------------------- real Fashion-MNIST

const realFolderExists = existsSync(DEFAULT_FASHION_MNIST_DIR);
if (!realFolderExists) {
  console.warn(
    `SKIPPING the real Fashion-MNIST test: ${DEFAULT_FASHION_MNIST_DIR} does not exist. ` +
      `Install it with "apt-get install dataset-fashion-mnist" (CI does).`,
  );
}

describe("Fashion-MNIST from the Debian package", () => {
  it.skipIf(!realFolderExists)(
    `loads 60000 train / 10000 test images from ${DEFAULT_FASHION_MNIST_DIR}, first labels 9 and 9, normalized to mean ≈ 0, std ≈ 1`,
    async () => {
      const { train, test, source } = await loadDataset("fashion-mnist", { seed: 0 });
      expect(train.count).toBe(60000);
      expect(test.count).toBe(10000);
      expect(train.images.length).toBe(60000 * PIXELS);
      expect(train.labels[0]).toBe(9); // ankle boot
      expect(test.labels[0]).toBe(9); // ankle boot
      expect(train.name).toBe("fashion-mnist/train");
      expect(source).toContain(DEFAULT_FASHION_MNIST_DIR);
      const counts = new Array<number>(10).fill(0);
      for (const l of train.labels) counts[l]!++;
      expect(counts).toEqual(new Array<number>(10).fill(6000));
      // 0.2860 / 0.3530 are the train set's own mean/std of v/255, so this is ≈ (0, 1).
      const { mean, std } = meanStd(train.images);
      expect(Math.abs(mean)).toBeLessThan(0.005);
      expect(Math.abs(std - 1)).toBeLessThan(0.005);
    },
  );
});
