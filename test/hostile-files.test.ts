// Files that are not what they claim, given to the real CLI: a gzip IDX that
// inflates far past its header, a header over the IDX limit, a symlink to
// /dev/zero, FIFOs for --data, --init and --resume. Each is refused in one line,
// exit 2, before any worker starts, and the launcher's peak RSS (VmHWM, sampled
// while it runs) stays small: nothing is read or inflated past a bound.

import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { gunzipIdx, MAX_IDX_BYTES, readIdxImages } from "../worker/data/idx.js";
import { ROOT, startCli, type CliResult } from "./helpers.js";

const DATA = join(ROOT, "test", "fixtures", "torch", "data");
const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-hostile-${p}-`));
/** Peak RSS allowed to the launcher refusing a file: node itself takes ~100 MiB; one bomb would take gigabytes. */
const MAX_PEAK_MIB = 400;

/** The big-endian IDX header of an images file of count × rows × cols. */
function idxHeader(count: number, rows: number, cols: number): Buffer {
  const h = Buffer.alloc(16);
  [0x00000803, count, rows, cols].forEach((v, i) => h.writeUInt32BE(v, 4 * i));
  return h;
}

/**
 * A gzip file (concatenated members, as gunzip reads them) whose IDX header says
 * 60000 × 28 × 28 but whose stream inflates to that header plus `gib` GiB of zeros:
 * about 1 MB on disk per GiB.
 */
function gzipBomb(gib: number): Buffer {
  const zeros = gzipSync(Buffer.alloc(16 * 2 ** 20), { level: 9 });
  return Buffer.concat([gzipSync(idxHeader(60000, 28, 28)), ...Array.from({ length: 64 * gib }, () => zeros)]);
}

/** A copy of the fixture data folder with `name` replaced by what `put` makes at its path. */
function dataWith(name: string, put: (path: string) => void): string {
  const dir = tmp("data");
  cpSync(DATA, dir, { recursive: true });
  rmSync(join(dir, name), { force: true });
  put(join(dir, name));
  return dir;
}

/** Runs the CLI, sampling its peak RSS (MiB) every 20 ms until it exits. */
async function runMeasured(args: string[]): Promise<CliResult & { peakMiB: number }> {
  const p = startCli(args, { timeoutMs: 60_000 });
  let peakMiB = 0;
  const sample = (): void => {
    try {
      const kb = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${p.child.pid}/status`, "utf8"))?.[1] ?? 0);
      peakMiB = Math.max(peakMiB, kb / 1024);
    } catch {
      // exited between samples
    }
  };
  const timer = setInterval(sample, 20);
  const r = await p.done;
  clearInterval(timer);
  return { ...r, peakMiB };
}

const TRAIN = ["--workers", "2", "--batch", "4", "--steps", "1"];

/** Expects a refusal: exit 2, one stderr line matching `message`, no worker, a small peak RSS. */
function expectRefused(r: CliResult & { peakMiB: number }, message: RegExp): void {
  expect(r.code, r.stderr).toBe(2);
  expect(r.stderr.trim().split("\n"), r.stderr).toHaveLength(1);
  expect(r.stderr).toMatch(message);
  expect(r.stderr).not.toMatch(/rank \d/);
  expect(r.peakMiB, `peak RSS ${r.peakMiB.toFixed(0)} MiB`).toBeLessThan(MAX_PEAK_MIB);
}

describe("IDX data past its bounds", () => {
  it("stops inflating a gzip IDX at the size its header gives (a 1 GiB bomb behind a 60000×28×28 header)", async () => {
    const file = join(tmp("bomb"), "train-images-idx3-ubyte.gz");
    writeFileSync(file, gzipBomb(1));
    await expect(readIdxImages(file)).rejects.toThrow(/wrong length: the header says 47040016 bytes in all, the gzip stream inflates to more \(stopped at \d+\)/);
  });

  it("refuses a header over the 256 MiB limit before inflating anything past it", async () => {
    const raw = gzipSync(Buffer.concat([idxHeader(1_000_000, 28, 28), Buffer.alloc(1024)]));
    await expect(gunzipIdx(raw, "big.gz")).rejects.toThrow(new RegExp(`big\\.gz: header says 1000000×28×28 = 784000000 bytes, over the limit of ${MAX_IDX_BYTES} bytes \\(256 MiB\\) for one IDX file`));
  });

  it("refuses the 1 GiB gzip bomb in `syncbn train --data`: one line, exit 2, launcher peak RSS small", async () => {
    const dir = dataWith("train-images-idx3-ubyte.gz", (p) => writeFileSync(p, gzipBomb(1)));
    const r = await runMeasured(["train", "--data", dir, ...TRAIN, "--out", tmp("out")]);
    expectRefused(r, /SYNCBN_ERR_DATA: .*train-images-idx3-ubyte\.gz: wrong length: the header says 47040016 bytes in all, the gzip stream inflates to more/);
    console.log(`gzip bomb: launcher peak RSS ${r.peakMiB.toFixed(0)} MiB`);
  }, 90_000);

  it("refuses a data file that is a symlink to /dev/zero: one line, exit 2, nothing read", async () => {
    const dir = dataWith("train-images-idx3-ubyte.gz", (p) => symlinkSync("/dev/zero", p));
    const r = await runMeasured(["train", "--data", dir, ...TRAIN, "--out", tmp("out")]);
    expectRefused(r, /SYNCBN_ERR_DATA: .*train-images-idx3-ubyte\.gz: cannot read \(a character device, not a regular file; give a file\)/);
  }, 90_000);

  it("refuses a data file that is a FIFO without blocking on it", async () => {
    const dir = dataWith("train-labels-idx1-ubyte.gz", (p) => execFileSync("mkfifo", [p]));
    const r = await runMeasured(["train", "--data", dir, ...TRAIN, "--out", tmp("out")]);
    expectRefused(r, /SYNCBN_ERR_DATA: .*train-labels-idx1-ubyte\.gz: cannot read \(a FIFO, not a regular file; give a file\)/);
  }, 90_000);
});

describe("--init and --resume files that are not regular files", () => {
  const fifo = (): string => {
    const p = join(tmp("fifo"), "file");
    execFileSync("mkfifo", [p]);
    return p;
  };
  const cases: [string, () => string[], RegExp][] = [
    ["--init /dev/zero", () => ["--init", "/dev/zero"], /SYNCBN_ERR_BAD_CONFIG: --init cannot read \/dev\/zero: a character device, not a regular file; give a file/],
    ["--init naming a FIFO", () => ["--init", fifo()], /SYNCBN_ERR_BAD_CONFIG: --init cannot read .*\/file: a FIFO, not a regular file; give a file/],
    ["--resume /dev/zero", () => ["--resume", "/dev/zero"], /SYNCBN_ERR_CHECKPOINT: cannot read checkpoint \/dev\/zero: a character device, not a regular file; give a file/],
    ["--resume naming a FIFO", () => ["--resume", fifo()], /SYNCBN_ERR_CHECKPOINT: cannot read checkpoint .*\/file: a FIFO, not a regular file; give a file/],
  ];
  for (const [what, flags, message] of cases) {
    it(`refuses ${what} at once: one line, exit 2, launcher peak RSS small`, async () => {
      const r = await runMeasured(["train", "--model", "mlp", "--data", DATA, ...TRAIN, ...flags(), "--out", tmp("out")]);
      expectRefused(r, message);
    }, 90_000);
  }
});
