// cli/gc.ts: every syncbn process runs with V8's incremental marking off, because
// on syncbn's small heaps V8 otherwise ran a full mark-compact every few steps
// (docs/performance.md, "What made it fast"). Real runs of the CLI under
// node --trace-gc, counting the coordinator process's mark-compacts; SYNCBN_GC=v8
// keeps V8's default, and anything else is refused.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CLI, ROOT, runCli } from "./helpers.js";

const tmp = mkdtempSync(join(tmpdir(), "syncbn-gc-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Mark-compacts of the launcher's process (coordinator included) in a 64-rank mlp run of 300 steps on 2 worker processes. */
function markCompacts(env: NodeJS.ProcessEnv): Promise<{ count: number; code: number | null; stderr: string }> {
  const out = mkdtempSync(join(tmp, "run-"));
  const args = ["--trace-gc", CLI, "train", "--model", "mlp", "--workers", "64", "--batch", "2", "--ranks-per-proc", "auto", "--rank-grads", "fused", "--transport", "process",
    "--steps", "300", "--eval-every", "0", "--out", out];
  const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, CI: "true", SYNCBN_GC: undefined, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      // Worker processes run without --trace-gc (their node arguments are syncbn's own), so every line is the launcher's.
      resolve({ count: stdout.split("\n").filter((l) => l.includes("Mark-Compact")).length, code, stderr });
    });
  });
}

describe("the garbage collector of syncbn's processes", () => {
  it("runs the coordinator's process with a handful of full collections where V8's default marks every few steps", async () => {
    const ours = await markCompacts({});
    const v8 = await markCompacts({ SYNCBN_GC: "v8" });
    expect(ours.code, ours.stderr).toBe(0);
    expect(v8.code, v8.stderr).toBe(0);
    console.log(`mark-compacts in the launcher over 300 steps: ${ours.count} (incremental marking off), ${v8.count} (SYNCBN_GC=v8)`);
    expect(ours.count).toBeLessThanOrEqual(10);
    expect(v8.count).toBeGreaterThan(ours.count);
  });

  it("refuses a SYNCBN_GC other than v8 in one line, exit 2", async () => {
    const r = await runCli(["train", "--steps", "1", "--out", join(tmp, "never")], { env: { SYNCBN_GC: "off" } });
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(`syncbn: SYNCBN_ERR_BAD_CONFIG: SYNCBN_GC must be "v8" (V8's default garbage collector) or unset, got "off"`);
  });
});
