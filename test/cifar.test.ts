// The CIFAR-10/100 binary-version reader (worker/data/cifar.ts) on small files the
// tests write in that format: records, labels (CIFAR-100's fine one), per-channel
// normalization, --train-size, refusals of malformed files (one line, exit 2, before
// anything starts), and a short real run on them. The real files are not needed.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CIFAR_LAYOUTS } from "../worker/data/cifar.js";
import { loadDataset, probeDataset } from "../worker/data/dataset.js";
import { runCli } from "./helpers.js";

const TMP = mkdtempSync(join(tmpdir(), "syncbn-cifar-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

const PIXELS = 3072;

/** The pixel byte of sample `s` at flat position p (channel-major 3×32×32). */
const pixel = (s: number, p: number): number => (s * 31 + p * 7) % 256;

/** Records: label bytes (CIFAR-100: coarse, fine) then 3072 pixel bytes; samples numbered from `first`. */
function records(labels: number[][], first: number): Buffer {
  const out: number[] = [];
  labels.forEach((l, i) => {
    out.push(...l);
    for (let p = 0; p < PIXELS; p++) out.push(pixel(first + i, p));
  });
  return Buffer.from(out);
}

/** A CIFAR-10 folder: 5 training files of 2 records each (labels 0..9 in order), a test file of 3. */
function cifar10(name: string): string {
  const dir = join(TMP, name);
  mkdirSync(dir, { recursive: true });
  for (let b = 1; b <= 5; b++) writeFileSync(join(dir, `data_batch_${b}.bin`), records([[2 * (b - 1)], [2 * (b - 1) + 1]], 2 * (b - 1)));
  writeFileSync(join(dir, "test_batch.bin"), records([[3], [1], [4]], 100));
  return dir;
}

/** A CIFAR-100 folder: 6 training records with fine labels up to 99, 2 test records. */
function cifar100(name: string): string {
  const dir = join(TMP, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "train.bin"), records([[0, 99], [19, 42], [3, 7], [4, 0], [5, 55], [6, 13]], 0));
  writeFileSync(join(dir, "test.bin"), records([[1, 98], [2, 5]], 100));
  return dir;
}

describe("CIFAR binary version", () => {
  it("reads CIFAR-10's six files in order, as 3×32×32 samples in 10 classes, normalized per channel", async () => {
    const dir = cifar10("c10");
    const d = await loadDataset(dir, { seed: 1 });
    expect([d.train.count, d.test.count, d.train.classes]).toEqual([10, 3, 10]);
    expect(d.train.sampleShape).toEqual([3, 32, 32]);
    expect([...d.train.labels]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect([...d.test.labels]).toEqual([3, 1, 4]);
    const { mean, std } = CIFAR_LAYOUTS["cifar-10"];
    // Sample 7 (data_batch_4.bin's second), one pixel in each channel plane.
    for (const p of [5, 1024 + 77, 2048 + 1023]) {
      const c = Math.floor(p / 1024);
      expect(d.train.images[7 * PIXELS + p]).toBe(Math.fround((pixel(7, p) / 255 - mean[c]!) / std[c]!));
    }
    expect(d.test.images[2 * PIXELS + 9]).toBe(Math.fround((pixel(102, 9) / 255 - mean[0]!) / std[0]!));
    expect(d.source).toMatch(/cifar-10 \(binary version\).*10 train \/ 3 test/);
    expect(await probeDataset(dir, { seed: 1, trainSize: 4 })).toEqual({ train: 4, test: 3, sampleShape: [3, 32, 32], classes: 10 });
    const some = await loadDataset(dir, { seed: 1, trainSize: 4, testSize: 2 });
    expect([some.train.count, some.train.images.length, some.test.count]).toEqual([4, 4 * PIXELS, 2]);
  });

  it("reads CIFAR-100's train.bin and test.bin with the fine labels, 100 classes, its own channel statistics", async () => {
    const d = await loadDataset(cifar100("c100"), { seed: 1 });
    expect([d.train.count, d.test.count, d.train.classes]).toEqual([6, 2, 100]);
    expect([...d.train.labels]).toEqual([99, 42, 7, 0, 55, 13]);
    expect([...d.test.labels]).toEqual([98, 5]);
    const { mean, std } = CIFAR_LAYOUTS["cifar-100"];
    expect(d.train.images[3 * PIXELS + 2048]).toBe(Math.fround((pixel(3, 2048) / 255 - mean[2]!) / std[2]!));
  });

  it("refuses a file whose size is not a whole number of records, a label out of range, a missing file, naming the file", async () => {
    const cut = cifar10("cut");
    writeFileSync(join(cut, "data_batch_3.bin"), records([[1], [2]], 0).subarray(0, 3073 + 100));
    await expect(loadDataset(cut, { seed: 1 })).rejects.toThrow(/data_batch_3\.bin: 3173 bytes is not a whole number of cifar-10 records \(3073 bytes: 1 label byte \+ 3072 pixel bytes\)/);
    const badLabel = cifar10("label");
    writeFileSync(join(badLabel, "test_batch.bin"), records([[3], [10]], 0));
    await expect(loadDataset(badLabel, { seed: 1 })).rejects.toThrow(/test_batch\.bin: record 1 has label 10, outside 0\.\.9/);
    const badFine = cifar100("fine");
    writeFileSync(join(badFine, "test.bin"), records([[1, 100]], 0));
    await expect(loadDataset(badFine, { seed: 1 })).rejects.toThrow(/test\.bin: record 0 has label 100, outside 0\.\.99/);
    const missing = cifar10("missing");
    unlinkSync(join(missing, "data_batch_5.bin"));
    await expect(loadDataset(missing, { seed: 1 })).rejects.toThrow(/data_batch_5\.bin: cannot read it \(ENOENT\)/);
  });

  it("refuses a malformed file in train and sweep before anything starts: one line, exit 2", async () => {
    const dir = cifar100("cli-cut");
    writeFileSync(join(dir, "train.bin"), Buffer.alloc(3074 * 2 - 1));
    for (const cmd of ["train", "sweep"]) {
      const out = join(TMP, `out-${cmd}`);
      const r = await runCli([cmd, "--data", dir, "--out", out], { timeoutMs: 60_000 });
      expect(r.code, r.stderr).toBe(2);
      const lines = r.stderr.split("\n").filter((l) => l.trim());
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^syncbn: SYNCBN_ERR_DATA: .*train\.bin: 6147 bytes is not a whole number of cifar-100 records \(3074 bytes: coarse and fine label bytes \+ 3072 pixel bytes\)/);
      expect(existsSync(out)).toBe(false);
    }
  }, 120_000);

  it("trains the cnn on CIFAR-10 files with crop-flip augmentation, and resumes from its checkpoint", async () => {
    const dir = cifar10("run");
    const out = join(TMP, "run-out");
    const args = ["train", "--transport", "thread", "--data", dir, "--model", "cnn", "--workers", "2", "--batch", "2", "--augment", "crop-flip", "--out", out];
    const r = await runCli([...args, "--steps", "2"], { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    const again = await runCli([...args, "--steps", "3", "--resume", join(out, "checkpoint.bin")], { timeoutMs: 120_000 });
    expect(again.code, again.stderr).toBe(0);
  }, 240_000);
});
