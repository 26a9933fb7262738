// Several ranks per worker process through a run's life: a checkpoint and resume
// with R > 1 end bit-identical to the uninterrupted run, and a lost process loses
// all its ranks — the run stops naming them, or goes on without them in elastic
// mode. Real `syncbn train` processes; equivalence with R = 1 is in ranks-per-proc.test.ts.

import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "./helpers.js";

const SMALL = ["--data", "synthetic", "--train-size", "1024", "--test-size", "100", "--model", "mlp", "--batch", "4", "--seed", "5", "--pin-cpus", "off"];
const tmp = (name: string): string => mkdtempSync(join(tmpdir(), `syncbn-rpp-${name}-`));

describe("rank blocks through checkpoints and lost processes", () => {
  for (const norm of ["sync", "local"]) {
    it(`resumes a --norm ${norm} run of 2 ranks per process from its checkpoint bit for bit`, async () => {
      // Eval every 5 steps: in local mode it gives every rank rank 0's statistics, as the resumed run starts with them.
      const args = ["--workers", "4", "--ranks-per-proc", "2", "--norm", norm, "--eval-every", "5", "--checkpoint-every", "5", ...SMALL];
      const first = tmp(`first-${norm}`);
      const full = tmp(`full-${norm}`);
      const [a, f] = await Promise.all([
        runCli(["train", ...args, "--steps", "5", "--out", first], { timeoutMs: 120_000 }),
        runCli(["train", ...args, "--steps", "10", "--out", full], { timeoutMs: 120_000 }),
      ]);
      expect(a.code, a.stderr).toBe(0);
      expect(f.code, f.stderr).toBe(0);
      const resumed = tmp(`resumed-${norm}`);
      const r = await runCli(["train", ...args, "--steps", "10", "--resume", join(first, "checkpoint.bin"), "--out", resumed], { timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(0);
      expect(readFileSync(join(resumed, "checkpoint.bin")).equals(readFileSync(join(full, "checkpoint.bin")))).toBe(true);
      expect(readFileSync(join(resumed, "weights.safetensors")).equals(readFileSync(join(full, "weights.safetensors")))).toBe(true);
    }, 300_000);
  }

  it("resumes a checkpoint of 2 ranks per process with 1 rank per process (same ranks)", async () => {
    const args = ["--workers", "4", "--checkpoint-every", "3", ...SMALL];
    const first = tmp("r2");
    const a = await runCli(["train", ...args, "--ranks-per-proc", "2", "--steps", "3", "--out", first], { timeoutMs: 120_000 });
    expect(a.code, a.stderr).toBe(0);
    const r = await runCli(["train", ...args, "--ranks-per-proc", "1", "--steps", "6", "--resume", join(first, "checkpoint.bin"), "--out", tmp("r1")], { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("resuming from");
  }, 300_000);

  it("evaluates with PreciseBN statistics of rank 0's group the same with 2 ranks per process as with 1", async () => {
    const args = ["--workers", "4", "--norm", "group:2", "--eval-stats", "precise", "--precise-batches", "3", ...SMALL];
    const evals = await Promise.all(
      ["1", "2"].map(async (perProc) => {
        const out = tmp(`precise-${perProc}`);
        const r = await runCli(["train", ...args, "--ranks-per-proc", perProc, "--steps", "6", "--out", out], { timeoutMs: 120_000 });
        expect(r.code, r.stderr).toBe(0);
        return JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as { testLoss: number; testAccuracy: number };
      }),
    );
    // The same weights and statistics bit for bit; the block sums the test loss over the
    // union of its ranks' shards, in another order than the coordinator adds ranks: float64 rounding.
    expect(Math.abs(evals[1]!.testLoss - evals[0]!.testLoss)).toBeLessThan(1e-12 * Math.abs(evals[0]!.testLoss));
    expect(evals[1]!.testAccuracy).toBe(evals[0]!.testAccuracy);
  }, 300_000);

  it("stops the run naming every rank of a killed process", async () => {
    const r = await runCli(["train", "--workers", "6", "--ranks-per-proc", "2", "--steps", "400", "--out", tmp("kill"), ...SMALL], {
      env: { SYNCBN_FAULT: "3:4:bwd" },
      timeoutMs: 120_000,
    });
    expect(r.code).toBe(1);
    expect(r.stderr.split("\n")[0]).toBe("syncbn train failed:");
    expect(r.stderr).toMatch(/worker ranks 2\.\.3 was killed by SIGKILL/);
  }, 180_000);

  it("goes on without all the ranks of a lost process with --on-worker-loss continue", async () => {
    const out = tmp("elastic");
    const r = await runCli(["train", "--workers", "6", "--ranks-per-proc", "2", "--steps", "20", "--on-worker-loss", "continue", "--checksum-every", "1", "--out", out, ...SMALL], {
      env: { SYNCBN_FAULT: "2:5:bwd" },
      timeoutMs: 180_000,
    });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/worker rank\(s\) 2, 3 .*; continuing from step 6 with 4 workers/);
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as { steps: number; workersAtEnd: number; workersLost: { rank: number }[] };
    expect(summary.steps).toBe(20);
    expect(summary.workersAtEnd).toBe(4);
    expect(summary.workersLost.map((l) => l.rank).sort()).toEqual([2, 3]);
  }, 240_000);
});
