// Which kernels a real `syncbn` run uses (cli/kernels.ts): --kernels, else
// SYNCBN_KERNELS, else native where the addon loads, else wasm, with one notice
// line when the addon is missing. An
// explicit native without the addon is a one-line error, exit 2. The choice is
// recorded in summary.json's settings.kernels. js and wasm train the same weights
// bit for bit; native (FMA GEMMs, test/native-kernels.test.ts) trains its own bits,
// the same on any number of threads, within float32 rounding of wasm's.
// SYNCBN_NATIVE=off stands in for a machine without the addon.

import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { nativeUnavailableReason } from "../worker/nn/kernels/native.js";
import { relDiff, safetensorsValues } from "./compare.js";
import { nativeInRuns, runCli } from "./helpers.js";

const RUN = ["train", "--model", "cnn", "--data", "synthetic", "--train-size", "128", "--test-size", "32", "--workers", "2", "--batch", "4", "--steps", "2", "--eval-every", "0"];
const OFF = { SYNCBN_NATIVE: "off" };
const NOTICE = "syncbn: native kernels unavailable (SYNCBN_NATIVE=off); using WebAssembly";
const MISSING = "the native addon is not loaded (SYNCBN_NATIVE=off); use --kernels wasm, or build it with node scripts/build-native.mjs";

interface Ran { kernels: unknown; weights: Buffer; file: string; stdout: string; stderr: string }

async function train(flags: string[], env: NodeJS.ProcessEnv = {}): Promise<Ran> {
  const out = join(mkdtempSync(join(tmpdir(), "syncbn-kernels-")), "run");
  const r = await runCli([...RUN, ...flags, "--out", out], { env, timeoutMs: 120_000 });
  expect(r.code, r.stderr).toBe(0);
  const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as { settings: { kernels: unknown } };
  const file = join(out, "weights.safetensors");
  return { kernels: summary.settings.kernels, weights: readFileSync(file), file, stdout: r.stdout, stderr: r.stderr };
}

/** A refused command: exit 2, exactly one stderr line, nothing written. */
async function refused(args: string[], env: NodeJS.ProcessEnv, line: string): Promise<void> {
  const out = join(mkdtempSync(join(tmpdir(), "syncbn-kernels-")), "never");
  const r = await runCli([...args, "--out", out], { env, timeoutMs: 60_000 });
  expect(r.code, r.stderr).toBe(2);
  expect(r.stderr.split("\n").filter((l) => l.trim() !== "")).toEqual([line]);
  expect(existsSync(out)).toBe(false);
}

describe("choosing the kernels of a run", () => {
  it("runs native by default where the addon loads (asserted loaded under CI, which builds it), and records it", async () => {
    if (process.env.CI) expect(nativeInRuns(), nativeUnavailableReason()).toBe(true);
    const r = await train(["--threads", "1"]);
    expect(r.kernels).toBe(nativeInRuns() ? "native" : "wasm");
    if (nativeInRuns()) expect(r.stdout + r.stderr).not.toMatch(/native kernels unavailable/);
    else expect(r.stdout).toMatch(/native kernels unavailable/);
  });

  it("falls back to wasm with exactly one notice line (not one per worker) when the addon is missing, with the same weights", async () => {
    const off = await train(["--threads", "1"], OFF);
    expect(off.kernels).toBe("wasm");
    expect(off.stdout.split("\n").filter((l) => /native kernels/.test(l))).toEqual([NOTICE]);
    expect(off.stdout.split("\n")[0]).toBe(NOTICE);
    const wasm = await train(["--threads", "1", "--kernels", "wasm"]);
    expect(wasm.weights.equals(off.weights), "weights.safetensors, the fallback vs --kernels wasm").toBe(true);
  });

  it("keeps the default with 2 compute threads per worker (the addon's pool splits its passes), with the same weights as 1 thread and wasm's within rounding", async () => {
    const two = await train(["--threads", "2"]);
    expect(two.kernels).toBe(nativeInRuns() ? "native" : "wasm");
    const one = await train(["--threads", "1"]);
    expect(two.weights.equals(one.weights), "2 threads vs 1").toBe(true);
    const wasm = await train(["--threads", "2", "--kernels", "wasm"]);
    // Two steps of the cnn: whole-run.test.ts holds every backend within 1e-4 of float64 PyTorch on it (native 4.6e-7).
    const want = safetensorsValues(wasm.file);
    for (const [name, got] of safetensorsValues(two.file)) expect(relDiff(got.values, want.get(name)!.values), name).toBeLessThan(1e-4);
  });

  it("lets --kernels override SYNCBN_KERNELS, and records js", async () => {
    const r = await train(["--threads", "1", "--kernels", "js"], { SYNCBN_KERNELS: "wasm" });
    expect(r.kernels).toBe("js");
    const e = await train(["--threads", "1"], { SYNCBN_KERNELS: "wasm" });
    expect(e.kernels).toBe("wasm");
  });

  it("refuses an explicit native without the addon in one line, exit 2, from the flag or SYNCBN_KERNELS, in train, sweep and worker", async () => {
    await refused([...RUN, "--kernels", "native"], OFF, `syncbn: SYNCBN_ERR_BAD_CONFIG: --kernels native: ${MISSING}`);
    await refused(RUN, { ...OFF, SYNCBN_KERNELS: "native" }, `syncbn: SYNCBN_ERR_BAD_CONFIG: SYNCBN_KERNELS=native: ${MISSING}`);
    await refused(["sweep", "--kernels", "native"], OFF, `syncbn: SYNCBN_ERR_BAD_CONFIG: --kernels native: ${MISSING}`);
    await refused(["worker", "--coordinator", "ws://127.0.0.1:9", "--rank", "0", "--world", "1", "--model", "mlp", "--data", "synthetic", "--kernels", "native"], OFF,
      `syncbn: SYNCBN_ERR_BAD_CONFIG: --kernels native: ${MISSING}`);
  });

  it("refuses a --kernels value outside native, wasm, js in one line, exit 2", async () => {
    for (const cmd of ["train", "sweep", "worker"]) {
      await refused([cmd, "--kernels", "fast"], {}, `syncbn: SYNCBN_ERR_BAD_CONFIG: --kernels "fast" is invalid: allowed choices are js, wasm, native; see syncbn ${cmd} --help`);
    }
    await refused(RUN, { SYNCBN_KERNELS: "fast" }, `syncbn: SYNCBN_ERR_BAD_CONFIG: SYNCBN_KERNELS must be one of js, wasm, native, got "fast"`);
  });
});
