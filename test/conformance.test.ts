// The conformance runner end to end: real coordinator, real worker processes, on
// the PyTorch-computed cases committed in test/fixtures/conformance (and on extra
// cases beside the repository, when there are any). Not the generator's own check.
import { mkdtempSync, readFileSync, readdirSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TORCH_CONVENTIONS } from "../shared/config.js";
import { Rng } from "../shared/rng.js";
import { BatchNorm } from "../worker/nn/batchnorm.js";
import { EXTRA_CASES, FIXTURE_CASES, ROOT, runCli } from "./helpers.js";

const extraCases = existsSync(EXTRA_CASES) && readdirSync(EXTRA_CASES).some((f) => f.endsWith(".json"));
if (!extraCases) console.info(`note: no extra conformance cases at ${EXTRA_CASES}; ran the repository's own cases only (an addition, not required)`);

/** A Python with PyTorch, to re-check the committed cases against their generator; null if there is none here. */
const torchPython = ["python3", "/usr/bin/python3"].find((py) => spawnSync(py, ["-c", "import torch"], { stdio: "ignore", timeout: 60_000 }).status === 0) ?? null;
if (!torchPython) console.info("note: no Python with PyTorch here; the committed cases are not recomputed (scripts/make-conformance-cases.py --check)");

/** Runs the folders' cases and checks every case passed, by count. */
async function expectAllPass(...dirs: string[]): Promise<void> {
  const n = dirs.reduce((a, d) => a + readdirSync(d).filter((f) => f.endsWith(".json")).length, 0);
  const r = await runCli(["conformance", ...dirs], { timeoutMs: 550_000 });
  expect(r.stdout).toContain(`${n} passed, 0 failed`);
  expect(r.stdout.match(/^PASS /gm)?.length).toBe(n);
  expect(r.code).toBe(0);
}

describe("syncbn conformance", () => {
  it("passes every PyTorch-computed case in test/fixtures/conformance (fc and conv, 1–8 workers, empty slices, |mean| ≫ std, torch/keras/null momentum, biased running var) through real processes", async () => {
    expect(readdirSync(FIXTURE_CASES).filter((f) => f.endsWith(".json")).length).toBeGreaterThanOrEqual(10);
    await expectAllPass(FIXTURE_CASES);
  }, 600_000);

  it.skipIf(!torchPython)("holds what scripts/make-conformance-cases.py computes with PyTorch for the committed inputs, to 1e-10 (--check)", () => {
    const r = spawnSync(torchPython!, [join(ROOT, "scripts", "make-conformance-cases.py"), "--check", FIXTURE_CASES], { encoding: "utf8", timeout: 400_000 });
    const worst = Number(/^worst (\S+)$/m.exec(r.stdout)?.[1]);
    expect(worst, r.stdout + r.stderr).toBeLessThanOrEqual(1e-10);
    expect(r.status, r.stderr).toBe(0);
  }, 450_000);

  it.skipIf(!extraCases)("also passes the extra cases found beside the repository in ../shared/conformance/cases (run as an addition when present)", async () => {
    await expectAllPass(EXTRA_CASES);
  }, 600_000);

  it("runs the cases of several folders in one call and counts them together", async () => {
    const dir = mkdtempSync(join(tmpdir(), "syncbn-conf-two-"));
    const one = "fc-2workers-even-3steps.json";
    writeFileSync(join(dir, "copy.json"), JSON.stringify({ ...JSON.parse(readFileSync(join(FIXTURE_CASES, one), "utf8")), name: "copy-of-fc" }));
    const r = await runCli(["conformance", dir, dir]);
    expect(r.stdout.match(/^PASS copy-of-fc$/gm)?.length).toBe(2);
    expect(r.stdout).toContain("2 passed, 0 failed");
    expect(r.code).toBe(0);
    const missing = await runCli(["conformance", dir, join(dir, "no-such-folder")]);
    expect(missing.stderr).toMatch(/no-such-folder is not readable/);
    expect(missing.stdout).not.toContain("PASS");
    expect(missing.code).toBe(2);
  });

  it("gives W workers on uneven slices (one empty) the y, dx, dγ, dβ and running stats of one BN over the concatenation", async () => {
    // Expected values from our own single-process BN on the concatenated batch.
    const rng = new Rng(77);
    const C = 3, H = 2, Wd = 3, S = H * Wd;
    const sizesPerStep = [[4, 0, 1, 3, 2], [2, 2, 0, 5, 1], [0, 3, 3, 1, 1]];
    const gamma = Float32Array.from({ length: C }, () => 0.5 + rng.next());
    const beta = Float32Array.from({ length: C }, () => rng.normal());
    const ref = new BatchNorm("ref", 0, [C, H, Wd], TORCH_CONVENTIONS, null);
    ref.gamma.value.set(gamma);
    ref.beta.value.set(beta);
    const steps = [];
    for (const sizes of sizesPerStep) {
      const total = sizes.reduce((a, b) => a + b, 0);
      const x = Float32Array.from({ length: total * C * S }, () => 5 + 3 * rng.normal());
      const dy = Float32Array.from({ length: total * C * S }, () => rng.normal());
      const y = Array.from(await ref.forward(x, total, true));
      const dx = Array.from(await ref.backward(dy, total));
      let off = 0;
      const workers = sizes.map((n) => {
        const lo = off * C * S, hi = (off + n) * C * S;
        off += n;
        return { shape: [n, C, H, Wd], x: Array.from(x.subarray(lo, hi)), dy: Array.from(dy.subarray(lo, hi)), expected: { y: y.slice(lo, hi), dx: dx.slice(lo, hi) } };
      });
      steps.push({
        workers,
        expected: {
          dgamma: Array.from(ref.gamma.grad),
          dbeta: Array.from(ref.beta.grad),
          mean: Array.from(ref.batchMean),
          var: Array.from(ref.batchVar),
          runningMean: Array.from(ref.runningMean),
          runningVar: Array.from(ref.runningVar),
        },
      });
    }
    const ex = Float32Array.from({ length: 2 * C * S }, () => 5 + 3 * rng.normal());
    const ey = Array.from(await ref.forward(ex, 2, false));
    const dir = mkdtempSync(join(tmpdir(), "syncbn-conf-"));
    const kase = { name: "five-workers-vs-one", channels: C, spatial: [H, Wd], eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, gamma: Array.from(gamma), beta: Array.from(beta), steps, eval: { shape: [2, C, H, Wd], x: Array.from(ex), expected: { y: ey } } };
    writeFileSync(join(dir, "case.json"), JSON.stringify(kase));
    const r = await runCli(["conformance", dir, "--dump", join(dir, "out")]);
    expect(r.stdout).toContain("PASS five-workers-vs-one");
    expect(r.code).toBe(0);
    const dump = JSON.parse(readFileSync(join(dir, "out", "five-workers-vs-one.json"), "utf8"));
    expect(dump.steps).toHaveLength(3);
    expect(dump.steps[0].workers).toHaveLength(5);
    expect(dump.steps[0].workers[1].y).toEqual([]);
    expect(Object.keys(dump.steps[0]).sort()).toEqual(["dbeta", "dgamma", "mean", "runningMean", "runningVar", "var", "workers"]);
    expect(dump.eval.y).toHaveLength(2 * C * S);
  });

  it("prints FAIL with the field, error and index, and exits non-zero, when a value is off", async () => {
    const dir = mkdtempSync(join(tmpdir(), "syncbn-conf-bad-"));
    const c = JSON.parse(readFileSync(join(FIXTURE_CASES, "fc-2workers-even-3steps.json"), "utf8"));
    c.name = "tampered";
    c.steps[1].expected.runningVar[2] += 0.01;
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "tampered.json"), JSON.stringify(c));
    const r = await runCli(["conformance", dir]);
    expect(r.stdout).toMatch(/FAIL tampered: steps\[1\]\.runningVar max abs err 1\.\d+e-2 at index 2/);
    expect(r.stdout).toContain("0 passed, 1 failed");
    expect(r.code).toBe(1);
  });

  it("says what is wrong when the folder has no cases", async () => {
    const dir = mkdtempSync(join(tmpdir(), "syncbn-conf-empty-"));
    const r = await runCli(["conformance", dir]);
    expect(r.stderr).toMatch(/no \*\.json case files/);
    expect(r.code).not.toBe(0);
  });
});
