// Real coordinator and worker processes (the multi-host commands, on 127.0.0.1):
// failures are reported fast and by name, intruders are refused.
import { describe, expect, it } from "vitest";
import { scratchDir, startCli, waitForOutput, type RunningCli } from "./helpers.js";

const TRAIN = ["--model", "mlp", "--data", "synthetic", "--train-size", "4000", "--test-size", "200", "--batch", "8", "--steps", "100000", "--checksum-every", "10"];

async function startCoordinator(world: number, token: string, extra: string[] = []): Promise<{ proc: RunningCli; url: string }> {
  const proc = startCli(["coordinator", "--world", String(world), "--port", "0", "--token", token, ...extra], { timeoutMs: 60_000, cwd: scratchDir("coordinator") });
  await waitForOutput(proc, (o) => /listening on ws:\/\/\S+/.test(o), 15_000);
  const url = /listening on (ws:\/\/\S+)/.exec(proc.stdout())![1]!;
  return { proc, url };
}

function startWorker(url: string, rank: number, world: number, token: string, extra: string[] = []): RunningCli {
  return startCli(["worker", "--coordinator", url, "--rank", String(rank), "--world", String(world), "--token", token, ...TRAIN, ...extra], { timeoutMs: 90_000 });
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

  it("logs a worker refused at its hello (different --lr), and the others' deadline error says that rank never joined and why", async () => {
    const { proc: coord, url } = await startCoordinator(3, "tok", ["--round-timeout", "15000"]);
    const good = [0, 1].map((r) => startWorker(url, r, 3, "tok"));
    let odd: RunningCli | null = null;
    try {
      // The run adopts the first hello's settings: let ranks 0 and 1 in first.
      await waitForOutput(coord, (o) => /worker rank 0 joined/.test(o) && /worker rank 1 joined/.test(o), 30_000);
      odd = startWorker(url, 2, 3, "tok", ["--lr", "0.1"]);
      const refused = await odd.done;
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/SYNCBN_ERR_CONVENTIONS: \[rank 2\] training settings differ from the run's: lr: run has 0\.05, worker has 0\.1/);
      // The coordinator logs the refusal at once: rank, address, reason.
      expect(coord.stderr()).toMatch(/refused a hello as rank 2 from 127\.0\.0\.1:\d+: SYNCBN_ERR_CONVENTIONS: \[rank 2\] training settings differ from the run's: lr: run has 0\.05, worker has 0\.1/);
      // At the round deadline, everyone is told why rank 2 is missing.
      const [c, w0, w1] = await Promise.all([coord.done, good[0]!.done, good[1]!.done]);
      for (const r of [c, w0, w1]) {
        expect(r.code).not.toBe(0);
        expect(r.stderr).toMatch(/SYNCBN_ERR_TIMEOUT: \[rank\(s\) 2, step 0, layer 0, phase fwd\] round deadline of 15000 ms passed without a contribution from rank\(s\) 2: rank 2 never joined: refused at hello \(from 127\.0\.0\.1:\d+\): training settings differ from the run's: lr: run has 0\.05, worker has 0\.1/);
        expect(r.stderr).not.toMatch(/frozen, overloaded/);
      }
    } finally {
      for (const p of [coord, ...good, ...(odd ? [odd] : [])]) p.child.kill("SIGKILL");
    }
  }, 120_000);

  it("refuses a lost rank that reconnects in elastic mode (--on-worker-loss continue), telling it and logging it, and the run goes on", async () => {
    const { proc: coord, url } = await startCoordinator(3, "tok", ["--on-worker-loss", "continue"]);
    const workers = [0, 1, 2].map((r) => startWorker(url, r, 3, "tok"));
    let again: RunningCli | null = null;
    try {
      await waitForOutput(coord, (o) => /step \d+/.test(o), 30_000);
      workers[2]!.child.kill("SIGKILL");
      await waitForOutput(coord, (o) => /worker rank\(s\) 2 .*continuing from step \d+ with 2 workers/.test(o), 30_000);
      again = startWorker(url, 2, 3, "tok");
      const r = await again.done;
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/SYNCBN_ERR_WORKER_LOST: \[rank 2\] rank 2 was lost and the run went on without it \(--on-worker-loss continue\); rejoining a run is not supported/);
      expect(coord.stderr()).toMatch(/refused a hello as rank 2 from 127\.0\.0\.1:\d+: SYNCBN_ERR_WORKER_LOST: \[rank 2\] rank 2 was lost .*rejoining a run is not supported/);
      // Not "joined" a second time, and the run is still going with the other two.
      expect(coord.stdout().match(/worker rank 2 joined/g)).toHaveLength(1);
      const stepsSoFar = (coord.stdout().match(/step \d+/g) ?? []).length;
      await waitForOutput(coord, (o) => (o.match(/step \d+/g) ?? []).length > stepsSoFar, 30_000);
      expect(coord.child.exitCode).toBeNull();
      for (const w of [workers[0]!, workers[1]!]) expect(w.child.exitCode).toBeNull();
    } finally {
      for (const p of [coord, ...workers, ...(again ? [again] : [])]) p.child.kill("SIGKILL");
    }
  }, 120_000);
});
