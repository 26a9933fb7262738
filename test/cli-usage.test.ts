// The command line's refusals through the real CLI (`node dist/cli/main.js`): every
// usage error, out-of-range number and data problem is one line on stderr, exit 2,
// before anything starts (no output folder, no run banner). Also --version, --help,
// the flags shared by train and sweep, and the BN defaults each momentum style brings.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer, type AddressInfo } from "node:net";
import { gzipSync } from "node:zlib";
import { Command } from "commander";
import { afterAll, describe, expect, it } from "vitest";
import { addRunFlags, runSettingsFromFlags, type RunFlags } from "../cli/flags.js";
import { gridFromFlags } from "../cli/sweep-flags.js";
import { lrFor, settingsFor } from "../cli/sweep-grid.js";
import { readCheckpoint } from "../worker/checkpoint.js";
import { ROOT, runCli } from "./helpers.js";

const TMP = mkdtempSync(join(tmpdir(), "syncbn-usage-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

/** A real IDX file: big-endian magic and dims, then one byte per value. */
function idx(magic: number, dims: number[], fill: (i: number) => number): Buffer {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head.writeUInt32BE(magic, 0);
  dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
  const n = dims.reduce((a, b) => a * b, 1);
  return Buffer.concat([head, Buffer.from(Array.from({ length: n }, (_, i) => fill(i)))]);
}

/** A folder of the four IDX files with `train` and `test` 28×28 samples. */
function idxFolder(name: string, train: number, test: number): string {
  const dir = join(TMP, name);
  mkdirSync(dir, { recursive: true });
  for (const [prefix, n] of [["train", train], ["t10k", test]] as const) {
    writeFileSync(join(dir, `${prefix}-images-idx3-ubyte.gz`), gzipSync(idx(0x803, [n, 28, 28], (i) => (i * 7) % 256)));
    writeFileSync(join(dir, `${prefix}-labels-idx1-ubyte.gz`), gzipSync(idx(0x801, [n], (i) => i % 10)));
  }
  return dir;
}

let outCount = 0;

/** Runs the CLI with a fresh --out (for the commands that take one) and checks the refusal's shape. */
async function refused(args: string[], re: RegExp, env: NodeJS.ProcessEnv = {}): Promise<void> {
  const out = join(TMP, `out-${outCount++}`);
  const takesOut = ["train", "sweep", "coordinator"].includes(args[0]!);
  const r = await runCli(takesOut ? [...args, "--out", out] : args, { timeoutMs: 60_000, env });
  const what = args.join(" ");
  expect(r.code, `${what}: ${r.stderr}`).toBe(2);
  const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
  expect(lines, what).toHaveLength(1);
  expect(lines[0], what).toMatch(/^syncbn: SYNCBN_ERR_[A-Z_]+: /);
  expect(lines[0], what).toMatch(re);
  // Nothing started: no banner, no coordinator, no output folder.
  expect(r.stdout, what).toBe("");
  expect(existsSync(out), what).toBe(false);
}

describe("usage errors are one line and exit 2", () => {
  it("refuses what commander cannot parse: bad numbers, unknown flags and commands, bad choices, missing values", async () => {
    await refused(["train", "--workers", "0"], /--workers must be an integer in 1\.\.1024, got "0"; see syncbn train --help/);
    await refused(["train", "--lr", "abc"], /--lr must be a number in \(0, 100\], got "abc"/);
    await refused(["train", "--bogus"], /unknown option '--bogus'; see syncbn train --help/);
    await refused(["train", "--model", "resnet18"], /--model must be mlp, cnn or resnet:N with N in 1\.\.\d+ \(resnet:3 is ResNet-20\), or a PyTorch export PATH\.onnx, got "resnet18"/);
    await refused(["worker", "--rank"], /option '--rank <r>' argument missing; see syncbn worker --help/);
    await refused(["conformance"], /missing required argument 'dir'; see syncbn conformance --help/);
    await refused(["frobnicate"], /unknown command 'frobnicate'; see syncbn --help/);
  }, 120_000);

  it("refuses every number outside its documented range, naming the range", async () => {
    await refused(["train", "--workers", "1e9"], /--workers must be an integer in 1\.\.1024, got "1e9"/);
    await refused(["coordinator", "--world", "2000"], /--workers must be an integer in 1\.\.1024, got "2000"/);
    await refused(["train", "--train-size", "1e9"], /--train-size must be an integer in 1\.\.10000000/);
    await refused(["train", "--train-size", "200000"], /--train-size 200000 is more than synthetic data allows \(100000/);
    await refused(["train", "--round-timeout", "3000000000"], /--round-timeout must be an integer in 100\.\.2147483647/);
    await refused(["train", "--round-timeout", "10"], /--round-timeout must be an integer in 100\.\.2147483647/);
    await refused(["coordinator", "--workers", "2", "--port", "99999"], /--port must be an integer in 0\.\.65535, got "99999"/);
    await refused(["train", "--batch", "100000"], /--batch must be an integer in 1\.\.4096/);
    await refused(["train", "--epochs", "0"], /--epochs must be an integer in 1\.\.10000/);
    await refused(["train", "--steps", "2.5"], /--steps must be an integer in 1\.\.100000000/);
    await refused(["train", "--lr", "-0.1"], /--lr must be a number in \(0, 100\]/);
    await refused(["train", "--lr", "Infinity"], /--lr must be a number in \(0, 100\]/);
    await refused(["train", "--momentum", "1"], /--momentum must be a number in \[0, 1\)/);
    await refused(["train", "--weight-decay", "-1"], /--weight-decay must be a number in \[0, 1\]/);
    await refused(["train", "--bn-eps", "0"], /--bn-eps must be a number in \(0, 1\]/);
    await refused(["train", "--bn-momentum", "1.5"], /--bn-momentum must be a number in \[0, 1\]/);
    await refused(["train", "--seed", "5000000000"], /--seed must be an integer in 0\.\.4294967295/);
    await refused(["train", "--renorm-rmax", "0.5"], /--renorm-rmax must be a number in \[1, 1000\]/);
    await refused(["train", "--renorm-warmup", "150%"], /--renorm-warmup must be steps in 0\.\.100000000 or a percentage/);
    await refused(["sweep", "--batches", "2,0"], /--batches: "0" is not an integer in 1\.\.4096/);
    await refused(["worker", "--rank", "0", "--world", "2", "--coordinator", "ws://127.0.0.1:9", "--connect-timeout", "3000000000"], /--connect-timeout must be an integer in 100\.\.2147483647/);
    await refused(["coordinator"], /the number of workers must be in 1\.\.1024, got 5000 \(from --workers\/--world or WORLD_SIZE\)/, { WORLD_SIZE: "5000" });
  }, 240_000);

  it("checks the data before starting anything: folder, IDX files, their sizes, and one global batch", async () => {
    await refused(["train", "--data", join(TMP, "no-such-folder")], /SYNCBN_ERR_DATA: --data .*no-such-folder: not "synthetic" or "fashion-mnist", and no folder at/);
    const empty = join(TMP, "empty");
    mkdirSync(empty);
    await refused(["train", "--data", empty], /SYNCBN_ERR_DATA: .*empty: no train-(images-idx3|labels-idx1)-ubyte\(\.gz\)/);
    const ok = idxFolder("tiny", 40, 20);
    const truncated = idxFolder("truncated", 40, 20);
    const images = idx(0x803, [40, 28, 28], () => 0);
    writeFileSync(join(truncated, "train-images-idx3-ubyte.gz"), gzipSync(images.subarray(0, images.length - 100)));
    await refused(["train", "--data", truncated], /SYNCBN_ERR_DATA: .*train-images-idx3-ubyte\.gz: truncated: header says 40×28×28 = 31360 bytes of pixels, file has 31260 after gunzip/);
    const wrongMagic = idxFolder("magic", 40, 20);
    writeFileSync(join(wrongMagic, "t10k-labels-idx1-ubyte.gz"), gzipSync(idx(0x803, [20, 28, 28], () => 0)));
    await refused(["train", "--data", wrongMagic], /SYNCBN_ERR_DATA: .*t10k-labels-idx1-ubyte\.gz: bad magic 0x00000803 \(that is an IDX images file\)/);
    await refused(["train", "--data", ok, "--workers", "4", "--batch", "16"], /the training set \(40 samples\) is smaller than one global batch \(4 workers × 16\); lower --batch or --workers/);
    await refused(["train", "--data", ok, "--test-size", "21"], /--test-size 21 is more than the 20 samples .*tiny \(t10k\) has/);
    await refused(["train", "--train-size", "20", "--workers", "4", "--batch", "8"], /the training set \(20 samples\) is smaller than one global batch \(4 workers × 8\)/);
    // A worker started by hand checks its data before it connects (nothing listens on port 9).
    await refused(["worker", "--rank", "0", "--world", "2", "--coordinator", "ws://127.0.0.1:9", "--data", truncated], /SYNCBN_ERR_DATA: .*truncated/);
    await refused(["sweep", "--workers", "2", "--data", ok, "--batches", "2,32", "--norms", "sync", "--train-size", "40"], /the training set \(40 samples\) is smaller than one global batch/);
  }, 180_000);

  it("refuses a --port already in use in one line, exit 2, on either wire", async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const port = (taken.address() as AddressInfo).port;
    try {
      for (const wire of ["ws", "tcp"]) {
        const r = await runCli(["coordinator", "--workers", "2", "--port", String(port), "--wire", wire], { timeoutMs: 60_000 });
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr.split("\n").filter((l) => l.trim() !== "")).toEqual([
          `syncbn: SYNCBN_ERR_BAD_CONFIG: coordinator cannot listen on 127.0.0.1:${port}: listen EADDRINUSE: address already in use 127.0.0.1:${port}`,
        ]);
        expect(r.stdout).toBe("");
      }
    } finally {
      await new Promise((resolve) => taken.close(resolve));
    }
  }, 60_000);

  it("refuses --lr and --base-lr together in sweep, and the old --renorm-warmup-fraction flag by name", async () => {
    await refused(["sweep", "--lr", "0.05", "--base-lr", "0.2"], /--lr \(one rate for every run\) and --base-lr \(scaled with the global batch\) exclude each other/);
    await refused(["sweep", "--renorm-warmup-fraction", "0.5"], /unknown option '--renorm-warmup-fraction'/);
  }, 60_000);
});

describe("version and help", () => {
  it("prints the package version with --version, exit 0", async () => {
    const version = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
    const r = await runCli(["--version"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(version);
  });

  it("shows help with exit 0, listing --world as the other name of --workers", async () => {
    const r = await runCli(["worker", "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/--world, --workers <n>/);
    expect(r.stderr).toBe("");
  });
});

/** Parses flags with the real run-flag definitions, in process. */
function parseRunFlags(args: string[]): RunFlags {
  const cmd = addRunFlags(new Command().exitOverride());
  cmd.parse(args, { from: "user" });
  return cmd.opts<RunFlags>();
}

describe("flags that mean one thing everywhere", () => {
  it("gives --bn-momentum-style keras Keras's defaults (momentum 0.99, eps 1e-3) unless they are given", () => {
    expect(runSettingsFromFlags(parseRunFlags([]))).toMatchObject({ bnMomentumStyle: "torch", bnMomentum: 0.1, bnEps: 1e-5 });
    expect(runSettingsFromFlags(parseRunFlags(["--bn-momentum-style", "keras"]))).toMatchObject({ bnMomentumStyle: "keras", bnMomentum: 0.99, bnEps: 1e-3 });
    expect(runSettingsFromFlags(parseRunFlags(["--bn-momentum-style", "keras", "--bn-momentum", "0.9", "--bn-eps", "1e-5"]))).toMatchObject({ bnMomentum: 0.9, bnEps: 1e-5 });
    expect(runSettingsFromFlags(parseRunFlags(["--bn-momentum-style", "keras", "--bn-momentum", "null"]))).toMatchObject({ bnMomentum: null, bnEps: 1e-3 });
  });

  it("gives sweep the same BN, renorm and eval flags as train, and --lr as the rate itself", () => {
    const flags = {
      ...parseRunFlags(["--bn-momentum-style", "keras", "--renorm-rmax", "2", "--eval-stats", "precise", "--renorm-warmup", "40"]),
      workers: 4,
      batches: [2, 8],
      norms: ["renorm"],
      seeds: [1],
      baseLr: 0.1,
      lrRefBatch: 256,
      out: "unused",
      transport: "process" as const,
      wire: "ws" as const,
      pinCpus: "auto" as const,
    };
    const scaled = gridFromFlags(flags);
    const s = settingsFor(scaled, "renorm", 8, 1);
    expect(s).toMatchObject({ bnMomentumStyle: "keras", bnMomentum: 0.99, bnEps: 1e-3, renormRMax: 2, evalStats: "precise", renormWarmup: 40 });
    expect(lrFor(scaled, 8)).toBeCloseTo((0.1 * 32) / 256, 12);
    const fixed = gridFromFlags({ ...flags, lr: 0.05 });
    expect([lrFor(fixed, 2), lrFor(fixed, 8)]).toEqual([0.05, 0.05]);
  });

  it("runs a sweep with train's flags: --lr fixed for every run, --renorm-warmup in steps, --transport thread (checked in each run's checkpoint)", async () => {
    const out = join(TMP, "sweep-flags");
    const r = await runCli(
      ["sweep", "--transport", "thread", "--workers", "2", "--batches", "2,4", "--norms", "renorm", "--model", "mlp", "--steps", "3", "--train-size", "64", "--test-size", "16", "--lr", "0.05", "--renorm-warmup", "2", "--out", out],
      { timeoutMs: 120_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/learning rate: fixed, lr = 0\.05 at every batch \(--lr; no scaling\)/);
    for (const b of [2, 4]) {
      const training = JSON.parse(readCheckpoint(join(out, "runs", `renorm-b${b}-s1`, "checkpoint.bin")).header.training) as { lr: number; renormWarmup: number };
      expect(training).toMatchObject({ lr: 0.05, renormWarmup: 2 });
    }
  }, 150_000);

  it("takes --renorm-warmup as a percentage of the run's steps in train, as in sweep (checked in the checkpoint's settings)", async () => {
    const out = join(TMP, "warmup");
    // 64 samples / (2 workers × 4) = 8 steps per epoch, 2 epochs: 25% is 4 steps.
    const r = await runCli(
      ["train", "--transport", "thread", "--workers", "2", "--batch", "4", "--epochs", "2", "--model", "mlp", "--norm", "renorm", "--train-size", "64", "--test-size", "16", "--renorm-warmup", "25%", "--out", out],
      { timeoutMs: 120_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    const training = JSON.parse(readCheckpoint(join(out, "checkpoint.bin")).header.training) as { renormWarmup: number; steps: number | null };
    expect(training.renormWarmup).toBe(4);
  }, 150_000);
});
