// Whole runs of the opsnet ONNX export (scripts/make-onnx-ops-fixtures.py: SiLU,
// depthwise and grouped conv, HardSwish, LeakyReLU, ReLU6, HardSigmoid, Concat,
// global average pool, a squeeze-excite Mul, constants, Flatten, Dropout p = 0):
// `syncbn train` with 4 real workers × 4 ends within 1e-5 of PyTorch's float64
// training on every tensor, --norm sync and local. Then Dropout with p = 0.5
// edited into the graph: a resumed run ends bit for bit as the uninterrupted one, and 2 processes of 2 ranks
// (--rank-grads exact) draw the masks 4 processes do, bit for bit. And poolnet
// (padded max and average pools, Tanh, a conv squeeze-excite) and actnet (GELU,
// Mish, ELU, trained PReLU slopes) against PyTorch with --norm sync, and opsnet
// with --threads 2.

import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema } from "onnx-buf";
import { describe, expect, it } from "vitest";
import { readSafetensors } from "../worker/safetensors.js";
import { relDiff, safetensorsValues } from "./compare.js";
import { nativeInRuns, ROOT, runCli } from "./helpers.js";
import { fixtureSettings, trainAgainstTorch } from "./torch-train.js";
import { checkRunData } from "../cli/preflight.js";
import { DEFAULT_SETTINGS } from "../worker/settings.js";

const DIR = join(ROOT, "test", "fixtures", "onnx", "opsnet");
const DATA = join(ROOT, "test", "fixtures", "torch", "data");

/** opsnet with its Dropout's ratio constant set to p (a DOUBLE scalar in the export). */
function withDropout(p: number): string {
  const m = fromBinary(ModelProtoSchema, readFileSync(join(DIR, "model.onnx")));
  const ratio = m.graph!.node.find((n) => n.name === "/drop/Constant")!.attribute.find((a) => a.name === "value")!.t!;
  expect(ratio.dataType).toBe(11);
  ratio.rawData = new Uint8Array(new Float64Array([p]).buffer);
  const path = join(mkdtempSync(join(tmpdir(), "syncbn-dropout-")), "model.onnx");
  writeFileSync(path, toBinary(ModelProtoSchema, m));
  return path;
}

/** opsnet with BatchNormalization node `node`'s momentum attribute set to m (ONNX's: 1 − PyTorch's momentum). */
function withBnMomentum(node: string, m: number): string {
  const model = fromBinary(ModelProtoSchema, readFileSync(join(DIR, "model.onnx")));
  const a = model.graph!.node.find((n) => n.name === node)!.attribute.find((x) => x.name === "momentum")!;
  expect(Math.fround(a.f)).toBe(Math.fround(0.9)); // torch.onnx.export wrote the module's 0.1
  a.f = m;
  const path = join(mkdtempSync(join(tmpdir(), "syncbn-bn-momentum-")), "model.onnx");
  writeFileSync(path, toBinary(ModelProtoSchema, model));
  return path;
}

/** Trains `model` from opsnet's init with the fixture's settings; returns weights.safetensors' tensors. */
async function train(model: string, extra: string[] = [], out = mkdtempSync(join(tmpdir(), "syncbn-opsnet-"))): Promise<Map<string, Uint8Array>> {
  const s = fixtureSettings(DIR);
  const r = await runCli(
    [
      "train", "--model", model, "--norm", "sync", "--data", DATA, ...(extra.includes("--resume") ? [] : ["--init", join(DIR, "init.safetensors")]), "--shuffle", "off",
      "--workers", String(s.workers), "--batch", String(s.batch), "--steps", String(s.steps), "--lr", String(s.lr), "--momentum", String(s.momentum),
      "--weight-decay", String(s.weightDecay), "--bn-eps", String(s.bnEps), "--bn-momentum", String(s.bnMomentum), "--out", out, ...extra, // a later --steps wins
    ],
    { timeoutMs: 240_000 },
  );
  expect(r.code, r.stderr).toBe(0);
  return new Map([...readSafetensors(join(out, "weights.safetensors")).tensors].map(([k, t]) => [k, new Uint8Array(t.data)]));
}

describe("the opsnet ONNX export against PyTorch, from the same initial weights", () => {
  for (const [fixture, norm, tensors] of [["opsnet", "sync", 23], ["opsnet", "local", 23], ["poolnet", "sync", 18], ["actnet", "sync", 16]] as const) {
    it(`ends ${fixture} within 1e-5 of PyTorch on every tensor, 4 workers × 4 with --norm ${norm}`, async () => {
      const dir = join(ROOT, "test", "fixtures", "onnx", fixture);
      const { worst, names } = await trainAgainstTorch({ dir, data: DATA, model: join(dir, "model.onnx"), norm, kernels: "wasm" });
      expect(names).toHaveLength(tensors); // PyTorch's state_dict: params, and per BN running_mean, running_var, num_batches_tracked
      // Measured 2.3e-7 (float32 against float64, 3 steps); 1e-5 leaves room for kernel rounding changes.
      expect(worst.diff, worst.name).toBeLessThan(1e-5);
    }, 300_000);
  }

  it("ends opsnet within 1e-5 of PyTorch with --threads 2 (grouped convs on WebAssembly kernels of one thread each)", async () => {
    const { worst } = await trainAgainstTorch({ dir: DIR, data: DATA, model: join(DIR, "model.onnx"), norm: "sync", kernels: "wasm", flags: ["--threads", "2"] });
    expect(worst.diff, worst.name).toBeLessThan(1e-5);
  }, 300_000);
});

describe("Dropout p = 0.5 in a whole run", () => {
  it("resumes bit for bit like the uninterrupted run (masks are a function of the step), and 2 processes of 2 ranks draw the masks of 4 processes", async () => {
    const model = withDropout(0.5);
    const a = await train(model);
    const cut = mkdtempSync(join(tmpdir(), "syncbn-opsnet-cut-"));
    await train(model, ["--steps", "2", "--checkpoint-every", "2"], cut);
    const b = await train(model, ["--resume", join(cut, "checkpoint.bin")], cut);
    const blocks = await train(model, ["--ranks-per-proc", "2", "--rank-grads", "exact"]);
    expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
    for (const [name, t] of a) {
      expect(Buffer.from(b.get(name)!).equals(Buffer.from(t)), `resumed ${name}`).toBe(true);
      expect(Buffer.from(blocks.get(name)!).equals(Buffer.from(t)), `ranks-per-proc 2 ${name}`).toBe(true);
    }
    // The masks act: fc ends far from the p = 0 run's (PyTorch's expected weights).
    const f32 = (u: Uint8Array) => new Float32Array(u.buffer, u.byteOffset, u.byteLength / 4);
    const p0 = safetensorsValues(join(DIR, "expected-sync.safetensors")).get("fc.weight")!.values;
    expect(relDiff(f32(a.get("fc.weight")!), p0)).toBeGreaterThan(1e-3);
  }, 600_000);
});

describe("grouped and depthwise convs on every kernel backend", () => {
  // A choice of kernel by thread count once made --threads change the bits of grouped convs (wasm on 1 thread, the
  // TypeScript twin on more); native ran them on wasm too. Now native, wasm (kept on one thread) or js, by backend.
  for (const kernels of nativeInRuns() ? (["native", "wasm", "js"] as const) : (["wasm", "js"] as const)) {
    it(`gives opsnet the same weights bit for bit on 1 and 2 threads, within 1e-5 of PyTorch (${kernels} kernels)`, async () => {
      const one = await train(join(DIR, "model.onnx"), ["--kernels", kernels, "--threads", "1"]);
      const two = await train(join(DIR, "model.onnx"), ["--kernels", kernels, "--threads", "2"]);
      for (const [name, t] of one) expect(Buffer.from(two.get(name)!).equals(Buffer.from(t)), name).toBe(true);
      const { worst } = await trainAgainstTorch({ dir: DIR, data: DATA, model: join(DIR, "model.onnx"), norm: "sync", kernels });
      expect(worst.diff, worst.name).toBeLessThan(1e-5);
    }, 600_000);
  }
});

describe("BatchNorm as users' models carry it: affine=False and a module's own momentum (bnvarnet)", () => {
  // bn1 (2d) and bn3 (1d) affine=False: no weight or bias in PyTorch's state_dict, γ = 1 and β = 0 fixed; bn2 momentum 0.01.
  const dir = join(ROOT, "test", "fixtures", "onnx", "bnvarnet");
  for (const kernels of nativeInRuns() ? (["native", "wasm", "js"] as const) : (["wasm", "js"] as const)) {
    for (const norm of ["sync", "local"] as const) {
      it(`ends bnvarnet within 1e-5 of PyTorch on every tensor, PyTorch's 18 and no other (${kernels} kernels, --norm ${norm})`, async () => {
        const { worst, names } = await trainAgainstTorch({ dir, data: DATA, model: join(dir, "model.onnx"), norm, kernels });
        expect(names).toHaveLength(18);
        expect(names.filter((n) => /^bn[13]\.(weight|bias)$/.test(n))).toEqual([]);
        expect(worst.diff, worst.name).toBeLessThan(1e-5);
      }, 300_000);
    }
  }
});

describe("a BatchNormalization node's own momentum (a module's BatchNorm2d(momentum=0.01))", () => {
  it("updates that layer's running statistics with it, bit for bit as --bn-momentum 0.01 would, and the other layers with the run's", async () => {
    const edited = withBnMomentum("/bn2/BatchNormalization", Math.fround(0.99));
    const own = await train(edited); // the fixture's --bn-momentum 0.1; bn2's node says 0.01
    const flag = await train(join(DIR, "model.onnx"), ["--bn-momentum", "0.01"]); // every layer at 0.01
    const plain = await train(join(DIR, "model.onnx")); // every layer at 0.1
    const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b));
    expect(same(flag.get("bn2.running_mean")!, plain.get("bn2.running_mean")!)).toBe(false); // the two momenta do differ here
    for (const [name, t] of own) {
      const ref = name === "bn2.running_mean" || name === "bn2.running_var" ? flag : plain;
      expect(same(t, ref.get(name)!), name).toBe(true);
    }
  }, 600_000);

  it("is what the launcher's preflight hands the coordinator's copy of the running statistics", async () => {
    const s = { ...DEFAULT_SETTINGS, model: withBnMomentum("/bn1/BatchNormalization", Math.fround(0.997)), data: DATA, trainSize: 64, testSize: 16 };
    const plan = await checkRunData(s, 2, undefined);
    expect(plan.layerConventions.map((c) => c && [c.momentum, c.momentumStyle])).toEqual([[0.003, "torch"], [0.1, "torch"], [0.1, "torch"]]);
  });
});
