// Several ranks per worker process (--ranks-per-proc): for every norm mode a run
// with its W ranks packed R to a process equals the run with one rank per process
// (first-step statistics bit for bit; after 20 steps every tensor bit for bit with
// the default --rank-grads exact, and with fused as close as float32 rounding allows),
// through real coordinators and real worker processes; W = 256 ranks on 2
// processes; the refusals of bad blocks. Resume and elastic are in ranks-per-proc-runs.test.ts.

import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { relDiff, safetensorsValues } from "./compare.js";
import { FIXTURE_CASES, runCli } from "./helpers.js";

const MODES = ["sync", "local", "ghost:2", "group:2", "renorm", "groupnorm:4", "none"] as const;

/** Trains cnn on W = 4 ranks × B = 4 with R ranks per process (--rank-grads as given; worker processes, not the default threads of so small a step); returns the output folder. */
async function train(norm: string, perProc: number, steps: number, rankGrads: "fused" | "exact" = "exact", env: NodeJS.ProcessEnv = {}): Promise<string> {
  const out = mkdtempSync(join(tmpdir(), `syncbn-rpp-${norm.replace(":", "")}-${perProc}-${rankGrads}-`));
  const r = await runCli(
    [
      "train", "--workers", "4", "--batch", "4", "--model", "cnn", "--norm", norm, "--steps", String(steps), "--seed", "3", "--renorm-warmup", "0",
      "--transport", "process", "--ranks-per-proc", String(perProc), "--rank-grads", rankGrads, "--out", out,
    ],
    { timeoutMs: 240_000, env },
  );
  expect(r.code, r.stdout + r.stderr).toBe(0);
  return out;
}

/** Names of the tensors that differ bit-wise between two runs' weights files. */
function differingTensors(a: string, b: string, only: (name: string) => boolean): string[] {
  const ta = safetensorsValues(join(a, "weights.safetensors"));
  const tb = safetensorsValues(join(b, "weights.safetensors"));
  expect([...ta.keys()]).toEqual([...tb.keys()]);
  return [...ta.keys()].filter((k) => only(k) && ta.get(k)!.values.some((v, i) => !Object.is(v, tb.get(k)!.values[i])));
}

function maxRelDiff(a: string, b: string): { name: string; diff: number } {
  const ta = safetensorsValues(join(a, "weights.safetensors"));
  const tb = safetensorsValues(join(b, "weights.safetensors"));
  let worst = { name: "", diff: 0 };
  for (const [k, v] of ta) {
    const d = relDiff(v.values, tb.get(k)!.values);
    if (d > worst.diff) worst = { name: k, diff: d };
  }
  return worst;
}

describe("several ranks per worker process", () => {
  // A block computes every rank's statistics on its own segment, so the first step's
  // running statistics are bit for bit the same in both --rank-grads modes.
  // exact (the default): every rank's gradients as that rank alone would compute them
  // (float32), summed in float64 in rank order, as the coordinator adds R processes'
  // grads: bit for bit after 20 steps (float64 sums of a few float32 values are exact,
  // whatever their grouping; the runs are deterministic).
  // fused: one GEMM per layer over the block's R·B samples, whose float32 sums group the
  // samples otherwise: 1e-6 after one step; after 20 steps 1e-5, or, in modes whose
  // 2- and 4-sample statistics amplify rounding step after step, no more than 10 times
  // what the run with one rank per process differs from itself under the other kernel
  // backend (SYNCBN_KERNELS=js: the same math, other float32 sums).
  for (const norm of MODES) {
    it(`gives --norm ${norm} the same first-step running statistics bit for bit and the same tensors after 20 steps with 2 ranks per process as with 1`, async () => {
      const [a1, b1, f1] = await Promise.all([train(norm, 1, 1), train(norm, 2, 1), train(norm, 2, 1, "fused")]);
      const isStat = (k: string): boolean => k.endsWith("running_mean") || k.endsWith("running_var") || k.endsWith("num_batches_tracked");
      expect(differingTensors(a1, b1, isStat)).toEqual([]);
      expect(differingTensors(a1, f1, isStat)).toEqual([]);
      const first = maxRelDiff(f1, a1);
      expect(first.diff, `fused: ${first.name} differs by ${first.diff} after one step`).toBeLessThan(1e-6);
      const [a20, exact20] = await Promise.all([train(norm, 1, 20), train(norm, 2, 20)]);
      const [fused20, js20] = await Promise.all([train(norm, 2, 20, "fused"), train(norm, 1, 20, "exact", { SYNCBN_KERNELS: "js" })]);
      const exact = maxRelDiff(exact20, a20);
      const bits = differingTensors(a20, exact20, () => true);
      const fused = maxRelDiff(fused20, a20);
      const rounding = maxRelDiff(js20, a20);
      const show = (w: { name: string; diff: number }): string => `${w.diff.toExponential(2)}${w.name ? ` (${w.name})` : ""}`;
      console.log(`--norm ${norm}: after 20 steps R=2 vs R=1: exact ${show(exact)}, tensors not bit-identical: ${bits.length}; fused ${show(fused)}; R=1 js vs wasm kernels ${show(rounding)}`);
      expect(exact.diff, `exact: ${exact.name} differs by ${exact.diff}`).toBeLessThan(1e-5);
      expect(bits, "tensors that differ in any bit with --rank-grads exact").toEqual([]);
      expect(fused.diff, `fused: ${fused.name} differs by ${fused.diff}; the other kernels make R=1 differ by ${rounding.diff}`).toBeLessThan(Math.max(1e-5, 10 * rounding.diff));
    }, 600_000);
  }

  it("gives --norm sync the same results with all 4 ranks in one process (no statistics rounds) as with 4 processes", async () => {
    const [a1, b1] = await Promise.all([train("sync", 1, 1), train("sync", 4, 1)]);
    expect(differingTensors(a1, b1, (k) => k.includes("running_"))).toEqual([]);
    expect(maxRelDiff(b1, a1).diff).toBeLessThan(1e-6);
    const [a20, b20] = await Promise.all([train("sync", 1, 20), train("sync", 4, 20)]);
    const worst = maxRelDiff(b20, a20);
    expect(worst.diff, `${worst.name} differs by ${worst.diff}`).toBeLessThan(1e-5);
    expect(differingTensors(a20, b20, () => true), "tensors that differ in any bit").toEqual([]);
  }, 600_000);

  it("reports ranks, processes and ranks per process in the start line, metrics.jsonl and summary.json", async () => {
    const out = mkdtempSync(join(tmpdir(), "syncbn-rpp-report-"));
    const r = await runCli(["train", "--workers", "6", "--batch", "2", "--model", "mlp", "--steps", "3", "--transport", "process", "--ranks-per-proc", "4", "--out", out], { timeoutMs: 120_000 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain("6 ranks on 2 processes (4 ranks per process, the last 2)");
    const start = JSON.parse(readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n")[0]!) as Record<string, unknown>;
    expect(start).toMatchObject({ type: "start", workers: 6, ranks: 6, processes: 2, ranksPerProcess: 4 });
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as Record<string, unknown>;
    expect(summary).toMatchObject({ workers: 6, ranks: 6, processes: 2, ranksPerProcess: 4, globalBatch: 12, steps: 3 });
  }, 180_000);

  it("trains 256 ranks × 2 samples of mlp with sync BN for 20 steps on 2 processes", async () => {
    const out = mkdtempSync(join(tmpdir(), "syncbn-rpp-256-"));
    const r = await runCli(
      ["train", "--workers", "256", "--batch", "2", "--model", "mlp", "--norm", "sync", "--steps", "20", "--transport", "process", "--ranks-per-proc", "128", "--out", out],
      { timeoutMs: 300_000 },
    );
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain("256 ranks on 2 processes (128 ranks per process)");
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as { steps: number; globalBatch: number; processes: number; finalTrainLoss: number };
    expect(summary).toMatchObject({ steps: 20, globalBatch: 512, processes: 2 });
    expect(Number.isFinite(summary.finalTrainLoss)).toBe(true);
  }, 320_000);
});

describe("the PyTorch conformance cases with ranks packed into fewer processes", () => {
  for (const perProc of [2, 4]) {
    it(`passes every case with ${perProc} ranks per worker process`, async () => {
      const r = await runCli(["conformance", FIXTURE_CASES, "--ranks-per-proc", String(perProc)], { timeoutMs: 240_000 });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      const cases = readdirSync(FIXTURE_CASES).filter((f) => f.endsWith(".json")).length;
      expect(r.stdout).toMatch(new RegExp(`\\b${cases} passed, 0 failed`));
      // Cases with even slices run in blocks of R; 8 one-sample ranks need 8 / R processes.
      expect(r.stdout).toContain(`PASS fc-8workers-one-sample-each (8 ranks in ${8 / perProc} processes)`);
    }, 300_000);
  }
});

describe("--ranks-per-proc refusals", () => {
  const refusals: [string, string[], RegExp][] = [
    ["R above W", ["--workers", "4", "--ranks-per-proc", "5"], /--ranks-per-proc 5 is above the number of ranks \(4\)/],
    ["R = 0", ["--workers", "4", "--ranks-per-proc", "0"], /--ranks-per-proc must be a positive integer or auto, got "0"/],
    ["a word", ["--workers", "4", "--ranks-per-proc", "many"], /--ranks-per-proc must be a positive integer or auto, got "many"/],
    ["a block splitting a group", ["--workers", "8", "--norm", "group:4", "--ranks-per-proc", "3"], /--ranks-per-proc 3 puts ranks 3\.\.5 in one process, which splits a --norm group:4 group of 4 ranks/],
    ["a block splitting a group (R = 6, K = 4)", ["--workers", "12", "--norm", "group:4", "--ranks-per-proc", "6"], /puts ranks 0\.\.5 in one process/],
    ["an unknown --rank-grads", ["--workers", "4", "--ranks-per-proc", "2", "--rank-grads", "fast"], /--rank-grads.*fast.*(exact|fused)/],
  ];
  for (const [what, args, message] of refusals) {
    it(`refuses ${what} with one line and exit 2 before anything starts`, async () => {
      const out = mkdtempSync(join(tmpdir(), "syncbn-rpp-bad-"));
      const r = await runCli(["train", ...args, "--steps", "1", "--out", join(out, "run")], { timeoutMs: 60_000 });
      expect(r.code).toBe(2);
      const lines = r.stderr.trim().split("\n");
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(message);
      expect(r.stdout).not.toContain("syncbn train:");
    }, 90_000);
  }

  it("refuses a worker whose block reaches past the world, with one line and exit 2", async () => {
    const r = await runCli(["worker", "--coordinator", "ws://127.0.0.1:1", "--rank", "6", "--ranks-per-proc", "4", "--world", "8", "--steps", "1"], { timeoutMs: 60_000 });
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(/--rank 6 with --ranks-per-proc 4 names ranks up to 9, outside 0\.\.7/);
  }, 90_000);
});
