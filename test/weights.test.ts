// Weights in and out (worker/weights.ts), the unshuffled sample order
// (worker/data/order.ts), and the CLI around them: the state_dict names of mlp
// and cnn, `weights.safetensors` of a real run read back by independent readers
// (a few lines of TypeScript here, Python's json+struct, and PyTorch's
// load_state_dict(strict=True) when installed), and `--init` refusals.

import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseNorm } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { readCheckpoint } from "../worker/checkpoint.js";
import { unshuffledOrder } from "../worker/data/order.js";
import { buildModel, type ModelKind } from "../worker/nn/model.js";
import { encodeSafetensors, float32Tensor, type TensorBytes } from "../worker/safetensors.js";
import { DEFAULT_SETTINGS, conventionsOf } from "../worker/settings.js";
import { loadInit, stateDict, stateTensors } from "../worker/weights.js";
import { ROOT, runCli } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));
const PYTHON = "/usr/bin/python3";
const hasPython = existsSync(PYTHON);
const hasTorch = hasPython && spawnSync(PYTHON, ["-c", "import torch"]).status === 0;

function model(kind: ModelKind, norm = "sync", seed = 1) {
  return buildModel({ kind, inShape: [1, 28, 28], classes: 10, norm: parseNorm(norm), conventions: conventionsOf(DEFAULT_SETTINGS), sync: null, seed });
}

/** An independent minimal reader: header JSON, then each tensor by its offsets (F32 → numbers, I64 → bigint). */
function readByHand(path: string): Map<string, { dtype: string; shape: number[]; values: number[] }> {
  const b = readFileSync(path);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, { dtype: string; shape: number[]; values: number[] }>();
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [s, e] = t.data_offsets;
    const values: number[] = [];
    for (let o = 8 + n + s; o < 8 + n + e; o += t.dtype === "I64" ? 8 : 4) values.push(t.dtype === "I64" ? Number(b.readBigInt64LE(o)) : b.readFloatLE(o));
    out.set(name, { dtype: t.dtype, shape: t.shape, values });
  }
  return out;
}

describe("state_dict names", () => {
  it("names mlp's and cnn's tensors as a PyTorch nn.Module with their layer names would", () => {
    const bn = (l: string) => [`${l}.weight`, `${l}.bias`, `${l}.running_mean`, `${l}.running_var`, `${l}.num_batches_tracked`];
    const lin = (l: string) => [`${l}.weight`, `${l}.bias`];
    expect(stateDict(model("mlp")).map((e) => e.name)).toEqual([...lin("fc1"), ...bn("bn1"), ...lin("fc2"), ...bn("bn2"), ...lin("fc3")]);
    expect(stateDict(model("cnn")).map((e) => e.name)).toEqual([...lin("conv1"), ...bn("bn1"), ...lin("conv2"), ...bn("bn2"), ...lin("fc1"), ...bn("bn3"), ...lin("fc2")]);
    const shapes = Object.fromEntries(stateDict(model("cnn")).map((e) => [e.name, e.shape]));
    expect(shapes).toMatchObject({ "conv1.weight": [16, 1, 3, 3], "conv2.weight": [32, 16, 3, 3], "fc1.weight": [64, 1568], "fc2.weight": [10, 64], "bn3.running_var": [64], "bn1.num_batches_tracked": [] });
    // GroupNorm has weight and bias only; no norm layer, no bn names.
    expect(stateDict(model("cnn", "groupnorm:8")).map((e) => e.name)).toContain("bn2.weight");
    expect(stateDict(model("cnn", "groupnorm:8")).map((e) => e.name)).not.toContain("bn2.running_mean");
    expect(stateDict(model("mlp", "none")).map((e) => e.name)).toEqual([...lin("fc1"), ...lin("fc2"), ...lin("fc3")]);
  });
});

describe("--init", () => {
  it("loads every parameter, running statistic and count, widening F16 exactly", () => {
    const src = model("cnn", "sync", 7);
    const bn0 = src.bnLayers[0]!;
    bn0.runningMean.fill(0.25);
    bn0.runningVar.fill(3);
    bn0.tracked = 12;
    const file = stateTensors(src);
    const half: TensorBytes = { dtype: "F16", shape: [10], data: new Uint8Array(20) };
    new DataView(half.data.buffer).setUint16(0, 0x3c00, true); // 1.0
    file.set("fc2.bias", half);
    const dst = model("cnn", "sync", 8);
    loadInit(dst, { tensors: file, metadata: {} }, "f", "cnn");
    expect(dst.params.find((p) => p.name === "conv1.weight")!.value).toEqual(src.params.find((p) => p.name === "conv1.weight")!.value);
    expect([...dst.params.find((p) => p.name === "fc2.bias")!.value.slice(0, 2)]).toEqual([1, 0]);
    expect([dst.bnLayers[0]!.runningMean[0], dst.bnLayers[0]!.runningVar[5], dst.bnLayers[0]!.tracked]).toEqual([0.25, 3, 12]);
  });

  it("keeps the default running statistics when the file holds parameters only", () => {
    const file = new Map([...stateTensors(model("mlp", "sync", 3))].filter(([n]) => !/running|num_batches/.test(n)));
    const dst = model("mlp", "sync", 4);
    loadInit(dst, { tensors: file, metadata: {} }, "f", "mlp");
    expect([dst.bnLayers[1]!.runningMean[0], dst.bnLayers[1]!.runningVar[0], dst.bnLayers[1]!.tracked]).toEqual([0, 1, 0]);
  });

  it("names every missing, extra, misshaped or unusable tensor in one line and changes nothing", () => {
    const file = stateTensors(model("cnn", "sync", 5));
    file.delete("fc1.bias");
    file.delete("bn2.running_var");
    file.set("head.weight", float32Tensor([2], [1, 2]));
    file.set("conv2.weight", float32Tensor([32, 16, 5, 5], new Float32Array(32 * 16 * 25)));
    file.set("fc2.bias", float32Tensor([10], [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    const dst = model("cnn", "sync", 6);
    const before = dst.params.map((p) => Float32Array.from(p.value));
    let err: SyncbnError | null = null;
    try {
      loadInit(dst, { tensors: file, metadata: {} }, "w.safetensors", "--model cnn --norm sync");
    } catch (e) {
      err = e as SyncbnError;
    }
    expect(err?.code).toBe(ErrorCode.BadConfig);
    expect(err!.message).not.toContain("\n");
    expect(err!.message).toMatch(/--init w\.safetensors does not fit --model cnn --norm sync: missing bn2\.running_var, fc1\.bias; extra head\.weight; misshaped conv2\.weight \(file 32×16×5×5, model 32×16×3×3\); unusable fc2\.bias\[0\] is NaN/);
    dst.params.forEach((p, i) => expect(p.value).toEqual(before[i]));
  });
});

describe("--init values", () => {
  /** An F64 tensor of the given shape and values. */
  const f64 = (shape: number[], values: number[]): TensorBytes => {
    const data = new Uint8Array(8 * values.length);
    values.forEach((v, i) => new DataView(data.buffer).setFloat64(8 * i, v, true));
    return { dtype: "F64", shape, data };
  };

  it("refuses an F64 value that float32 cannot hold (1e300) and a negative running variance, naming tensor and index", () => {
    const file = stateTensors(model("mlp", "sync", 5));
    const big = Array.from({ length: 10 }, () => 0.5);
    big[4] = 1e300;
    file.set("fc3.bias", f64([10], big));
    const variance = Array.from({ length: 128 }, () => 1);
    variance[7] = -2;
    file.set("bn2.running_var", f64([128], variance));
    const dst = model("mlp", "sync", 6);
    const before = dst.params.map((p) => Float32Array.from(p.value));
    expect(() => loadInit(dst, { tensors: file, metadata: {} }, "w.safetensors", "--model mlp --norm sync")).toThrow(
      /unusable bn2\.running_var\[7\] is -2, a negative variance; fc3\.bias\[4\] is 1e\+300, which overflows float32/,
    );
    dst.params.forEach((p, i) => expect(p.value).toEqual(before[i]));
  });

  it("refuses the F64 1e300 in the launcher: one line, exit 2, before any worker starts", async () => {
    const file = stateTensors(model("mlp", "sync", 5));
    const big = Array.from({ length: 10 }, () => 0.5);
    big[4] = 1e300;
    file.set("fc3.bias", f64([10], big));
    const path = join(tmp("init-f64"), "w.safetensors");
    writeFileSync(path, encodeSafetensors(file));
    const r = await runCli(["train", "--model", "mlp", "--init", path, "--workers", "2", "--batch", "4", "--steps", "1", "--train-size", "64", "--test-size", "16", "--out", tmp("init-f64-out")], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(/SYNCBN_ERR_BAD_CONFIG: --init .*w\.safetensors does not fit --model mlp --norm sync: unusable fc3\.bias\[4\] is 1e\+300, which overflows float32/);
  }, 90_000);
});

describe("--shuffle off sample order", () => {
  /** PyTorch: DistributedSampler(shuffle=False, drop_last=True) → DataLoader(batch_size=B, drop_last=True). */
  function torchOrder(count: number, world: number, batch: number, rank: number): number[][] {
    const perRank = Math.floor(count / world);
    const indices = Array.from({ length: perRank * world }, (_, i) => i).filter((i) => i % world === rank);
    const batches: number[][] = [];
    for (let t = 0; t + batch <= indices.length; t += batch) batches.push(indices.slice(t, t + batch));
    return batches;
  }

  it("gives rank k's t-th batch the samples k + W·(t·B + j), as PyTorch's DistributedSampler with drop_last", () => {
    for (const [count, world, batch] of [[64, 4, 4], [70, 4, 4], [14, 4, 2], [10, 3, 1], [1000, 8, 16]] as const) {
      const order = unshuffledOrder(count, world, batch);
      expect([...order].sort((a, b) => a - b)).toEqual(Array.from({ length: count }, (_, i) => i)); // a permutation
      const steps = Math.floor(count / (world * batch));
      for (let k = 0; k < world; k++) {
        const ours = Array.from({ length: steps }, (_, t) => [...order.subarray((t * world + k) * batch, (t * world + k + 1) * batch)]);
        expect(ours, `${count} ${world} ${batch} rank ${k}`).toEqual(torchOrder(count, world, batch, k));
        if (steps > 0) expect(ours[steps - 1]![batch - 1]).toBe(k + world * ((steps - 1) * batch + batch - 1));
      }
    }
  });
});

describe("weights.safetensors of a real run", () => {
  it("holds every parameter, running statistic and count of the final model, as independent readers see them", async () => {
    const out = tmp("w");
    const r = await runCli(["train", "--model", "cnn", "--workers", "2", "--batch", "4", "--steps", "3", "--train-size", "64", "--test-size", "16", "--out", out]);
    expect(r.code, r.stderr).toBe(0);
    const ck = readCheckpoint(join(out, "checkpoint.bin"));
    const expected = new Map<string, number[]>();
    ck.header.params.forEach((p, i) => expected.set(p.name, [...ck.params[i]!]));
    ck.header.bn.forEach((b, i) => {
      expected.set(`${b.name}.running_mean`, [...Float32Array.from(ck.bn[i]!.mean)]);
      expected.set(`${b.name}.running_var`, [...Float32Array.from(ck.bn[i]!.var)]);
      expected.set(`${b.name}.num_batches_tracked`, [b.tracked]);
    });
    const names = stateDict(model("cnn")).map((e) => e.name);
    const byHand = readByHand(join(out, "weights.safetensors"));
    expect([...byHand.keys()].sort()).toEqual([...names].sort());
    for (const e of stateDict(model("cnn"))) {
      const t = byHand.get(e.name)!;
      expect([t.dtype, t.shape], e.name).toEqual([e.kind === "count" ? "I64" : "F32", e.shape]);
      expect(t.values, e.name).toEqual(expected.get(e.name));
    }
    expect(expected.get("bn1.num_batches_tracked")).toEqual([3]);

    if (!hasPython) {
      console.warn(`skipped the Python reader: no ${PYTHON}`);
      return;
    }
    // Python's json + struct only: prints name, dtype, shape and the sum of the values (float64) per tensor.
    const py = [
      "import json, struct, sys",
      "b = open(sys.argv[1], 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])",
      "assert n % 8 == 0 and h.pop('__metadata__')['format'] == 'pt'",
      "ends = sorted(tuple(t['data_offsets']) for t in h.values()); assert ends[0][0] == 0 and ends[-1][1] == len(b) - 8 - n",
      "assert all(a[1] == c[0] for a, c in zip(ends, ends[1:]))",
      "for k, t in h.items():",
      "  s, e = t['data_offsets']; f = {'F32': 'f', 'I64': 'q'}[t['dtype']]",
      "  v = struct.unpack('<%d%s' % ((e - s) // struct.calcsize(f), f), b[8 + n + s:8 + n + e])",
      "  print(json.dumps([k, t['dtype'], t['shape'], sum(v)]))",
    ].join("\n");
    const lines = execFileSync(PYTHON, ["-c", py, join(out, "weights.safetensors")], { encoding: "utf8" }).trim().split("\n");
    expect(lines.length).toBe(names.length);
    for (const l of lines) {
      const [name, , shape, sum] = JSON.parse(l) as [string, string, number[], number];
      expect(shape).toEqual(stateDict(model("cnn")).find((e) => e.name === name)!.shape);
      expect(sum).toBeCloseTo(expected.get(name)!.reduce((a, v) => a + v, 0), 3);
    }

    if (!hasTorch) {
      console.warn("skipped the PyTorch load_state_dict(strict=True) check: torch is not installed");
      return;
    }
    // The file into PyTorch's own cnn (scripts/make-torch-fixtures.py) with strict=True.
    const torchPy = [
      "import importlib.util, json, struct, sys, numpy as np, torch",
      `spec = importlib.util.spec_from_file_location('fx', ${JSON.stringify(join(ROOT, "scripts", "make-torch-fixtures.py"))}); fx = importlib.util.module_from_spec(spec); spec.loader.exec_module(fx)`,
      "b = open(sys.argv[1], 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); h.pop('__metadata__')",
      "sd = {k: torch.from_numpy(np.frombuffer(b[8 + n + t['data_offsets'][0]:8 + n + t['data_offsets'][1]], {'F32': '<f4', 'I64': '<i8'}[t['dtype']]).reshape(t['shape']).copy()) for k, t in h.items()}",
      "m = fx.Cnn(); m.load_state_dict(sd, strict=True); m.eval()",
      "print(float(m.bn3.running_var.sum()), int(m.bn1.num_batches_tracked))",
    ].join("\n");
    const [varSum, tracked] = execFileSync(PYTHON, ["-c", torchPy, join(out, "weights.safetensors")], { encoding: "utf8" }).trim().split(" ").map(Number);
    expect(tracked).toBe(3);
    expect(varSum).toBeCloseTo(expected.get("bn3.running_var")!.reduce((a, v) => a + v, 0), 3);
  });
});

describe("syncbn train --init refusals", () => {
  const base = ["train", "--model", "mlp", "--workers", "2", "--batch", "4", "--steps", "1", "--train-size", "64", "--test-size", "16"];

  it("refuses, with exit 2 and before anything starts, a file that does not fit the model, naming each tensor", async () => {
    const file = join(tmp("init"), "w.safetensors");
    const tensors = stateTensors(model("mlp"));
    tensors.delete("fc3.bias");
    tensors.set("fc9.weight", float32Tensor([1], [0]));
    writeFileSync(file, encodeSafetensors(tensors));
    const out = join(tmp("init-out"), "run");
    const r = await runCli([...base, "--init", file, "--out", out]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(/SYNCBN_ERR_BAD_CONFIG: --init .*w\.safetensors does not fit --model mlp --norm sync: missing fc3\.bias; extra fc9\.weight/);
    expect(existsSync(out)).toBe(false);
  });

  it("refuses a truncated file with exit 2, naming the file and the problem", async () => {
    const file = join(tmp("init"), "cut.safetensors");
    writeFileSync(file, encodeSafetensors(stateTensors(model("mlp"))).subarray(0, 5000));
    const r = await runCli([...base, "--init", file, "--out", tmp("o")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/SYNCBN_ERR_BAD_CONFIG: --init .*cut\.safetensors: not a valid safetensors file: .*run(s)? past/);
  });

  it("refuses to resume a shuffled run with --shuffle off: the sample order would not continue", async () => {
    const out = tmp("sh");
    expect((await runCli([...base, "--out", out])).code).toBe(0);
    const r = await runCli([...base, "--steps", "2", "--shuffle", "off", "--resume", join(out, "checkpoint.bin"), "--out", tmp("sh2")]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--shuffle was "on", now "off"/);
  });

  it("refuses --init together with --resume, saying how they differ", async () => {
    const r = await runCli([...base, "--init", "a.safetensors", "--resume", "b.bin", "--out", tmp("o")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--init and --resume both given: --resume continues a run .* --init starts a new one from weights/);
  });

  it("starts from the file's weights: a one-step run from a run's weights.safetensors sees its parameters at step 0", async () => {
    const first = tmp("a");
    expect((await runCli([...base, "--out", first, "--seed", "5"])).code).toBe(0);
    const second = tmp("b");
    const r = await runCli([...base, "--out", second, "--seed", "9", "--init", join(first, "weights.safetensors"), "--lr", "1e-9", "--momentum", "0", "--weight-decay", "0"]);
    expect(r.code, r.stderr).toBe(0);
    const a = readByHand(join(first, "weights.safetensors"));
    const b = readByHand(join(second, "weights.safetensors"));
    // lr 1e-9: the weights barely move, whatever --seed says; the counts continue from the file's.
    const w1 = a.get("fc1.weight")!.values, w2 = b.get("fc1.weight")!.values;
    expect(w1.reduce((m, v, i) => Math.max(m, Math.abs(v - w2[i]!)), 0)).toBeLessThan(1e-6);
    expect(w1.length).toBe(784 * 256);
    expect(b.get("bn1.num_batches_tracked")!.values).toEqual([a.get("bn1.num_batches_tracked")!.values[0]! + 1]);
  });
});
