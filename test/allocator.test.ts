// cli/main.ts and native/addon.cc TuneAllocator: every syncbn process keeps freed
// memory in glibc's heap for reuse, because each gradient round brings a
// megabyte-sized message, and with glibc's defaults the coordinator's heap was grown
// and trimmed back every step, its pages faulting in anew (docs/performance.md,
// "What made it fast"). Real runs of the CLI, counting the
// page faults of the whole process tree (the launcher with its coordinator and the
// worker processes, read from a parent's cumulative child counters); with
// SYNCBN_MALLOC=default glibc keeps its own settings, and anything else is refused.
// Skipped only with SYNCBN_NATIVE=off (a machine without the addon: nothing to tune).
// What is asserted is the steady state of a tuned run: the faults of a long run less
// those of a short one, so start-up (about 55,000 faults, and what moves most under
// load) cancels. glibc's defaults are only reported: they sometimes settle too (its
// mmap threshold adapts), sometimes fault in 300+ pages a step, from run to run
// (74,461 and 202,331 faults for two 450-step runs, 7 Dec 2026).

import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CLI, ROOT, runCli } from "./helpers.js";

const tmp = mkdtempSync(join(tmpdir(), "syncbn-malloc-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/**
 * Minor page faults of a `steps`-step mlp run, 1 worker process × 128 (a 0.9 MB gradient
 * round each step), over the whole process tree: a parent process runs the CLI to
 * its end and reads its own cminflt (/proc/self/stat field 11: faults of waited-for
 * descendants; the CLI waits for its workers, so theirs are in it).
 */
function runFaults(env: NodeJS.ProcessEnv, steps: number): { faults: number; status: number | null; stderr: string } {
  const out = mkdtempSync(join(tmp, "run-"));
  const args = [CLI, "train", "--model", "mlp", "--workers", "1", "--batch", "128", "--transport", "process", "--steps", String(steps), "--eval-every", "0", "--out", out];
  const parent = `
    const r = require("node:child_process").spawnSync(process.execPath, ${JSON.stringify(args)}, { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
    const stat = require("node:fs").readFileSync("/proc/self/stat", "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    console.log(JSON.stringify({ faults: Number(fields[8]), status: r.status, stderr: r.stderr }));`;
  const r = spawnSync(process.execPath, ["-e", parent], { cwd: ROOT, env: { ...process.env, CI: "true", SYNCBN_MALLOC: undefined, ...env }, encoding: "utf8", timeout: 120_000 });
  return JSON.parse(r.stdout) as { faults: number; status: number | null; stderr: string };
}

/** Faults per step of the steady state: a 450-step run's faults less a 50-step run's, over 400 steps. */
function faultsPerStep(env: NodeJS.ProcessEnv): number {
  const [short, long] = [runFaults(env, 50), runFaults(env, 450)];
  for (const r of [short, long]) expect(r.status, r.stderr).toBe(0);
  expect(short.faults, "the tree's faults were counted").toBeGreaterThan(10_000);
  return (long.faults - short.faults) / 400;
}

/** Pages of one 0.94 MB gradient-sized buffer: what a step costs if one such buffer is fresh memory each step. */
const GRADIENT_PAGES = Math.ceil((235_146 * 4) / 4096);

describe.skipIf(process.env.SYNCBN_NATIVE === "off")("the allocator of syncbn's processes", () => {
  it("faults in fewer pages a step than one fresh gradient-sized buffer, in the steady state", () => {
    const ours = faultsPerStep({});
    const glibc = faultsPerStep({ SYNCBN_MALLOC: "default" });
    console.log(`minor page faults per step of a mlp 1 × 128 run on a worker process, steps 51–450: ${ours.toFixed(0)} tuned, ${glibc.toFixed(0)} with SYNCBN_MALLOC=default (one fresh 0.94 MB buffer: ${GRADIENT_PAGES})`);
    expect(ours).toBeLessThan(GRADIENT_PAGES);
  });

  it("refuses a SYNCBN_MALLOC other than default in one line, exit 2", async () => {
    const r = await runCli(["train", "--steps", "1", "--out", join(tmp, "never")], { env: { SYNCBN_MALLOC: "off" } });
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(`syncbn: SYNCBN_ERR_BAD_CONFIG: SYNCBN_MALLOC must be "default" (glibc's malloc settings) or unset, got "off"`);
  });
});
