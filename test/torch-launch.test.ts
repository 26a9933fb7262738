// `syncbn launch` and python/syncbn against PyTorch itself: real launcher, real
// coordinator, real Python processes with torch. Needs /usr/bin/python3 with
// torch and msgpack (SYNCBN_TEST_PYTHON names another); without them every test
// fails saying so, unless SYNCBN_SKIP_TORCH_TESTS=1 opts out explicitly.

import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { allowedCpus, planPinning } from "../cli/affinity.js";
import { FIXTURE_CASES, ROOT, runCli, startCli, waitForOutput } from "./helpers.js";

const PYTHON = process.env.SYNCBN_TEST_PYTHON ?? "/usr/bin/python3";
const optOut = process.env.SYNCBN_SKIP_TORCH_TESTS === "1";
const probe = spawnSync(PYTHON, ["-c", "import torch, msgpack"], { encoding: "utf8" });
const torchProblem =
  probe.status === 0
    ? null
    : `${PYTHON} cannot import torch and msgpack (${(probe.stderr || probe.error?.message || "").trim().split("\n").pop()}): install python3-torch python3-msgpack, point SYNCBN_TEST_PYTHON at an interpreter that has them, or set SYNCBN_SKIP_TORCH_TESTS=1 to skip these tests`;

function requireTorch(): void {
  if (torchProblem) throw new Error(torchProblem);
}

const tmp = mkdtempSync(join(tmpdir(), "syncbn-torch-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const PARITY = join(ROOT, "test", "python", "parity.py");
const FAULTS = join(ROOT, "test", "python", "faults.py");
const NAMES = join(ROOT, "test", "python", "names.py");

describe.skipIf(optOut)("syncbn launch with PyTorch scripts", () => {
  it("has PyTorch and msgpack at the test interpreter", () => {
    requireTorch();
  });

  for (const norm of ["sync", "local", "group:2"]) {
    it(`trains 4 ranks × 8 with --norm ${norm} to the state_dict of float64 PyTorch on each statistics group's batch, within 1e-4, with no rounds in eval`, async () => {
      requireTorch();
      const out = mkdtempSync(join(tmp, "parity-"));
      const r = await runCli(["launch", "--workers", "4", "--norm", norm, "--round-timeout", "20000", "--", PYTHON, PARITY], { env: { PARITY_OUT: out }, timeoutMs: 60_000 });
      expect(r.code, r.stderr).toBe(0);
      for (let rank = 0; rank < 4; rank++) {
        expect(r.stdout).toContain(`[rank ${rank}] rank ${rank} norm ${norm}: largest difference`);
        const rep = JSON.parse(readFileSync(join(out, `rank${rank}.json`), "utf8")) as { diffs: Record<string, number>; evalRounds: boolean; steps: number };
        expect(rep.evalRounds, "eval mode must not communicate").toBe(false);
        expect(rep.steps).toBe(5); // the round clock: step 0 holds the layer check, then one step per iteration
        // Every tensor of the state_dict (weights, running statistics, num_batches_tracked) and an eval output.
        expect(Object.keys(rep.diffs)).toContain("bn2.running_var");
        expect(Object.keys(rep.diffs)).toContain("bn1.num_batches_tracked");
        for (const [name, d] of Object.entries(rep.diffs)) expect(d, `rank ${rank} ${name}`).toBeLessThan(1e-4);
      }
    });
  }

  it("gives the same statistics on Python workers as on TypeScript workers for the conformance cases", async () => {
    requireTorch();
    const cases = mkdtempSync(join(tmp, "cases-"));
    // Up to 4 ranks each (Python processes cost a torch import each): empty slices, keras and null momentum, |mean| ≫ std.
    const names = ["conv-3workers-uneven-one-empty", "keras-cumulative-empty-first-rank", "large-mean-4workers-one-empty"];
    for (const n of names) copyFileSync(join(FIXTURE_CASES, `${n}.json`), join(cases, `${n}.json`));
    const ts = join(tmp, "dump-ts");
    const py = join(tmp, "dump-py");
    const a = await runCli(["conformance", cases, "--dump", ts, "--timeout", "40000"], { timeoutMs: 90_000 });
    const b = await runCli(["conformance", cases, "--dump", py, "--timeout", "40000", "--workers-lang", "python", "--python", PYTHON], { timeoutMs: 90_000 });
    expect(a.code, a.stdout + a.stderr).toBe(0);
    expect(b.code, b.stdout + b.stderr).toBe(0);
    expect(b.stdout).toContain(`${names.length} passed, 0 failed`);
    for (const n of names) {
      const x = JSON.parse(readFileSync(join(ts, `${n}.json`), "utf8")) as { steps: Record<string, unknown>[] };
      const y = JSON.parse(readFileSync(join(py, `${n}.json`), "utf8")) as { steps: Record<string, unknown>[] };
      for (const [i, s] of x.steps.entries()) {
        for (const f of ["mean", "var", "runningMean", "runningVar", "dgamma", "dbeta"]) {
          const u = s[f] as number[];
          const v = y.steps[i]![f] as number[];
          expect(v.length).toBe(u.length);
          // Statistics: float64 on both sides, the same merge at the coordinator.
          const tol = f === "dgamma" || f === "dbeta" ? 1e-5 : 1e-9;
          u.forEach((e, j) => expect(Math.abs(v[j]! - e), `${n} step ${i} ${f}[${j}]`).toBeLessThanOrEqual(tol * (1 + Math.abs(e))));
        }
      }
    }
  });

  // A 4 s round deadline: a hang costs 4 s. Ranks that start apart (torch's import on a loaded
  // machine) are waited for by the join window, not by the first round's deadline (next test).
  const launchFault = (fault: string, extra: string[] = [], env: Record<string, string> = {}) =>
    runCli(["launch", "--workers", "4", "--round-timeout", "4000", "--join-timeout", "20000", ...extra, "--", PYTHON, FAULTS], { env: { FAULT: fault, ...env }, timeoutMs: 60_000 });

  it("waits for a rank that starts later than the round deadline, within --join-timeout, and trains", async () => {
    requireTorch();
    // Rank 1 joins 8 s late: past the others' first round deadline (2 s) and their clients' own wait (2 + 5 s).
    const r = await launchFault("1:late", ["--round-timeout", "2000"], { LATE_S: "8" });
    expect(r.code, r.stderr).toBe(0);
    for (const rank of [0, 1, 2, 3]) expect(r.stdout).toMatch(new RegExp(`^\\[rank ${rank}\\] done$`, "m"));
    // Too late for the join window: named, exit 1, at the window's end.
    const t0 = Date.now();
    const late = await launchFault("1:late", ["--round-timeout", "2000", "--join-timeout", "5000"], { LATE_S: "30" });
    expect(late.code).toBe(1);
    expect(late.stderr).toContain("rank 1 never joined the run");
    expect(Date.now() - t0).toBeLessThan(25_000);
  });

  it("pins each rank to its CPU round-robin by default when that keeps the cores balanced, and not with --pin-cpus off", async () => {
    requireTorch();
    const cpus = allowedCpus();
    expect(cpus, "this Linux machine's allowed CPUs").not.toBeNull();
    const rankCpus = (stdout: string): string[] =>
      [0, 1, 2, 3].map((r) => new RegExp(`^\\[rank ${r}\\] cpus (.+)$`, "m").exec(stdout)?.[1] ?? "missing");
    const plan = planPinning("auto", 4, cpus);
    const pinned = await launchFault("-1:none");
    expect(pinned.code, pinned.stderr).toBe(0);
    if (plan) {
      expect(pinned.stdout).toContain(`ranks pinned to CPUs ${plan.join(", ")} by rank`);
      expect(rankCpus(pinned.stdout)).toEqual(plan.map(String));
    } else {
      expect(rankCpus(pinned.stdout)).toEqual([0, 1, 2, 3].map(() => cpus!.join(",")));
    }
    const off = await launchFault("-1:none", ["--pin-cpus", "off"]);
    expect(off.code, off.stderr).toBe(0);
    expect(off.stdout).not.toContain("pinned");
    expect(rankCpus(off.stdout)).toEqual([0, 1, 2, 3].map(() => cpus!.join(",")));
  });

  it("names a rank that dies, its signal and where the others waited, and exits 1", async () => {
    requireTorch();
    const r = await launchFault("2:die");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("syncbn launch failed:");
    // Where the others were is a race: in step 3's first round, or still between rounds after step 2's gradients.
    expect(r.stderr).toMatch(/rank 2 was killed by SIGKILL \((the others were waiting in step 3, phase fwd, layer 0|the others were between rounds; the last one finished was step 2, phase grad)\)/);
  });

  it("names a rank whose script raises, with its exit code and its traceback's last lines", async () => {
    requireTorch();
    // raise-slow: the connection closes 3 s before the process exits, so the coordinator's report comes first.
    for (const fault of ["1:raise", "1:raise-slow"]) {
      const r = await launchFault(fault);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/rank 1 exited with code 1 \((the others were waiting in step 3, phase fwd|the others were between rounds; the last one finished was step 2, phase grad)/);
      expect(r.stderr).toContain("[rank 1] ValueError: the script of this rank failed");
    }
  });

  it("says the others were between rounds when a rank fails while no round is open, naming the last round", async () => {
    requireTorch();
    // raise-between: the others sleep 3 s before step 3, so rank 1's exit comes while no round is open.
    const r = await launchFault("1:raise-between");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("rank 1 exited with code 1 (the others were between rounds; the last one finished was step 2, phase grad)");
  });

  it("stops a hung rank at the round deadline and names it", async () => {
    requireTorch();
    const r = await launchFault("2:hang");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/rank 2 stopped responding \(hung or too slow\) and was killed \(the others were waiting in step 3, phase fwd/);
    expect(r.stderr).toContain("SYNCBN_ERR_TIMEOUT");
  });

  it("names a rank whose script never calls init_process_group, running or exited", async () => {
    requireTorch();
    const hung = await launchFault("3:noinit", ["--join-timeout", "10000"]);
    expect(hung.code).toBe(1);
    expect(hung.stderr).toContain("rank 3 never joined the run: the script did not call syncbn.torch.init_process_group()");
    const exited = await launchFault("3:noinit-exit");
    expect(exited.code).toBe(1);
    expect(exited.stderr).toContain("rank 3 exited with code 0 without joining the run: the script never called syncbn.torch.init_process_group()");
  });

  it("names a rank with a wrong token, refused at its hello", async () => {
    requireTorch();
    const r = await launchFault("1:token");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/rank 1 exited with code 1 before it joined the run/);
    expect(r.stderr).toContain("[rank 1] syncbn: SYNCBN_ERR_TOKEN: [rank 1] wrong run token");
  });

  it("names the rank whose BatchNorm layers differ from the others'", async () => {
    requireTorch();
    const r = await launchFault("1:layers");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/rank 1 exited with code 1/);
    expect(r.stderr).toContain("the ranks' BatchNorm layers differ (ranks 0, 2, 3: 1 layers");
  });

  it("shows Python ranks' BatchNorm layers on the dashboard by their qualified module names", async () => {
    requireTorch();
    const go = join(mkdtempSync(join(tmp, "names-")), "go");
    const p = startCli(["launch", "--workers", "2", "--dashboard", "127.0.0.1:0", "--", PYTHON, NAMES], { env: { NAMES_GO: go }, timeoutMs: 90_000 });
    try {
      await waitForOutput(p, (o) => /dashboard: http:\/\/\S+/.test(o) && (o.match(/\] trained/g) ?? []).length === 2, 60_000);
      const url = /dashboard: (http:\/\/\S+)/.exec(p.stdout())![1]!;
      const state = (await (await fetch(`${url}state`)).json()) as { summary: { layerNames: string[] | null } };
      expect(state.summary.layerNames).toEqual(["1", "2.0.norm", "2.1.norm"]);
    } finally {
      writeFileSync(go, "");
    }
    const r = await p.done;
    expect(r.code, r.stderr).toBe(0);
  });

  it("refuses, in one line with exit 2, a norm mode that is the model's business, a missing command and a script outside launch", async () => {
    requireTorch();
    const ghost = await runCli(["launch", "--workers", "2", "--norm", "ghost:2", "--", PYTHON, FAULTS]);
    expect(ghost.code).toBe(2);
    expect(ghost.stderr.trim().split("\n")).toHaveLength(1);
    expect(ghost.stderr).toContain("--norm ghost:2 is not available to syncbn launch");
    const missing = await runCli(["launch", "--workers", "2", "--", "no-such-python-here", "x.py"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('command "no-such-python-here" not found');
    const bare = spawnSync(PYTHON, ["-c", "import syncbn.torch as s; s.init_process_group()"], { encoding: "utf8", env: { PATH: process.env.PATH, PYTHONPATH: join(ROOT, "python") } });
    expect(bare.status).toBe(1);
    expect(bare.stderr.trim().split("\n")).toHaveLength(1);
    expect(bare.stderr).toContain("RANK, WORLD_SIZE, SYNCBN_COORDINATOR not set; run the script under `syncbn launch");
  });
});
