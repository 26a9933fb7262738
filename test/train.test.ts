// `syncbn train` end to end with real worker processes: the defining
// equivalence of sync BN, resume, crash handling, outputs.
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { relDiff } from "./compare.js";
import { describe, expect, it } from "vitest";
import { readCheckpoint, type Checkpoint } from "../worker/checkpoint.js";
import { runCli, startCli, waitForOutput } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));


function worstDiff(a: Checkpoint, b: Checkpoint): { name: string; diff: number } {
  let worst = { name: "", diff: 0 };
  a.params.forEach((p, i) => {
    const d = relDiff(p, b.params[i]!);
    if (d > worst.diff) worst = { name: a.header.params[i]!.name, diff: d };
  });
  a.bn.forEach((s, i) => {
    for (const [k, v] of [["runningMean", s.mean], ["runningVar", s.var]] as const) {
      const d = relDiff(v, k === "runningMean" ? b.bn[i]!.mean : b.bn[i]!.var);
      if (d > worst.diff) worst = { name: `${a.header.bn[i]!.name}.${k}`, diff: d };
    }
  });
  return worst;
}

const SMALL = ["--data", "synthetic", "--train-size", "1024", "--test-size", "200", "--seed", "3"];

describe("syncbn train", () => {
  it("gives 4 workers × 8 samples with sync BN the parameters and running stats of 1 worker × 32 after 20 steps", async () => {
    const a = tmp("w4");
    const b = tmp("w1");
    const [ra, rb] = await Promise.all([
      runCli(["train", "--workers", "4", "--batch", "8", "--steps", "20", "--model", "cnn", "--norm", "sync", "--out", a, ...SMALL]),
      runCli(["train", "--workers", "1", "--batch", "32", "--steps", "20", "--model", "cnn", "--norm", "sync", "--out", b, ...SMALL]),
    ]);
    expect(ra.code, ra.stderr).toBe(0);
    expect(rb.code, rb.stderr).toBe(0);
    const ca = readCheckpoint(join(a, "checkpoint.bin"));
    const cb = readCheckpoint(join(b, "checkpoint.bin"));
    expect(ca.header.step).toBe(20);
    const worst = worstDiff(ca, cb);
    expect(worst.diff, `worst tensor ${worst.name}`).toBeLessThan(1e-4);
    // …and it is not trivially equal: local BN on 8-sample slices really differs.
    const c = tmp("w4local");
    const rc = await runCli(["train", "--workers", "4", "--batch", "8", "--steps", "20", "--model", "cnn", "--norm", "local", "--out", c, ...SMALL]);
    expect(rc.code, rc.stderr).toBe(0);
    expect(worstDiff(readCheckpoint(join(c, "checkpoint.bin")), cb).diff).toBeGreaterThan(1e-3);
  });

  it("writes metrics.jsonl and a summary.json with the documented keys", async () => {
    const out = tmp("outputs");
    const r = await runCli(["train", "--workers", "2", "--batch", "8", "--steps", "12", "--model", "mlp", "--eval-every", "6", "--out", out, ...SMALL]);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8"));
    for (const k of ["testAccuracy", "testLoss", "steps", "epochs", "workers", "perWorkerBatch", "msPerStep", "syncWaitMsPerStep", "samplesPerSecond", "wallSeconds"]) {
      expect(typeof summary[k], k).toBe("number");
    }
    expect(summary.norm).toBe("sync");
    expect(summary.testAccuracy).toBeGreaterThanOrEqual(0);
    expect(summary.testAccuracy).toBeLessThanOrEqual(1);
    expect([summary.steps, summary.workers, summary.perWorkerBatch]).toEqual([12, 2, 8]);
    for (const k of ["waitOtherRanksMsPerStep", "roundTripMsPerStep", "startupSeconds", "finalTrainLoss"]) expect(typeof summary[k], k).toBe("number");
    const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    // One numbering: step = steps completed (1-based), epoch 1-based, in step and eval lines alike.
    expect(lines[0]).toMatchObject({ type: "start", step: 0, workers: 2 });
    expect(lines[0].startupSeconds).toBe(summary.startupSeconds);
    const steps = lines.filter((l) => l.type === "step");
    expect(steps.map((l) => l.step)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(steps.every((l) => l.epoch === 1)).toBe(true);
    expect(lines.filter((l) => l.type === "eval").map((l) => [l.step, l.epoch])).toEqual([[6, 1], [12, 1]]);
    // Each eval line follows the line of the step it evaluated.
    expect(lines[lines.findIndex((l) => l.type === "eval") - 1]).toMatchObject({ type: "step", step: 6 });
    // Every step but the last has its time in sync rounds, split into waiting for other ranks and the round trip.
    for (const l of steps.slice(0, -1)) {
      expect(l.syncWaitMs).toBeGreaterThanOrEqual(0);
      expect(l.waitOtherRanksMs).toBeGreaterThanOrEqual(0);
      expect(l.roundTripMs).toBeCloseTo(Math.max(0, l.syncWaitMs - l.waitOtherRanksMs), 6);
    }
    expect(steps[11].syncWaitMs).toBeNull();
    expect(r.stdout).toMatch(/test accuracy \d+\.\d+%/);
    expect(r.stdout).toMatch(/last-batch train loss \d+\.\d+ \(step 12, not smoothed\)/);
    expect(r.stdout).toMatch(/in sync rounds [\d.]+ ms\/step: waiting for other ranks [\d.]+ ms \(.*includes CPU contention when workers share cores\), round trip [\d.]+ ms/);
    expect(r.stdout).toMatch(/step 12\/12 epoch 1\/1 · loss \(avg 12 steps\) \d+\.\d+ .*elapsed, ETA 0:00/);
  });

  it("resumes from a checkpoint and ends bit-identical to an uninterrupted run", async () => {
    const full = tmp("full");
    const part = tmp("part");
    const args = ["--workers", "3", "--batch", "4", "--model", "cnn", "--norm", "sync", ...SMALL];
    const [rf, rp] = await Promise.all([runCli(["train", ...args, "--steps", "14", "--out", full]), runCli(["train", ...args, "--steps", "6", "--out", part])]);
    expect(rf.code, rf.stderr).toBe(0);
    expect(rp.code, rp.stderr).toBe(0);
    const resumed = tmp("resumed");
    const rr = await runCli(["train", ...args, "--steps", "14", "--resume", join(part, "checkpoint.bin"), "--out", resumed]);
    expect(rr.code, rr.stderr).toBe(0);
    expect(rr.stdout).toContain("resuming from");
    const a = readCheckpoint(join(full, "checkpoint.bin"));
    const b = readCheckpoint(join(resumed, "checkpoint.bin"));
    expect(b.header.step).toBe(14);
    a.params.forEach((p, i) => expect(Buffer.from(b.params[i]!.buffer).equals(Buffer.from(p.buffer)), a.header.params[i]!.name).toBe(true));
    a.momentum.forEach((m, i) => expect(Buffer.from(b.momentum[i]!.buffer).equals(Buffer.from(m.buffer))).toBe(true));
    a.bn.forEach((s, i) => {
      expect(Array.from(b.bn[i]!.mean)).toEqual(Array.from(s.mean));
      expect(Array.from(b.bn[i]!.var)).toEqual(Array.from(s.var));
    });
  });

  it("refuses to resume a checkpoint trained with another batch size, saying which flag differs", async () => {
    const out = tmp("ck");
    const r = await runCli(["train", "--workers", "1", "--batch", "4", "--steps", "2", "--model", "mlp", "--out", out, ...SMALL]);
    expect(r.code, r.stderr).toBe(0);
    const r2 = await runCli(["train", "--workers", "1", "--batch", "8", "--steps", "4", "--model", "mlp", "--resume", join(out, "checkpoint.bin"), "--out", tmp("ck2"), ...SMALL]);
    expect(r2.code).not.toBe(0);
    expect(r2.stderr).toMatch(/--batch was 4, now 8/);
  });

  it("stops every worker and exits non-zero within seconds, naming the rank, when one worker is killed", async () => {
    const out = tmp("crash");
    const run = startCli(["train", "--workers", "3", "--batch", "8", "--steps", "100000", "--model", "mlp", "--transport", "process", "--out", out, ...SMALL], { timeoutMs: 60_000 });
    await waitForOutput(run, (o) => /step \d+/.test(o), 30_000);
    const children = execFileSync("ps", ["-o", "pid=,args=", "--ppid", String(run.child.pid)], { encoding: "utf8" })
      .trim()
      .split("\n")
      .map((l) => l.trim().split(/\s+/));
    const victim = children.find((c) => c.join(" ").includes("--rank 1"));
    expect(victim, `children: ${JSON.stringify(children)}`).toBeDefined();
    const t0 = Date.now();
    process.kill(Number(victim![0]), "SIGKILL");
    const r = await run.done;
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(r.code).toBe(1);
    const firstLine = r.stderr.split("\n").find((l) => /worker rank/.test(l));
    expect(firstLine).toMatch(/worker rank 1 was killed by SIGKILL \(step \d+/);
    // No worker survives the launcher.
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    expect(children.map((c) => Number(c[0])).filter(alive)).toEqual([]);
  });

  it("stops cleanly on Ctrl-C (SIGINT) with exit code 130", async () => {
    const run = startCli(["train", "--workers", "2", "--batch", "8", "--steps", "100000", "--model", "mlp", "--out", tmp("int"), ...SMALL], { timeoutMs: 60_000 });
    await waitForOutput(run, (o) => /step \d+/.test(o), 30_000);
    run.child.kill("SIGINT");
    const r = await run.done;
    expect(r.code).toBe(130);
    expect(r.stdout + r.stderr).toMatch(/interrupted/);
  });

  it("rejects bad flags with one line that says what to do", async () => {
    const cases: [string[], RegExp][] = [
      [["--batch", "-3"], /--batch must be an integer in 1..4096, got "-3"/],
      [["--norm", "group:3", "--workers", "4"], /K to divide the number of workers \(4\)/],
      [["--norm", "bogus"], /unknown --norm "bogus"; use one of/],
      [["--data", "/nonexistent/folder"], /no folder at \/nonexistent\/folder/],
    ];
    for (const [flags, re] of cases) {
      const r = await runCli(["train", "--steps", "1", "--out", tmp("bad"), ...flags]);
      expect(r.code, flags.join(" ")).not.toBe(0);
      expect(r.stderr, flags.join(" ")).toMatch(re);
      expect(existsSync(join(tmp("x"), "summary.json"))).toBe(false);
    }
  });
});
