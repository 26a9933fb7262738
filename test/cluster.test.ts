// Real coordinator and worker processes (the multi-host commands, on 127.0.0.1):
// failures are reported fast and by name, intruders are refused.
import { describe, expect, it } from "vitest";
import { startCli, waitForOutput, type RunningCli } from "./helpers.js";

const TRAIN = ["--model", "mlp", "--data", "synthetic", "--train-size", "4000", "--test-size", "200", "--batch", "8", "--steps", "100000", "--checksum-every", "10"];

async function startCoordinator(world: number, token: string, extra: string[] = []): Promise<{ proc: RunningCli; url: string }> {
  const proc = startCli(["coordinator", "--world", String(world), "--port", "0", "--token", token, ...extra], { timeoutMs: 60_000 });
  await waitForOutput(proc, (o) => /listening on ws:\/\/\S+/.test(o), 15_000);
  const url = /listening on (ws:\/\/\S+)/.exec(proc.stdout())![1]!;
  return { proc, url };
}

function startWorker(url: string, rank: number, world: number, token: string): RunningCli {
  return startCli(["worker", "--coordinator", url, "--rank", String(rank), "--world", String(world), "--token", token, ...TRAIN], { timeoutMs: 60_000 });
}

describe("coordinator and workers as separate processes", () => {
  it("makes the other workers and the coordinator fail fast, naming the rank, when one worker is killed", async () => {
    const { proc: coord, url } = await startCoordinator(3, "tok");
    const workers = [0, 1, 2].map((r) => startWorker(url, r, 3, "tok"));
    try {
      await waitForOutput(coord, (o) => /step \d+/.test(o), 30_000);
      const killedAt = Date.now();
      workers[1]!.child.kill("SIGKILL");
      const [c, w0, w2] = await Promise.all([coord.done, workers[0]!.done, workers[2]!.done]);
      const took = Date.now() - killedAt;
      expect(took).toBeLessThan(10_000);
      for (const r of [c, w0, w2]) {
        expect(r.code).not.toBe(0);
        expect(r.stderr).toMatch(/SYNCBN_ERR_WORKER_LOST: \[rank 1, step \d+/);
      }
      expect(c.stderr).toMatch(/worker disconnected/);
    } finally {
      for (const p of [coord, ...workers]) p.child.kill("SIGKILL");
    }
  });

  it("refuses a worker with a wrong token, and one that takes a rank already in use, with their messages", async () => {
    const { proc: coord, url } = await startCoordinator(2, "right-token");
    const good = startWorker(url, 0, 2, "right-token");
    try {
      await waitForOutput(coord, (o) => /worker rank 0 joined/.test(o), 15_000);
      const bad = await startWorker(url, 1, 2, "wrong-token").done;
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/SYNCBN_ERR_TOKEN: \[rank 1\] wrong run token/);
      const dup = await startWorker(url, 0, 2, "right-token").done;
      expect(dup.code).toBe(1);
      expect(dup.stderr).toMatch(/SYNCBN_ERR_DUPLICATE_RANK: \[rank 0\] rank 0 is already taken/);
      // The run itself is unharmed: the coordinator still waits for rank 1.
      expect(coord.child.exitCode).toBeNull();
      // It logged both refusals (rank, address, reason) and nothing else went wrong; no token in its output.
      const log = coord.stderr();
      expect(log).toMatch(/refused a hello as rank 1 from 127\.0\.0\.1:\d+: SYNCBN_ERR_TOKEN: \[rank 1\] wrong run token/);
      expect(log).toMatch(/refused a hello as rank 0 from 127\.0\.0\.1:\d+: SYNCBN_ERR_DUPLICATE_RANK/);
      expect(log.split("\n").filter((l) => l.trim() && !l.startsWith("refused a hello"))).toEqual([]);
      for (const text of [coord.stdout(), log]) for (const t of ["right-token", "wrong-token"]) expect(text).not.toContain(t);
    } finally {
      for (const p of [coord, good]) p.child.kill("SIGKILL");
    }
  });
});
