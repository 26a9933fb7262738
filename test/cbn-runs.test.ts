// Cross-iteration BN (--norm cbn:K) through real `syncbn train` processes: cnn
// and resnet:1 runs end with finite losses and record the mode; cbn:1 and a
// burn-in longer than the run are local BN bit for bit while cbn:4 is not; two
// ranks per process give the tensors of one; bad K or B, and an ONNX model with
// a norm layer after something other than a conv or linear layer, are one line, exit 2.
// The layer's math against PyTorch is in cbn.test.ts.

import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema, NodeProtoSchema } from "onnx-buf";
import { describe, expect, it } from "vitest";
import { relDiff, safetensorsValues } from "./compare.js";
import { ROOT, runCli } from "./helpers.js";

const SMALL = ["--batch", "4", "--train-size", "256", "--test-size", "64", "--seed", "3"];

/** Runs syncbn train with the given args into a fresh folder; returns it after checking exit 0. */
async function train(label: string, args: string[]): Promise<string> {
  const out = mkdtempSync(join(tmpdir(), `syncbn-cbn-${label}-`));
  const r = await runCli(["train", ...args, "--out", out], { timeoutMs: 240_000 });
  expect(r.code, `${args.join(" ")}:\n${r.stdout}\n${r.stderr}`).toBe(0);
  return out;
}

interface Summary {
  norm: string;
  testLoss: number;
  finalTrainLoss: number;
  settings: { norm: string };
}

function summary(out: string): Summary {
  return JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as Summary;
}

/** Names of the tensors of two runs' weights files that differ in any bit. */
function differing(a: string, b: string): string[] {
  const ta = safetensorsValues(join(a, "weights.safetensors"));
  const tb = safetensorsValues(join(b, "weights.safetensors"));
  expect([...ta.keys()]).toEqual([...tb.keys()]);
  return [...ta.keys()].filter((k) => ta.get(k)!.values.some((v, i) => !Object.is(v, tb.get(k)!.values[i])));
}

describe("--norm cbn:K in real runs", () => {
  it.each([
    ["cnn", "20"],
    ["resnet:1", "12"],
  ])("trains --model %s with --norm cbn:4 to a finite loss and records the mode in the run settings", async (model, steps) => {
    const out = await train(model.replace(":", ""), ["--workers", "2", "--model", model, "--norm", "cbn:4", "--steps", steps, ...SMALL]);
    const s = summary(out);
    expect(s.norm).toBe("cbn:4");
    expect(s.settings.norm).toBe("cbn:4");
    expect(Number.isFinite(s.testLoss) && Number.isFinite(s.finalTrainLoss), JSON.stringify(s)).toBe(true);
    const start = JSON.parse(readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n")[0]!) as { type: string; settings: { norm: string } };
    expect(start.type).toBe("start");
    expect(start.settings.norm).toBe("cbn:4");
  });

  it("gives the tensors of --norm local bit for bit with cbn:1 and with a burn-in longer than the run, and other tensors with cbn:4", async () => {
    const args = ["--workers", "2", "--model", "cnn", "--steps", "8", ...SMALL];
    const [local, one, burn] = await Promise.all([
      train("local", [...args, "--norm", "local"]),
      train("k1", [...args, "--norm", "cbn:1"]),
      train("burn", [...args, "--norm", "cbn:4:8"]),
    ]);
    const four = await train("k4", [...args, "--norm", "cbn:4"]);
    expect(differing(one, local)).toEqual([]);
    expect(differing(burn, local)).toEqual([]);
    // The comparison can fail: three steps of averaged statistics move every layer.
    const changed = differing(four, local);
    expect(changed).toEqual(expect.arrayContaining(["conv1.weight", "bn1.running_mean", "bn3.running_var", "fc2.weight"]));
    const w4 = safetensorsValues(join(four, "weights.safetensors")).get("conv1.weight")!.values;
    const wl = safetensorsValues(join(local, "weights.safetensors")).get("conv1.weight")!.values;
    expect(relDiff(w4, wl)).toBeGreaterThan(1e-6);
  });

  it("gives the same tensors bit for bit with 2 ranks per process as with 1 (each rank its own window)", async () => {
    const args = ["--workers", "4", "--model", "cnn", "--norm", "cbn:3", "--steps", "10", "--batch", "4", "--seed", "3"];
    const [r1, r2] = await Promise.all([train("rpp1", [...args, "--ranks-per-proc", "1"]), train("rpp2", [...args, "--ranks-per-proc", "2"])]);
    expect(differing(r1, r2)).toEqual([]);
  });

  it("refuses, in one line, exit 2, an ONNX model with a norm layer that does not read a conv or linear output", async () => {
    // resproj with a Relu slipped between its first Conv and the BatchNormalization after it.
    const m = fromBinary(ModelProtoSchema, readFileSync(join(ROOT, "test", "fixtures", "onnx", "resproj", "model.onnx")));
    const nodes = m.graph!.node;
    const at = nodes.findIndex((bn) => bn.opType === "BatchNormalization" && nodes.some((c) => c.opType === "Conv" && c.output[0] === bn.input[0]));
    expect(at).toBeGreaterThan(0);
    const bn = nodes[at]!;
    const relu = create(NodeProtoSchema, { name: "/wedge", opType: "Relu", input: [bn.input[0]!], output: ["wedge.out"] });
    bn.input[0] = "wedge.out";
    nodes.splice(at, 0, relu);
    const dir = mkdtempSync(join(tmpdir(), "syncbn-cbn-onnx-"));
    const path = join(dir, "model.onnx");
    writeFileSync(path, toBinary(ModelProtoSchema, m));
    const args = ["train", "--model", path, "--data", join(ROOT, "test", "fixtures", "torch", "data"), "--workers", "2", "--batch", "4", "--steps", "1"];
    // The same file trains with --norm local: the refusal is cbn's.
    const ok = await runCli([...args, "--norm", "local", "--out", join(dir, "local")], { timeoutMs: 120_000 });
    expect(ok.code, ok.stderr).toBe(0);
    const r = await runCli([...args, "--norm", "cbn:4", "--out", join(dir, "cbn")], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/--norm cbn:4: norm layer \S+ reads the output of \S+, not a conv or linear layer, so its past statistics cannot be compensated/);
    expect(existsSync(join(dir, "cbn"))).toBe(false);
  });

  it.each([
    ["cbn:0", /--norm cbn:0: use cbn:K with K in 1\.\.32/],
    ["cbn:33", /--norm cbn:33: use cbn:K with K in 1\.\.32/],
    ["cbn:2.5", /--norm cbn:2\.5: use cbn:K/],
    ["cbn:4:-1", /--norm cbn:4:-1: use cbn:K with K in 1\.\.32 \(iterations averaged\), optionally cbn:K:B with B in 0\.\.\d+ burn-in steps/],
    ["cbn", /--norm cbn: use cbn:K/],
  ])("refuses --norm %s in one line, exit 2, before anything starts", async (norm, re) => {
    const out = join(mkdtempSync(join(tmpdir(), "syncbn-cbn-bad-")), "out");
    const r = await runCli(["train", "--norm", norm, "--out", out], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^syncbn: SYNCBN_ERR_[A-Z_]+: /);
    expect(lines[0]).toMatch(re);
    expect(r.stdout).toBe("");
    expect(existsSync(out)).toBe(false);
  });
});
