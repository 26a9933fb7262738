// `syncbn train` runs of the graph models with real workers: mlp and cnn give
// the very bytes the sequential-layer code gave (checkpoint payload hashes and
// test losses recorded before the graph runtime), W workers × B with sync BN
// equals 1 worker × W·B on resnet:2, and a resnet trains on IDX images of
// another shape. Not unit tests of the ops: graph.test.ts.

import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { relDiff } from "./compare.js";
import { describe, expect, it } from "vitest";
import { readCheckpoint, type Checkpoint } from "../worker/checkpoint.js";
import { ROOT, runCli } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));

interface BeforeCase {
  args: string[];
  sha256: string;
  testLoss: number;
}
const before = JSON.parse(readFileSync(join(ROOT, "test", "fixtures", "graph", "before.json"), "utf8")) as { cases: BeforeCase[] };
// On the WebAssembly kernels, where the hashes were recorded: the native conv's FMA
// GEMMs round differently by design (docs/native-kernels.md), so its bytes are not these.
const RUN = ["--steps", "10", "--workers", "2", "--batch", "4", "--train-size", "256", "--test-size", "64", "--transport", "thread", "--kernels", "wasm"];

/** SHA-256 of a checkpoint's payload: params, momentum, running stats (the header holds the settings' JSON, which may grow). */
function payloadHash(file: string): string {
  const b = readFileSync(file);
  const hlen = b.readUInt32LE(12);
  return createHash("sha256").update(b.subarray(16 + hlen, b.length - 32)).digest("hex");
}


/** The tensor with the largest relative difference, params and running statistics alike. */
function worstDiff(a: Checkpoint, b: Checkpoint): { name: string; diff: number } {
  let worst = { name: "", diff: 0 };
  const see = (name: string, d: number): void => {
    if (d > worst.diff) worst = { name, diff: d };
  };
  a.params.forEach((p, i) => see(a.header.params[i]!.name, relDiff(p, b.params[i]!)));
  a.bn.forEach((s, i) => {
    see(`${a.header.bn[i]!.name}.running_mean`, relDiff(s.mean, b.bn[i]!.mean));
    see(`${a.header.bn[i]!.name}.running_var`, relDiff(s.var, b.bn[i]!.var));
  });
  return worst;
}

describe("mlp and cnn as graphs", () => {
  it.each(before.cases.map((c) => [c.args.join(" "), c] as const))("end bit for bit where the sequential code ended: %s", async (_label, c) => {
    const out = tmp("before");
    const r = await runCli(["train", ...RUN, ...c.args, "--out", out], { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(payloadHash(join(out, "checkpoint.bin"))).toBe(c.sha256);
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as { testLoss: number };
    expect(summary.testLoss).toBe(c.testLoss);
  }, 150_000);
});

describe("resnet:N runs", () => {
  it("gives 4 workers × 4 samples with sync BN the parameters and running stats of 1 worker × 16 after a step on resnet:2", async () => {
    // One step, not twenty: each worker rounds its float32 gradient before the float64 grad round,
    // one worker × 16 rounds once, and resnet:2 amplifies that last-bit difference step by step
    // (measured: 1.4e-3 after two steps, 0.7 on a BN bias after twenty, on the js twins as on
    // WebAssembly), so a multi-step equality would test chaos, not the all-reduce. The multi-step
    // checks against PyTorch are whole-run.test.ts.
    const small = ["--model", "resnet:2", "--steps", "1", "--data", "synthetic", "--train-size", "640", "--test-size", "16", "--seed", "5", "--lr", "0.02", "--momentum", "0.9"];
    const a = tmp("r4"), b = tmp("r1"), c = tmp("r4local");
    const ra = await runCli(["train", "--workers", "4", "--batch", "4", "--norm", "sync", "--out", a, ...small], { timeoutMs: 300_000 });
    expect(ra.code, ra.stderr).toBe(0);
    const rb = await runCli(["train", "--workers", "1", "--batch", "16", "--norm", "sync", "--out", b, ...small], { timeoutMs: 300_000 });
    expect(rb.code, rb.stderr).toBe(0);
    const ca = readCheckpoint(join(a, "checkpoint.bin"));
    const cb = readCheckpoint(join(b, "checkpoint.bin"));
    expect(ca.header.step).toBe(1);
    expect(ca.bn.length).toBe(15);
    const worst = worstDiff(ca, cb);
    expect(worst.diff, `worst tensor ${worst.name}`).toBeLessThan(1e-5);
    // …and not trivially: local BN on 4-sample slices ends elsewhere.
    const rc = await runCli(["train", "--workers", "4", "--batch", "4", "--norm", "local", "--out", c, ...small], { timeoutMs: 300_000 });
    expect(rc.code, rc.stderr).toBe(0);
    expect(worstDiff(readCheckpoint(join(c, "checkpoint.bin")), cb).diff).toBeGreaterThan(1e-3);
  }, 600_000);

  it("trains resnet:1 and cnn on an IDX folder of 3×12×10 images, with PreciseBN evaluation", async () => {
    const dir = tmp("idx4");
    const [ch, h, w] = [3, 12, 10];
    const idx = (magic: number, dims: number[], data: Uint8Array): Buffer => {
      const head = Buffer.alloc(4 + 4 * dims.length);
      head.writeUInt32BE(magic, 0);
      dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
      return Buffer.concat([head, data]);
    };
    for (const [prefix, count] of [["train", 48], ["t10k", 16]] as const) {
      const labels = Uint8Array.from({ length: count }, (_, i) => i % 3);
      // Class k: a bright square in channel k.
      const px = new Uint8Array(count * ch * h * w);
      for (let i = 0; i < count; i++) for (let y = 3; y < 9; y++) for (let x = 2; x < 8; x++) px[((i * ch + labels[i]!) * h + y) * w + x] = 200 + (i % 50);
      writeFileSync(join(dir, `${prefix}-images-idx4-ubyte`), idx(0x804, [count, ch, h, w], px));
      writeFileSync(join(dir, `${prefix}-labels-idx1-ubyte`), idx(0x801, [count], labels));
    }
    for (const model of ["resnet:1", "cnn"]) {
      const out = tmp("idx4run");
      const r = await runCli(["train", "--model", model, "--data", dir, "--workers", "2", "--batch", "4", "--steps", "12", "--eval-stats", "precise", "--precise-batches", "2", "--out", out], { timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(0);
      const s = JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as { testAccuracy: number; testLoss: number };
      expect(Number.isFinite(s.testLoss), model).toBe(true);
    }
  }, 300_000);
});
