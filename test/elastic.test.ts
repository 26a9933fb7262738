// Elastic mode (--on-worker-loss continue) at its edge: every worker SIGKILLed in
// one go must be a failed run, whatever the timing, never "done". Real processes;
// the kill lands at a different moment of a step in each trial.
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { startCli, waitForOutput } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));
const SMALL = ["--data", "synthetic", "--train-size", "1024", "--test-size", "100", "--model", "mlp", "--batch", "8", "--seed", "5"];
const TRIALS = 5;

/** The worker processes the launcher forked (`syncbn worker`). */
function workerPids(launcher: number): string[] {
  const out = execFileSync("pgrep", ["-P", String(launcher), "-f", "main.js worker"], { encoding: "utf8" });
  return out.trim().split(/\s+/).filter(Boolean);
}

describe("elastic mode", () => {
  it(`fails with exit 1 and says so when every worker is SIGKILLed at once (${TRIALS} trials, different moments)`, async () => {
    for (let trial = 0; trial < TRIALS; trial++) {
      const run = startCli(["train", "--workers", "4", "--steps", "100000", "--on-worker-loss", "continue", "--pin-cpus", "off", "--out", tmp("all-lost"), ...SMALL], {
        timeoutMs: 90_000,
      });
      try {
        await waitForOutput(run, (o) => /step 1\/100000/.test(o), 60_000);
        await new Promise((r) => setTimeout(r, 97 * trial));
        const pids = workerPids(run.child.pid!);
        expect(pids).toHaveLength(4);
        execFileSync("kill", ["-KILL", ...pids]);
        const r = await run.done;
        expect(r.code, `trial ${trial}: ${r.stdout}${r.stderr}`).toBe(1);
        expect(r.stdout, `trial ${trial}`).not.toMatch(/^done:/m);
        expect(r.stderr, `trial ${trial}`).toMatch(/^syncbn train failed:\n {2}every worker was lost \(ranks [0-3], [0-3], [0-3], [0-3]\); --on-worker-loss continue needs at least one to finish/);
        expect(r.stderr, `trial ${trial}`).toMatch(/SYNCBN_ERR_WORKER_LOST: .*every worker is gone/);
      } finally {
        run.child.kill("SIGKILL");
      }
    }
  });
});
