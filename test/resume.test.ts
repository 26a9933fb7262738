// Resuming, as a hostile or unlucky user does it: crafted checkpoint headers with a
// valid SHA-256, --steps at or below the checkpoint's step, flags that do not fit,
// and the run folder's metrics history across a resume. Real `syncbn train` processes.
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { decodeCheckpoint, encodeCheckpoint, readCheckpoint, type Checkpoint } from "../worker/checkpoint.js";
import { isSyncbnError } from "../shared/errors.js";
import { runCli, startCli, waitForOutput } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));
const SMALL = ["--data", "synthetic", "--train-size", "1024", "--test-size", "100", "--model", "mlp", "--batch", "8", "--seed", "5"];

/** A checkpoint whose header is replaced, re-encoded so its SHA-256 trailer is valid. */
function crafted(ck: Checkpoint, edit: (h: Record<string, unknown>) => void): Buffer {
  const header = JSON.parse(JSON.stringify(ck.header)) as Record<string, unknown>;
  edit(header);
  return encodeCheckpoint({ ...ck, header: header as unknown as Checkpoint["header"] });
}

const CRAFTED: [string, (h: Record<string, unknown>) => void, RegExp][] = [
  ["a negative step", (h) => (h.step = -5), /bad header: step must be an integer in 0\.\.2147483647, got -5/],
  ["a fractional step", (h) => (h.step = 1.5), /bad header: step must be an integer in 0\.\.2147483647, got 1\.5/],
  ["a step beyond the bound", (h) => (h.step = 1e12), /bad header: step must be an integer in 0\.\.2147483647, got 1000000000000/],
  ["no step", (h) => delete h.step, /bad header: step must be an integer in 0\.\.2147483647, got undefined/],
  ["no params", (h) => delete h.params, /bad header: params must be a list of \{name, length\}/],
  ["a model that is a number", (h) => (h.model = 7), /bad header: model must be a string, got 7/],
  ["training that is not JSON", (h) => (h.training = "{oops"), /bad header: training is not JSON/],
  ["bn channels that are a string", (h) => ((h.bn as { channels: unknown }[])[0]!.channels = "256"), /bad header: bn must be a list of \{name, channels, tracked\}/],
  ["param lengths the file does not hold", (h) => {
    (h.params as { length: number }[])[0]!.length += 1;
    (h.momentumBuffers as number[])[0]! += 1;
  }, /the header describes \d+ payload bytes, the file holds \d+/],
];

describe("resume", () => {
  let base: string;
  let ck: Checkpoint;
  beforeAll(async () => {
    base = tmp("base");
    const r = await runCli(["train", "--workers", "1", "--steps", "2", "--out", base, ...SMALL], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    ck = readCheckpoint(join(base, "checkpoint.bin"));
  });

  it("refuses crafted headers with a valid checksum as SYNCBN_ERR_CHECKPOINT, never a TypeError (decoder)", () => {
    for (const [what, edit, message] of CRAFTED) {
      let err: unknown = null;
      try {
        decodeCheckpoint(crafted(ck, edit), "x.bin");
      } catch (e) {
        err = e;
      }
      expect(isSyncbnError(err), `${what}: ${String(err)}`).toBe(true);
      expect((err as Error).message, what).toMatch(message);
    }
  });

  it("refuses crafted headers in one line, exit 2, before anything starts (syncbn train)", async () => {
    const dir = tmp("crafted");
    const runs = CRAFTED.map(([what, edit], i) => {
      const f = join(dir, `crafted-${i}.bin`);
      writeFileSync(f, crafted(ck, edit));
      return { what, f, r: runCli(["train", "--workers", "1", "--steps", "4", "--resume", f, "--out", tmp("crafted-out"), ...SMALL], { timeoutMs: 60_000 }) };
    });
    for (const [i, run] of runs.entries()) {
      const r = await run.r;
      expect(r.code, `${run.what}: ${r.stdout}${r.stderr}`).toBe(2);
      expect(r.stderr.trim().split("\n"), run.what).toHaveLength(1);
      expect(r.stderr, run.what).toMatch(new RegExp(`^syncbn: SYNCBN_ERR_CHECKPOINT: ${run.f}: `));
      expect(r.stderr, run.what).toMatch(CRAFTED[i]![2]);
      expect(r.stdout, run.what).toBe("");
    }
  });

  it("refuses values a valid SHA-256 cannot vouch for (negative running variance, NaN, a mean over float32) in one line naming tensor and index, exit 2", async () => {
    const withValues = (edit: (c: Checkpoint) => void): Buffer => {
      const copy: Checkpoint = {
        header: ck.header,
        params: ck.params.map((p) => Float32Array.from(p)),
        momentum: ck.momentum.map((m) => Float32Array.from(m)),
        bn: ck.bn.map((b) => ({ mean: Float64Array.from(b.mean), var: Float64Array.from(b.var) })),
      };
      edit(copy);
      return encodeCheckpoint(copy);
    };
    const cases: [string, Buffer, RegExp][] = [
      ["a negative running variance", withValues((c) => (c.bn[1]!.var[3] = -0.25)), /bn2\.running_var\[3\] is -0\.25: a running variance must be ≥ 0/],
      ["a NaN parameter", withValues((c) => (c.params[0]![10] = NaN)), /fc1\.weight\[10\] is NaN/],
      ["a running mean over float32", withValues((c) => (c.bn[0]!.mean[0] = 1e300)), /bn1\.running_mean\[0\] is 1e\+300, which overflows float32/],
    ];
    const dir = tmp("values");
    for (const [what, bytes, message] of cases) {
      const f = join(dir, `${cases.findIndex((c) => c[0] === what)}.bin`);
      writeFileSync(f, bytes);
      const r = await runCli(["train", "--workers", "1", "--steps", "4", "--resume", f, "--out", tmp("values-out"), ...SMALL], { timeoutMs: 60_000 });
      expect(r.code, `${what}: ${r.stderr}`).toBe(2);
      expect(r.stderr.trim().split("\n"), what).toHaveLength(1);
      expect(r.stderr, what).toMatch(new RegExp(`^syncbn: SYNCBN_ERR_CHECKPOINT: ${f}: `));
      expect(r.stderr, what).toMatch(message);
    }
  });

  it("refuses --steps at or below the checkpoint's step, saying the checkpoint's step, and leaves the run folder alone", async () => {
    const file = join(base, "checkpoint.bin");
    const before = ["metrics.jsonl", "summary.json", "checkpoint.bin"].map((f) => readFileSync(join(base, f)));
    for (const steps of ["2", "1"]) {
      const r = await runCli(["train", "--workers", "1", "--steps", steps, "--resume", file, "--out", base, ...SMALL], { timeoutMs: 60_000 });
      expect(r.code, r.stdout + r.stderr).toBe(2);
      expect(r.stderr.trim()).toBe(`syncbn: SYNCBN_ERR_CHECKPOINT: ${file} does not fit this run: it is at step 2 and --steps ${steps} leaves nothing to train; give --steps above 2`);
    }
    ["metrics.jsonl", "summary.json", "checkpoint.bin"].forEach((f, i) => expect(readFileSync(join(base, f)).equals(before[i]!), f).toBe(true));
  });

  it("refuses a checkpoint that does not fit the flags in the launcher: one line, exit 2, no coordinator or worker started, run folder untouched", async () => {
    const file = join(base, "checkpoint.bin");
    const before = ["metrics.jsonl", "summary.json"].map((f) => readFileSync(join(base, f)));
    const cases: [string[], string][] = [
      [["--batch", "4"], "--batch was 8, now 4"],
      [["--seed", "6"], "--seed was 5, now 6"],
      [["--train-size", "512"], "--train-size was 1024, now 512"],
      [["--norm", "local"], "it was trained with --norm sync, this run uses local"],
      [["--model", "cnn"], "it holds a mlp, this run trains a cnn (--model)"],
      [["--workers", "2"], "it was trained by 1 worker, this run has 2 (--workers); the sample order depends on it"],
    ];
    const results = await Promise.all(
      cases.map(([flags]) => runCli(["train", "--workers", "1", "--steps", "4", ...SMALL, ...flags, "--resume", file, "--out", base], { timeoutMs: 60_000 })),
    );
    results.forEach((r, i) => {
      expect(r.code, r.stdout + r.stderr).toBe(2);
      expect(r.stderr.trim()).toBe(`syncbn: SYNCBN_ERR_CHECKPOINT: ${file} does not fit this run: ${cases[i]![1]}`);
      expect(r.stdout).toBe("");
    });
    ["metrics.jsonl", "summary.json"].forEach((f, i) => expect(readFileSync(join(base, f)).equals(before[i]!), f).toBe(true));
  });

  it("appends to metrics.jsonl on resume: keeps every line before the checkpoint's step, drops the crashed run's later ones, each step once", async () => {
    const out = tmp("history");
    const args = ["--workers", "2", "--checkpoint-every", "4", ...SMALL];
    // checkpoint after step 4, then killed in the 7th step: metrics hold steps 1..6
    const crashed = await runCli(["train", ...args, "--steps", "10", "--out", out], { env: { SYNCBN_FAULT: "0:6:grad" }, timeoutMs: 60_000 });
    expect(crashed.code).toBe(1);
    const parse = (text: string): { type: string; step: number }[] => text.trim().split("\n").map((l) => JSON.parse(l));
    const old = parse(readFileSync(join(out, "metrics.jsonl"), "utf8"));
    expect(old.filter((l) => l.type === "step").map((l) => l.step)).toEqual([1, 2, 3, 4, 5, 6]);
    const r = await runCli(["train", ...args, "--steps", "10", "--resume", join(out, "checkpoint.bin"), "--out", out], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    const lines = parse(readFileSync(join(out, "metrics.jsonl"), "utf8"));
    expect(lines.filter((l) => l.type === "step").map((l) => l.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // the lines up to the checkpoint's step are the old ones, in order; then a resume marker
    const at = lines.findIndex((l) => l.type === "resume");
    expect(lines.slice(0, at)).toEqual(old.filter((l) => l.step <= 4));
    expect(lines[at]).toEqual({ type: "resume", step: 4, checkpoint: join(out, "checkpoint.bin") });
  });

  it("keeps `syncbn coordinator --out` metrics history when its workers resume (the coordinator learns the step from the first round)", async () => {
    const [out, ckDir] = [tmp("coord-out"), tmp("coord-ck")];
    const session = async (steps: string, resume: string[]): Promise<void> => {
      const coord = startCli(["coordinator", "--world", "1", "--port", "0", "--token", "t", "--out", out], { timeoutMs: 60_000 });
      try {
        await waitForOutput(coord, (o) => /listening on ws:\/\//.test(o), 15_000);
        const url = /listening on (ws:\/\/\S+)/.exec(coord.stdout())![1]!;
        const w = await runCli(["worker", "--coordinator", url, "--rank", "0", "--world", "1", "--token", "t", "--steps", steps, "--out", ckDir, ...resume, ...SMALL], { timeoutMs: 60_000 });
        expect(w.code, w.stderr).toBe(0);
        const c = await coord.done;
        expect(c.code, c.stderr).toBe(0);
      } finally {
        coord.child.kill("SIGKILL");
      }
    };
    await session("3", []);
    await session("6", ["--resume", join(ckDir, "checkpoint.bin")]);
    const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { type: string; step: number });
    expect(lines.filter((l) => l.type === "step").map((l) => l.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(lines.find((l) => l.type === "resume")).toEqual({ type: "resume", step: 3, checkpoint: null });
  });
});
