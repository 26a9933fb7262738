// Outputs on a full or read-only disk, with real `syncbn` processes on a real tiny
// tmpfs and a read-only mount: the last good checkpoint and the earlier metrics
// survive, and every refusal is one line. Needs root to mount; without it each
// test prints why it is skipped.
import { execFileSync } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, type TestContext } from "vitest";
import { readCheckpoint } from "../worker/checkpoint.js";
import { RunMonitor } from "../cli/monitor.js";
import { runCli, scratchDir, startCli, waitForOutput } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));
// mlp: a 1.85 MB checkpoint
const SMALL = ["--data", "synthetic", "--train-size", "1024", "--test-size", "100", "--model", "mlp", "--batch", "8", "--seed", "5"];

const mounted: string[] = [];
let cannotMount: string | null = null;

/** Mounts a tmpfs (`size=…k` or `ro`) on a fresh folder; null when this machine does not let us. */
function mountTmpfs(options: string): string {
  const dir = tmp("mnt");
  execFileSync("mount", ["-t", "tmpfs", "-o", options, "tmpfs", dir], { stdio: "pipe" });
  mounted.push(dir);
  return dir;
}

function needMount(ctx: TestContext): void {
  if (cannotMount) {
    console.log(`skipped "${ctx.task.name}": cannot mount a tmpfs here (${cannotMount}); run the tests as root`);
    ctx.skip();
  }
}

/** Fills the file system holding `dir` until a write fails with ENOSPC. */
function fillDisk(dir: string): void {
  const fd = openSync(join(dir, "filler"), "w");
  const chunk = Buffer.alloc(4096, 1);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOSPC") throw e;
  } finally {
    closeSync(fd);
  }
}

const noStackTrace = (text: string): void => expect(text).not.toMatch(/^\s+at .+\(.*:\d+:\d+\)$/m);

beforeAll(() => {
  try {
    mountTmpfs("size=64k");
  } catch (e) {
    cannotMount = (e as { stderr?: Buffer }).stderr?.toString().trim() || (e as Error).message;
  }
});

afterAll(() => {
  for (const d of mounted) {
    try {
      execFileSync("umount", ["-l", d], { stdio: "pipe" });
    } catch {
      // already gone
    }
  }
});

describe("a full disk", () => {
  it("keeps the previous checkpoint valid and resumable when the next one does not fit, and fails with SYNCBN_ERR_CHECKPOINT naming the file and ENOSPC", async (ctx) => {
    needMount(ctx);
    // room for one checkpoint and the metrics, not for a second checkpoint beside it
    const disk = mountTmpfs("size=3600k");
    const args = ["--workers", "2", ...SMALL];
    const first = await runCli(["train", ...args, "--steps", "20", "--out", disk], { timeoutMs: 90_000 });
    expect(first.code, first.stderr).toBe(0);
    const file = join(disk, "checkpoint.bin");
    const good = readFileSync(file);
    const metricsBefore = readFileSync(join(disk, "metrics.jsonl"), "utf8");
    const summaryBefore = readFileSync(join(disk, "summary.json"), "utf8");

    const failed = await runCli(["train", ...args, "--steps", "30", "--resume", file, "--out", disk], { timeoutMs: 90_000 });
    expect(failed.code, failed.stdout + failed.stderr).toBe(1);
    expect(failed.stderr).toMatch(new RegExp(`SYNCBN_ERR_CHECKPOINT: cannot write checkpoint ${file} \\(ENOSPC: no space left on device\\)`));
    noStackTrace(failed.stderr);
    // the short temp file never reached the final name, and is gone
    expect(readFileSync(file).equals(good)).toBe(true);
    expect(readdirSync(disk).filter((f) => f.includes(".tmp-"))).toEqual([]);
    // the summary of the good run is untouched, its metrics lines are all still there
    expect(readFileSync(join(disk, "summary.json"), "utf8")).toBe(summaryBefore);
    expect(readFileSync(join(disk, "metrics.jsonl"), "utf8").startsWith(metricsBefore)).toBe(true);

    // elastic mode forgives a lost worker, not a lost result: the writer's failure still fails the run
    const elastic = await runCli(["train", ...args, "--steps", "30", "--on-worker-loss", "continue", "--resume", file, "--out", disk], { timeoutMs: 90_000 });
    expect(elastic.code, elastic.stdout + elastic.stderr).toBe(1);
    expect(elastic.stdout).not.toMatch(/^done:/m);
    expect(elastic.stderr).toMatch(new RegExp(`the final checkpoint was not written: ${file} is at step 20, the run reached step 30`));
    expect(elastic.stderr).toMatch(new RegExp(`SYNCBN_ERR_CHECKPOINT: cannot write checkpoint ${file} \\(ENOSPC: no space left on device\\)`));
    expect(readFileSync(file).equals(good)).toBe(true);

    // and it still resumes to the very parameters of an uninterrupted run
    const [resumed, full] = [tmp("resumed"), tmp("full")];
    const [rr, rf] = await Promise.all([
      runCli(["train", ...args, "--steps", "30", "--resume", file, "--out", resumed], { timeoutMs: 90_000 }),
      runCli(["train", ...args, "--steps", "30", "--out", full], { timeoutMs: 90_000 }),
    ]);
    expect(rr.code, rr.stderr).toBe(0);
    expect(rf.code, rf.stderr).toBe(0);
    const a = readCheckpoint(join(resumed, "checkpoint.bin"));
    const b = readCheckpoint(join(full, "checkpoint.bin"));
    expect(a.header.step).toBe(30);
    b.params.forEach((p, i) => expect(Buffer.from(a.params[i]!.buffer).equals(Buffer.from(p.buffer)), b.header.params[i]!.name).toBe(true));
  });

  it("stops a run whose metrics.jsonl no longer fits with one clear error, exit 1, and leaves the earlier metrics.jsonl and summary.json whole", async (ctx) => {
    needMount(ctx);
    const disk = mountTmpfs("size=256k");
    const metrics = `${JSON.stringify({ type: "step", step: 0, loss: 2.3 })}\n`;
    const summary = `${JSON.stringify({ testAccuracy: 0.5 })}\n`;
    writeFileSync(join(disk, "metrics.jsonl"), metrics);
    writeFileSync(join(disk, "summary.json"), summary);
    fillDisk(disk);
    const r = await runCli(["train", "--workers", "2", ...SMALL, "--steps", "50", "--out", disk], { timeoutMs: 90_000 });
    expect(r.code, r.stdout + r.stderr).toBe(1);
    // The root cause first; the workers may meet the full disk too before they are stopped (their own lines follow).
    expect(r.stderr.trim().split("\n").slice(0, 2)).toEqual(["syncbn train failed:", expect.stringMatching(new RegExp(`^  SYNCBN_ERR_OUTPUT: cannot write ${join(disk, "metrics.jsonl")} \\(ENOSPC: no space left on device\\); the lines written before are kept`))]);
    noStackTrace(r.stderr);
    expect(readFileSync(join(disk, "metrics.jsonl"), "utf8")).toBe(metrics);
    expect(readFileSync(join(disk, "summary.json"), "utf8")).toBe(summary);
    expect(readdirSync(disk).filter((f) => f.includes(".tmp-"))).toEqual([]);
  });

  it("refuses to replace summary.json when the new one does not fit, with SYNCBN_ERR_OUTPUT and ENOSPC, and keeps the old one", (ctx) => {
    needMount(ctx);
    const disk = mountTmpfs("size=64k");
    const old = `${JSON.stringify({ testAccuracy: 0.5 })}\n`;
    writeFileSync(join(disk, "summary.json"), old);
    fillDisk(disk);
    const monitor = new RunMonitor({ worldSize: 2, perWorkerBatch: 8, norm: "sync", model: "mlp", data: "synthetic", outDir: disk, totalSteps: null, stepsPerEpoch: null, startStep: 0, tty: false, print: () => {}, status: () => {} });
    expect(() => monitor.writeSummary(monitor.summary())).toThrow(/SYNCBN_ERR_OUTPUT: cannot write .*summary\.json \(ENOSPC: no space left on device\); the previous summary\.json there, if any, is untouched/);
    expect(readFileSync(join(disk, "summary.json"), "utf8")).toBe(old);
    expect(readdirSync(disk).filter((f) => f.includes(".tmp-"))).toEqual([]);
  });
});

describe("--out that cannot be written", () => {
  for (const wire of ["ws", "tcp"] as const) {
    it(`refuses a read-only --out in one line with exit 2 before anything starts, never hanging (train --wire ${wire})`, async (ctx) => {
      needMount(ctx);
      const ro = mountTmpfs("ro");
      for (const out of [join(ro, "folder"), ro]) {
        const r = await runCli(["train", "--workers", "2", ...SMALL, "--steps", "5", "--wire", wire, "--out", out], { timeoutMs: 30_000 });
        expect(r.signal, "killed at the deadline: it hung").toBeNull();
        expect(r.code, r.stdout + r.stderr).toBe(2);
        expect(r.stderr.trim().split("\n")).toHaveLength(1);
        expect(r.stderr).toMatch(new RegExp(`SYNCBN_ERR_BAD_CONFIG: --out ${out} (cannot be created|is not writable) \\(EROFS: read-only file system\\); choose a writable folder`));
        expect(r.stdout).not.toMatch(/coordinator/);
      }
    });
  }

  it("refuses an --out that is a file in one line with exit 2 (train and coordinator)", async () => {
    const file = join(tmp("outfile"), "a-file");
    writeFileSync(file, "keep me\n");
    const results = await Promise.all([
      runCli(["train", "--workers", "1", ...SMALL, "--steps", "2", "--out", file], { timeoutMs: 30_000 }),
      runCli(["coordinator", "--world", "1", "--port", "0", "--out", file], { timeoutMs: 30_000 }),
    ]);
    for (const r of results) {
      expect(r.code, r.stdout + r.stderr).toBe(2);
      expect(r.stderr.trim()).toBe(`syncbn: SYNCBN_ERR_BAD_CONFIG: --out ${file} is a file, not a folder; choose a writable folder`);
    }
    expect(readFileSync(file, "utf8")).toBe("keep me\n");
  });

  it("refuses a read-only --out of `syncbn coordinator` before it listens, exit 2", async (ctx) => {
    needMount(ctx);
    const ro = mountTmpfs("ro");
    const r = await runCli(["coordinator", "--world", "1", "--port", "0", "--out", join(ro, "run1")], { timeoutMs: 30_000 });
    expect(r.code, r.stdout + r.stderr).toBe(2);
    expect(r.stdout).not.toMatch(/listening/);
    expect(r.stderr).toMatch(/SYNCBN_ERR_BAD_CONFIG: --out .*run1 cannot be created \(EROFS: read-only file system\)/);
  });

  it("refuses a read-only `syncbn sweep --out` in one line with exit 2, as train does, never a stack trace", async (ctx) => {
    needMount(ctx);
    const ro = mountTmpfs("ro");
    const out = join(ro, "sweep");
    const r = await runCli(["sweep", "--workers", "2", "--batches", "2", "--norms", "sync", "--model", "mlp", "--train-size", "64", "--test-size", "16", "--steps", "2", "--out", out], { timeoutMs: 30_000 });
    expect(r.code, r.stdout + r.stderr).toBe(2);
    noStackTrace(r.stderr);
    expect(r.stderr.trim()).toBe(`syncbn: SYNCBN_ERR_BAD_CONFIG: --out ${out} cannot be created (EROFS: read-only file system); choose a writable folder`);
  });

  it("creates a missing `syncbn worker --out` folder at start and writes the final checkpoint there", async () => {
    const out = join(tmp("worker-out"), "not", "yet");
    const coord = startCli(["coordinator", "--world", "1", "--port", "0", "--token", "t"], { timeoutMs: 60_000, cwd: scratchDir("coordinator") });
    try {
      await waitForOutput(coord, (o) => /listening on ws:\/\//.test(o), 15_000);
      const url = /listening on (ws:\/\/\S+)/.exec(coord.stdout())![1]!;
      const w = await runCli(["worker", "--coordinator", url, "--rank", "0", "--world", "1", "--token", "t", "--steps", "3", "--out", out, ...SMALL], { timeoutMs: 60_000 });
      expect(w.code, w.stderr).toBe(0);
      expect(readCheckpoint(join(out, "checkpoint.bin")).header.step).toBe(3);
    } finally {
      coord.child.kill("SIGKILL");
    }
  });

  it("refuses a read-only `syncbn worker --out` at start, exit 2, before it looks for the coordinator", async (ctx) => {
    needMount(ctx);
    const ro = mountTmpfs("ro");
    const r = await runCli(["worker", "--coordinator", "ws://127.0.0.1:9", "--rank", "0", "--world", "1", "--steps", "3", "--out", join(ro, "ck"), ...SMALL], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trim()).toMatch(/^syncbn: SYNCBN_ERR_BAD_CONFIG: --out .*ck cannot be created \(EROFS: read-only file system\); choose a writable folder$/);
    expect(existsSync(join(ro, "ck"))).toBe(false);
  });
});
