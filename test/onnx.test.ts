// `--model model.onnx`: PyTorch training-mode exports (scripts/make-onnx-fixtures.py,
// run by hand; no PyTorch needed here) trained by 4 real worker processes end within
// 1e-4 of PyTorch's float64 training on every tensor of weights.safetensors; the
// exported resnet:1 trains bit for bit like the built-in one; and every refusal is
// one line naming the problem, before any worker starts.

import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AttributeProtoSchema, ModelProtoSchema, NodeProtoSchema, ValueInfoProtoSchema } from "onnx-buf";
import { describe, expect, it } from "vitest";
import { floatValues, integerValues, readSafetensors } from "../worker/safetensors.js";
import { ROOT, runCli } from "./helpers.js";

const FIXTURES = join(ROOT, "test", "fixtures", "onnx");
const DATA = join(ROOT, "test", "fixtures", "torch", "data");
/** The training settings make-torch-fixtures.py (and so make-onnx-fixtures.py) uses. */
const SETTINGS = ["--workers", "4", "--batch", "4", "--steps", "3", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "5e-4", "--bn-eps", "1e-5", "--bn-momentum", "0.1"];

function tensors(path: string): Map<string, { shape: number[]; values: Float64Array }> {
  const out = new Map<string, { shape: number[]; values: Float64Array }>();
  for (const [name, t] of readSafetensors(path).tensors) {
    out.set(name, { shape: t.shape, values: floatValues(t) ?? Float64Array.from(integerValues(t)!.map(Number)) });
  }
  return out;
}

function relDiff(a: Float64Array, b: Float64Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return den === 0 ? num : num / den;
}

async function train(model: string, norm: string, init: string, extra: string[] = []): Promise<string> {
  const out = mkdtempSync(join(tmpdir(), "syncbn-onnx-"));
  const r = await runCli(["train", "--model", model, "--norm", norm, "--data", DATA, "--init", init, "--shuffle", "off", ...SETTINGS, "--out", out, ...extra], { timeoutMs: 240_000 });
  expect(r.code, r.stderr).toBe(0);
  return join(out, "weights.safetensors");
}

describe("--model model.onnx against PyTorch, from the same initial weights", () => {
  for (const fixture of ["resproj", "mlp", "vgg"]) {
    for (const norm of ["sync", "local"] as const) {
      it(`ends the exported ${fixture} within 1e-4 of PyTorch on every tensor, 4 workers × 4 with --norm ${norm}`, async () => {
        const dir = join(FIXTURES, fixture);
        const ours = tensors(await train(join(dir, "model.onnx"), norm, join(dir, "init.safetensors")));
        const theirs = tensors(join(dir, `expected-${norm}.safetensors`));
        expect([...ours.keys()].sort()).toEqual([...theirs.keys()].sort());
        let worst = { name: "", diff: 0 };
        for (const [name, t] of theirs) {
          expect(ours.get(name)!.shape, name).toEqual(t.shape);
          const d = relDiff(ours.get(name)!.values, t.values);
          if (d > worst.diff) worst = { name, diff: d };
        }
        console.log(`onnx ${fixture} --norm ${norm}: ${theirs.size} tensors, worst ${worst.name} at ${worst.diff.toExponential(2)} relative`);
        expect(worst.diff, worst.name).toBeLessThan(1e-4);
      }, 300_000);
    }
  }

  it("trains resnet:1 exported to ONNX bit for bit like --model resnet:1 from the same --init", async () => {
    const dir = join(FIXTURES, "resnet1");
    const a = readSafetensors(await train(join(dir, "model.onnx"), "sync", join(dir, "init.safetensors"))).tensors;
    const b = readSafetensors(await train("resnet:1", "sync", join(dir, "init.safetensors"))).tensors;
    expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
    for (const [name, t] of b) expect(Buffer.from(a.get(name)!.data).equals(Buffer.from(t.data)), name).toBe(true);
  }, 300_000);
});
