// Faults with real processes: a worker killed in each phase, a frozen worker, a
// dead coordinator, a crash while a checkpoint is written. Nothing may hang.
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readCheckpoint } from "../worker/checkpoint.js";
import { runCli, scratchDir, startCli, waitForOutput } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));
const SMALL = ["--data", "synthetic", "--train-size", "1024", "--test-size", "100", "--model", "mlp", "--batch", "8", "--seed", "5"];

describe("faults", () => {
  const kills = [["fwd", "ws"], ["bwd", "ws"], ["grad", "ws"], ["fwd", "tcp"]] as const;
  for (const [phase, wire] of kills) {
    it(`stops the run and names rank, step and phase when a worker is SIGKILLed in the ${phase} phase (--wire ${wire})`, async () => {
      const r = await runCli(["train", "--workers", "3", "--steps", "400", "--wire", wire, "--out", tmp(`kill-${phase}-${wire}`), ...SMALL], {
        env: { SYNCBN_FAULT: `1:5:${phase}` },
        timeoutMs: 60_000,
      });
      const exitedAt = Date.now();
      expect(r.code).toBe(1);
      // the victim printed when it died (the launcher shows its last lines): everyone stopped within 5 s of that
      const killedAt = Number(/fault injection: kill at step 5 \w+, t=(\d+)/.exec(r.stderr)?.[1]);
      expect(killedAt).toBeGreaterThan(0);
      expect(exitedAt - killedAt).toBeLessThan(5_000);
      const lines = r.stderr.split("\n");
      expect(lines[0]).toBe("syncbn train failed:");
      expect(lines[1]).toMatch(new RegExp(`worker rank 1 was killed by SIGKILL \\(step 5, phase ${phase}`));
      expect(r.stderr).toMatch(/SYNCBN_ERR_WORKER_LOST: \[rank 1, step 5/);
      // forward meets BN layer 0 first; backward runs in reverse and meets the mlp's last BN (layer 1) first
      if (phase === "fwd") expect(lines[1]).toMatch(/layer 0\)/);
      if (phase === "bwd") expect(lines[1]).toMatch(/layer 1\)/);
    });
  }

  it("fires the round deadline and names the rank when a worker freezes (SIGSTOP)", async () => {
    const r = await runCli(["train", "--workers", "3", "--steps", "400", "--round-timeout", "1500", "--out", tmp("stop"), ...SMALL], {
      env: { SYNCBN_FAULT: "2:4:bwd:stop" },
      timeoutMs: 60_000,
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/worker rank 2 stopped responding \(frozen or overloaded\) and was killed \(step 4, phase bwd, layer 1\)/);
    expect(r.stderr).toMatch(/SYNCBN_ERR_TIMEOUT: \[rank\(s\) 2, step 4, layer 1, phase bwd\] round deadline of 1500 ms passed/);
  });

  it("makes every worker exit non-zero with a clear message when the coordinator is killed", async () => {
    const coord = startCli(["coordinator", "--world", "2", "--port", "0", "--token", "t"], { timeoutMs: 60_000, cwd: scratchDir("coordinator") });
    await waitForOutput(coord, (o) => /listening on ws:\/\//.test(o), 15_000);
    const url = /listening on (ws:\/\/\S+)/.exec(coord.stdout())![1]!;
    const workers = [0, 1].map((rank) =>
      startCli(["worker", "--coordinator", url, "--rank", String(rank), "--world", "2", "--token", "t", "--steps", "100000", ...SMALL], { timeoutMs: 60_000 }),
    );
    try {
      await waitForOutput(coord, (o) => /step \d+/.test(o), 30_000);
      const t0 = Date.now();
      coord.child.kill("SIGKILL");
      const results = await Promise.all(workers.map((w) => w.done));
      expect(Date.now() - t0).toBeLessThan(5_000);
      for (const r of results) {
        expect(r.code).toBe(1);
        expect(r.stderr).toMatch(/SYNCBN_ERR_COORDINATOR_LOST: \[rank \d\] connection to the coordinator at ws:\/\/127\.0\.0\.1:\d+ closed/);
      }
    } finally {
      for (const p of [coord, ...workers]) p.child.kill("SIGKILL");
    }
  });

  it("waits, with --join-timeout, for a worker started after the first round's deadline, and fails at the window's end without it", async () => {
    const start = (join: string) => startCli(["coordinator", "--world", "2", "--port", "0", "--token", "t", "--round-timeout", "1500", "--join-timeout", join], { timeoutMs: 60_000, cwd: scratchDir("join") });
    const worker = (url: string, rank: number) =>
      startCli(["worker", "--coordinator", url, "--rank", String(rank), "--world", "2", "--token", "t", "--steps", "6", "--round-timeout", "1500", ...SMALL], { timeoutMs: 60_000 });
    const coord = start("30000");
    const procs = [coord];
    try {
      await waitForOutput(coord, (o) => /listening on ws:\/\//.test(o), 15_000);
      const url = /listening on (ws:\/\/\S+)/.exec(coord.stdout())![1]!;
      const first = worker(url, 0);
      procs.push(first);
      await waitForOutput(coord, (o) => /worker rank 0 joined/.test(o), 15_000);
      // Past the first round's deadline (1.5 s) and worker 0's own wait for its result (1.5 + 5 s).
      await new Promise((r) => setTimeout(r, 8_000));
      const second = worker(url, 1);
      procs.push(second);
      const [a, b, c] = await Promise.all([first.done, second.done, coord.done]);
      expect(a.code, a.stderr).toBe(0);
      expect(b.code, b.stderr).toBe(0);
      expect(c.code, c.stderr).toBe(0);
    } finally {
      for (const p of procs) p.child.kill("SIGKILL");
    }
    // The window outlasts the first round's deadline unless worker 0 takes over 6.5 s to start.
    const alone = start("8000");
    try {
      await waitForOutput(alone, (o) => /listening on ws:\/\//.test(o), 15_000);
      const only = worker(/listening on (ws:\/\/\S+)/.exec(alone.stdout())![1]!, 0);
      const [w, c] = await Promise.all([only.done, alone.done]);
      expect(w.code).toBe(1);
      expect(c.code).toBe(1);
      expect(c.stderr).toMatch(/SYNCBN_ERR_TIMEOUT: \[rank\(s\) 1, step 0, .*\] the 8000 ms join window passed without a contribution from rank\(s\) 1: rank 1 never joined/);
    } finally {
      alone.child.kill("SIGKILL");
    }
  });

  it("keeps the last good checkpoint when killed mid-write, and resuming from it ends bit-identical", async () => {
    const args = ["--workers", "2", "--checkpoint-every", "4", ...SMALL];
    const crashed = tmp("midwrite");
    const r = await runCli(["train", ...args, "--steps", "12", "--out", crashed], { env: { SYNCBN_FAULT: "0:8:checkpoint" }, timeoutMs: 60_000 });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/worker rank 0 was killed by SIGKILL/);
    // the half-written temp file is there, the checkpoint itself is the one from step 4
    expect(readdirSync(crashed).some((f) => f.startsWith("checkpoint.bin.tmp-"))).toBe(true);
    const good = readCheckpoint(join(crashed, "checkpoint.bin"));
    expect(good.header.step).toBe(4);
    const resumed = tmp("resumed");
    const full = tmp("uninterrupted");
    const [rr, rf] = await Promise.all([
      runCli(["train", ...args, "--steps", "12", "--resume", join(crashed, "checkpoint.bin"), "--out", resumed]),
      runCli(["train", ...args, "--steps", "12", "--out", full]),
    ]);
    expect(rr.code, rr.stderr).toBe(0);
    expect(rf.code, rf.stderr).toBe(0);
    const a = readCheckpoint(join(resumed, "checkpoint.bin"));
    const b = readCheckpoint(join(full, "checkpoint.bin"));
    b.params.forEach((p, i) => expect(Buffer.from(a.params[i]!.buffer).equals(Buffer.from(p.buffer))).toBe(true));
  });

  for (const wire of ["ws", "tcp"] as const) {
    it(`goes on with the remaining workers with --on-worker-loss continue, and reports the loss (--wire ${wire})`, async () => {
      const out = tmp(`elastic-${wire}`);
      const r = await runCli(["train", "--workers", "3", "--steps", "30", "--on-worker-loss", "continue", "--checksum-every", "1", "--wire", wire, "--out", out, ...SMALL], {
        env: { SYNCBN_FAULT: "1:5:bwd" },
        timeoutMs: 90_000,
      });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/worker rank\(s\) 1 disconnected .*; continuing from step 6 with 2 workers/);
      const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8"));
      expect(summary.steps).toBe(30);
      expect(summary.workersAtEnd).toBe(2);
      // the step the log names (counted from 1, the one redone without rank 1), in summary.json and the summary lines alike
      expect(summary.workersLost).toEqual([expect.objectContaining({ rank: 1, step: 6 })]);
      expect(r.stdout).toMatch(/workers lost: rank 1 at step 6 \(disconnected/);
      // every later step had the two survivors' 16 samples, and their replicas stayed identical (checksum every step)
      const steps = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((l) => l.type === "step");
      expect(steps).toHaveLength(30);
      const ck = readCheckpoint(join(out, "checkpoint.bin"));
      expect(ck.params.every((p) => p.every(Number.isFinite))).toBe(true);
    });
  }

  it("drops a frozen worker at the deadline with --on-worker-loss continue", async () => {
    const out = tmp("elastic-stop");
    const r = await runCli(["train", "--workers", "3", "--steps", "20", "--on-worker-loss", "continue", "--round-timeout", "1500", "--out", out, ...SMALL], {
      env: { SYNCBN_FAULT: "2:3:fwd:stop" },
      timeoutMs: 90_000,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/worker rank\(s\) 2 missed the 1500 ms deadline of step 3 fwd layer 0; continuing from step 4 with 2 workers/);
  });

  it("refuses a truncated or corrupted checkpoint with a clear error, and leaves the file alone", async () => {
    const out = tmp("corrupt");
    const r = await runCli(["train", "--workers", "1", "--steps", "2", "--out", out, ...SMALL]);
    expect(r.code, r.stderr).toBe(0);
    const file = join(out, "checkpoint.bin");
    const good = readFileSync(file);
    const truncated = join(out, "truncated.bin");
    writeFileSync(truncated, good.subarray(0, good.length - 100));
    const flipped = join(out, "flipped.bin");
    const bad = Buffer.from(good);
    bad[bad.length >> 1]! ^= 0x10;
    writeFileSync(flipped, bad);
    for (const f of [truncated, flipped]) {
      const rr = await runCli(["train", "--workers", "1", "--steps", "4", "--resume", f, "--out", tmp("corrupt-resume"), ...SMALL]);
      expect(rr.code).not.toBe(0);
      expect(rr.stderr).toContain(`SYNCBN_ERR_CHECKPOINT: ${f}: checksum mismatch: the file is truncated or corrupted`);
    }
    expect(readFileSync(file).equals(good)).toBe(true);
  });

  it("refuses to listen beyond loopback without a token", async () => {
    const r = await runCli(["coordinator", "--world", "2", "--host", "0.0.0.0", "--port", "0"], { env: { SYNCBN_TOKEN: "" } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/refusing to listen on 0\.0\.0\.0 without a token/);
  });
});
