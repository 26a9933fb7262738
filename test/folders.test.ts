// The --out folder, with real processes: created at once by several processes,
// never created by a run refused before it starts (checkpoint, dashboard port,
// images too small for the model, sweep's own --out), and watched during the run
// (deleted or replaced: the run stops, nothing written into the new one).
// The read-only-disk cases need a mount and live in disk.test.ts.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { ROOT, runCli, startCli, waitForOutput, type CliResult } from "./helpers.js";

const TMP = mkdtempSync(join(tmpdir(), "syncbn-folders-"));
const SMALL = ["--data", "synthetic", "--train-size", "1024", "--test-size", "100", "--model", "mlp", "--batch", "8", "--seed", "5"];

/** A refusal: exit 2, one line naming the error, nothing on stdout (nothing started). */
function expectOneLineRefusal(r: CliResult, re: RegExp): void {
  expect(r.code, r.stdout + r.stderr).toBe(2);
  const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(re);
  expect(r.stdout).toBe("");
}

/** A folder of IDX files (Fashion-MNIST names) holding `count` train and test images of rows×cols pixels. */
function idxFolder(rows: number, cols: number, count = 32): string {
  const dir = mkdtempSync(join(TMP, `idx-${rows}x${cols}-`));
  const idx = (magic: number, dims: number[], data: Uint8Array): Buffer => {
    const head = Buffer.alloc(4 + 4 * dims.length);
    head.writeUInt32BE(magic, 0);
    dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
    return Buffer.concat([head, data]);
  };
  const images = idx(0x803, [count, rows, cols], Uint8Array.from({ length: count * rows * cols }, (_, i) => (i * 7) % 256));
  const labels = idx(0x801, [count], Uint8Array.from({ length: count }, (_, i) => i % 10));
  for (const split of ["train", "t10k"]) {
    writeFileSync(join(dir, `${split}-images-idx3-ubyte`), images);
    writeFileSync(join(dir, `${split}-labels-idx1-ubyte`), labels);
  }
  return dir;
}

describe("creating --out", () => {
  it("succeeds in every one of several processes creating the same new nested folder at the same moment", async () => {
    // Each process waits for the same instant, then runs the check every `syncbn worker` runs on its --out.
    const script = `import { prepareOutDir } from ${JSON.stringify(pathToFileURL(join(ROOT, "dist", "cli", "out-dir.js")).href)};
const [dir, at] = [process.argv[1], Number(process.argv[2])];
while (Date.now() < at) {}
try { prepareOutDir(dir); } catch (e) { console.error(e.message); process.exit(3); }`;
    const failures: string[] = [];
    for (let trial = 0; trial < 12; trial++) {
      // Deep: each level is one more moment where two processes can both find it missing.
      const dir = join(TMP, `race-${trial}`, ...Array.from({ length: 12 }, (_, i) => `level${i}`));
      const at = Date.now() + 600;
      const runs = Array.from(
        { length: 6 },
        () =>
          new Promise<string>((resolve) => {
            const child = spawn(process.execPath, ["--input-type=module", "-e", script, dir, String(at)], { stdio: ["ignore", "ignore", "pipe"] });
            let err = "";
            child.stderr.on("data", (d: Buffer) => (err += d.toString()));
            child.on("exit", (code) => resolve(code === 0 ? "" : `exit ${code}: ${err.trim()}`));
          }),
      );
      failures.push(...(await Promise.all(runs)).filter(Boolean));
      expect(existsSync(dir)).toBe(true);
    }
    expect(failures).toEqual([]);
  }, 120_000);

  it("still refuses a file where a level of the folder should be, in one line", async () => {
    const file = join(TMP, "a-file");
    writeFileSync(file, "not a folder");
    const r = await runCli(["coordinator", "--workers", "1", "--port", "0", "--out", join(file, "run")], { timeoutMs: 30_000 });
    expectOneLineRefusal(r, /SYNCBN_ERR_BAD_CONFIG: --out .*a-file\/run cannot be created \(.*a-file is a file, not a folder\); choose a writable folder/);
  }, 60_000);
});

describe("a run refused before it starts creates no --out folder", () => {
  let checkpoint: string;
  beforeAll(async () => {
    // 16 samples, 1 worker × 8: two steps per epoch, and this checkpoint is at the end of the first epoch.
    const base = join(TMP, "base");
    const r = await runCli(["train", "--workers", "1", "--steps", "2", "--out", base, ...SMALL, "--train-size", "16"], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    checkpoint = join(base, "checkpoint.bin");
  }, 90_000);

  it("refuses a --resume that does not fit, with --steps or --epochs, in the launcher, leaving no folder", async () => {
    const cases: [string[], RegExp][] = [
      [["--steps", "1"], /it is at step 2 and --steps 1 leaves nothing to train; give --steps above 2/],
      [["--steps", "5", "--batch", "4"], /does not fit this run: --batch was 8, now 4/],
      // Known only once the data is read: the launcher reads it before anything starts.
      [["--epochs", "1"], /it is at step 2 and --epochs 1 makes 2 steps of this data: nothing to train; give --steps above 2, or more --epochs/],
    ];
    for (const [i, [flags, re]] of cases.entries()) {
      const out = join(TMP, `resume-refused-${i}`);
      const r = await runCli(["train", "--workers", "1", ...SMALL, "--train-size", "16", ...flags, "--resume", checkpoint, "--out", out], { timeoutMs: 30_000 });
      expectOneLineRefusal(r, re);
      expect(existsSync(out), flags.join(" ")).toBe(false);
    }
  }, 120_000);

  it("refuses a --dashboard port that is taken, leaving no folder", async () => {
    const busy: Server = createServer();
    await new Promise<void>((r) => busy.listen(0, "127.0.0.1", r));
    const port = (busy.address() as AddressInfo).port;
    try {
      const out = join(TMP, "dashboard-busy");
      const r = await runCli(["train", "--workers", "1", ...SMALL, "--steps", "2", "--dashboard", String(port), "--out", out], { timeoutMs: 30_000 });
      expectOneLineRefusal(r, /SYNCBN_ERR_BAD_CONFIG: dashboard cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
      expect(existsSync(out)).toBe(false);
    } finally {
      await new Promise((r) => busy.close(r));
    }
  }, 60_000);

  it("refuses images too small for --model cnn in the launcher, naming the model, the image size and the minimum", async () => {
    const data = idxFolder(2, 2);
    const out = join(TMP, "cnn-2x2");
    const r = await runCli(["train", "--workers", "2", "--data", data, "--model", "cnn", "--batch", "4", "--steps", "2", "--out", out], { timeoutMs: 30_000 });
    expectOneLineRefusal(r, /^syncbn: SYNCBN_ERR_BAD_CONFIG: --model cnn needs images of at least 4×4 pixels \(two 2×2 poolings\), got 1×2×2 \(the images of --data .*idx-2x2-.*\)$/);
    expect(r.stderr).not.toMatch(/refused a hello/);
    expect(existsSync(out)).toBe(false);
  }, 60_000);

  it("refuses a sweep --out that is a file in one line, exit 2, as train does", async () => {
    const file = join(TMP, "sweep-file");
    writeFileSync(file, "not a folder");
    const r = await runCli(["sweep", "--workers", "2", "--batches", "2", "--norms", "sync", "--model", "mlp", "--train-size", "64", "--test-size", "16", "--steps", "2", "--out", file], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trim()).toBe(`syncbn: SYNCBN_ERR_BAD_CONFIG: --out ${file} is a file, not a folder; choose a writable folder`);
  }, 60_000);
});

describe("an --out folder deleted during the run", () => {
  /** Starts a 400-step run, waits for step 20, then does `vanish` to its folder. */
  async function runAndVanish(name: string, vanish: (out: string) => void): Promise<{ out: string; r: CliResult }> {
    const out = join(TMP, name);
    const p = startCli(["train", "--workers", "2", ...SMALL, "--steps", "400", "--out", out], { timeoutMs: 120_000 });
    await waitForOutput(p, (o) => /step 20\/400/.test(o), 60_000);
    vanish(out);
    return { out, r: await p.done };
  }

  it("stops the run with SYNCBN_ERR_OUTPUT naming the folder, exit 1, and writes nothing into a new folder of the same name", async () => {
    // rm -rf and a new folder in its place at once (often with the old inode number): what made metrics.jsonl start mid-run.
    const { out, r } = await runAndVanish("replaced", (dir) => {
      rmSync(dir, { recursive: true });
      mkdirSync(dir);
    });
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`SYNCBN_ERR_OUTPUT: .*${out}.*(deleted or replaced|was deleted during the run)`));
    expect(r.stdout).not.toMatch(/^done:/m);
    expect(existsSync(join(out, "metrics.jsonl")), "a metrics.jsonl begun mid-run").toBe(false);
    expect(existsSync(join(out, "checkpoint.bin"))).toBe(false);
    expect(existsSync(join(out, "summary.json"))).toBe(false);
  }, 150_000);

  it("stops the run with SYNCBN_ERR_OUTPUT naming the folder when it is only deleted, and does not create it again", async () => {
    const { out, r } = await runAndVanish("deleted", (dir) => rmSync(dir, { recursive: true }));
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`SYNCBN_ERR_OUTPUT: .*${out}.*(deleted or replaced|was deleted during the run)`));
    expect(existsSync(out)).toBe(false);
  }, 150_000);
});
