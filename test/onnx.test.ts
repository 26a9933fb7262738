// `--model model.onnx`: PyTorch training-mode exports (scripts/make-onnx-fixtures.py,
// run by hand; no PyTorch needed here) trained by 4 real worker processes end within
// 1e-4 of PyTorch's float64 training on every tensor of weights.safetensors; the
// exported resnet:1 trains bit for bit like the built-in one; and every refusal is
// one line naming the problem, before any worker starts.

import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AttributeProto_AttributeType, AttributeProtoSchema, ModelProtoSchema, NodeProtoSchema, TensorProtoSchema, ValueInfoProtoSchema } from "onnx-buf";
import { relDiff, safetensorsValues } from "./compare.js";
import { describe, expect, it } from "vitest";
import { readSafetensors } from "../worker/safetensors.js";
import { ROOT, runCli, scratchDir, startCli, waitForOutput } from "./helpers.js";

const FIXTURES = join(ROOT, "test", "fixtures", "onnx");
const DATA = join(ROOT, "test", "fixtures", "torch", "data");
/** The training settings make-torch-fixtures.py (and so make-onnx-fixtures.py) uses. */
const SETTINGS = ["--workers", "4", "--batch", "4", "--steps", "3", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "5e-4", "--bn-eps", "1e-5", "--bn-momentum", "0.1"];



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
        const ours = safetensorsValues(await train(join(dir, "model.onnx"), norm, join(dir, "init.safetensors")));
        const theirs = safetensorsValues(join(dir, `expected-${norm}.safetensors`));
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

type ModelProto = ReturnType<typeof fromBinary<typeof ModelProtoSchema>>;

/** The resproj (or mlp) fixture decoded, edited by `edit`, re-encoded to a temporary model.onnx. */
function edited(fixture: string, edit: (m: ModelProto) => void): string {
  const m = fromBinary(ModelProtoSchema, readFileSync(join(FIXTURES, fixture, "model.onnx")));
  edit(m);
  return writeModel(toBinary(ModelProtoSchema, m));
}

function writeModel(bytes: Uint8Array): string {
  const path = join(mkdtempSync(join(tmpdir(), "syncbn-onnx-bad-")), "model.onnx");
  writeFileSync(path, bytes);
  return path;
}

/** Runs `syncbn train` on the model; expects exit 2 before any worker started, and returns stderr. */
async function refused(model: string, norm = "sync"): Promise<string> {
  const out = mkdtempSync(join(tmpdir(), "syncbn-onnx-refused-"));
  const r = await runCli(["train", "--model", model, "--norm", norm, "--data", DATA, "--workers", "2", "--batch", "4", "--steps", "1", "--out", out], { timeoutMs: 120_000 });
  expect(r.code, r.stderr).toBe(2);
  expect(r.stderr).not.toMatch(/rank \d/);
  return r.stderr;
}

const node = (m: ModelProto, opType: string) => m.graph!.node.find((n) => n.opType === opType)!;

/** What an eval-mode export leaves of BN: every BatchNormalization becomes an Identity of its input. */
function withoutBatchNorm(m: ModelProto): void {
  for (const n of m.graph!.node.filter((x) => x.opType === "BatchNormalization")) {
    n.opType = "Identity";
    n.input = [n.input[0]!];
    n.output = [n.output[0]!];
    n.attribute = [];
  }
}

describe("--model model.onnx refuses what it cannot train, one line per problem, before any worker starts", () => {
  it("refuses an eval-mode export (no BatchNormalization) under a BN mode, showing the training-mode export line", async () => {
    const path = edited("resproj", withoutBatchNorm);
    const err = await refused(path, "sync");
    expect(err).toMatch(/no BatchNormalization node/);
    expect(err).toContain("training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False");
  }, 150_000);

  it("trains a graph without BatchNormalization under --norm none", async () => {
    const path = edited("resproj", withoutBatchNorm);
    const out = mkdtempSync(join(tmpdir(), "syncbn-onnx-none-"));
    const r = await runCli(["train", "--model", path, "--norm", "none", "--data", DATA, "--workers", "2", "--batch", "4", "--steps", "1", "--out", out], { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    expect([...readSafetensors(join(out, "weights.safetensors")).tensors.keys()].sort()).toEqual(["conv1.weight", "conv2.weight", "conv3.weight", "fc.bias", "fc.weight", "proj.0.weight"]);
  }, 150_000);

  it("refuses an unsupported op by node name and op type, with the supported-op list", async () => {
    const path = edited("resproj", (m) => void (node(m, "Relu").opType = "Softsign"));
    const err = await refused(path);
    expect(err).toMatch(/node "\/Relu" \(Softsign\): unsupported op; supported ops: Conv \(grouped and depthwise too\), BatchNormalization/);
  }, 150_000);

  it("refuses a dilated convolution and a group that does not divide the channels, one line each", async () => {
    const path = edited("resproj", (m) => {
      const convs = m.graph!.node.filter((n) => n.opType === "Conv");
      convs[0]!.attribute.find((a) => a.name === "dilations")!.ints = [2n, 2n];
      convs[1]!.attribute.find((a) => a.name === "group")!.i = 3n;
    });
    const err = await refused(path);
    expect(err).toMatch(/node "\/conv1\/Conv" \(Conv\): dilation 2×2 is not supported/);
    expect(err).toMatch(/node "\/conv2\/Conv" \(Conv\): group 3 does not divide the weight's 8 output channels/);
  }, 150_000);

  it("refuses a BatchNorm whose scale and bias are constants other than affine=False's 1 and 0, naming the node", async () => {
    const path = edited("resproj", (m) => {
      const bn = node(m, "BatchNormalization");
      const channels = m.graph!.initializer.find((t) => t.name === bn.input[1])!.dims[0]!;
      for (const [i, value] of [[1, 2], [2, 0]] as const) {
        const out = `${bn.name}/Constant_${i}_output_0`;
        const t = create(TensorProtoSchema, { dims: [channels], dataType: 1, floatData: Array.from({ length: Number(channels) }, () => value) });
        m.graph!.node.unshift(create(NodeProtoSchema, { name: `${bn.name}/Constant_${i}`, opType: "Constant", output: [out], attribute: [create(AttributeProtoSchema, { name: "value", type: AttributeProto_AttributeType.TENSOR, t })] }));
        bn.input[i] = out;
      }
    });
    expect(await refused(path)).toMatch(/node "[^"]*BatchNormalization" \(BatchNormalization\): scale and bias are constants \(a BatchNorm with affine=False\) but not 1 and 0/);
  }, 150_000);

  it("refuses a truncated file and a file that is not ONNX", async () => {
    const bytes = readFileSync(join(FIXTURES, "resproj", "model.onnx"));
    expect(await refused(writeModel(bytes.subarray(0, bytes.length - 1000)))).toMatch(/model\.onnx: truncated ONNX file \(premature EOF\)/);
    expect(await refused(writeModel(Buffer.from("name,label\nshirt,6\n")))).toMatch(/model\.onnx: not an ONNX file \(illegal tag/);
  }, 150_000);

  it("refuses a graph with two inputs", async () => {
    const path = edited("resproj", (m) => {
      m.graph!.input.push(create(ValueInfoProtoSchema, { ...m.graph!.input[0]!, name: "mask" }));
    });
    expect(await refused(path)).toMatch(/the graph has 2 inputs \(x, mask\)/);
  }, 150_000);

  it("refuses an input shape and a class count that do not match the data, with both shapes", async () => {
    const path = edited("resproj", (m) => {
      const dims = (v: (typeof m.graph)["input"][number]) => (v.type!.value as { value: { shape: { dim: { value: { case: string; value: bigint } }[] } } }).value.shape.dim;
      dims(m.graph!.input[0]!)[1]!.value = { case: "dimValue", value: 3n };
      dims(m.graph!.output[0]!)[1]!.value = { case: "dimValue", value: 5n };
    });
    const err = await refused(path);
    expect(err).toMatch(/input is \(3, 28, 28\) per sample but the data's samples are \(1, 28, 28\)/);
    expect(err).toMatch(/output is \(5\) per sample but the data has 10 classes/);
  }, 150_000);

  it("refuses a reshape whose shape does not fold to a flatten", async () => {
    const path = edited("mlp", (m) => {
      const gather = node(m, "Gather");
      gather.input = [gather.input[0]!, "x"]; // indices from the data: not a constant
    });
    expect(await refused(path)).toMatch(/node "\/Gather" \(Gather\): .*does not fold/);
  }, 150_000);
});

describe("--model model.onnx across hosts", () => {
  it("refuses a worker whose model file differs (by its hash, SYNCBN_ERR_CONVENTIONS naming model) and admits the same bytes under another path", async () => {
    const coord = startCli(["coordinator", "--world", "2", "--port", "0", "--token", "tok", "--round-timeout", "60000"], { timeoutMs: 120_000, cwd: scratchDir("coordinator") });
    const procs = [coord];
    try {
      await waitForOutput(coord, (o) => /listening on ws:\/\/\S+/.test(o), 15_000);
      const url = /listening on (ws:\/\/\S+)/.exec(coord.stdout())![1]!;
      const worker = (rank: number, model: string) =>
        startCli(["worker", "--coordinator", url, "--rank", String(rank), "--world", "2", "--token", "tok", "--model", model, "--data", DATA, "--batch", "4", "--steps", "1"], { timeoutMs: 120_000 });
      const here = join(mkdtempSync(join(tmpdir(), "syncbn-onnx-hostB-")), "copy.onnx");
      copyFileSync(join(FIXTURES, "resproj", "model.onnx"), here);
      const w0 = worker(0, join(FIXTURES, "resproj", "model.onnx"));
      procs.push(w0);
      await waitForOutput(coord, (o) => /worker rank 0 joined/.test(o), 30_000);
      const odd = await worker(1, join(FIXTURES, "vgg", "model.onnx")).done;
      expect(odd.code).toBe(1);
      expect(odd.stderr).toMatch(/SYNCBN_ERR_CONVENTIONS: \[rank 1\] .*model: run has "onnx sha256:[0-9a-f]{16}\.onnx", worker has "onnx sha256:[0-9a-f]{16}\.onnx"/);
      const w1 = worker(1, here);
      procs.push(w1);
      const [r0, r1] = await Promise.all([w0.done, w1.done]);
      expect(r0.code, r0.stderr).toBe(0);
      expect(r1.code, r1.stderr).toBe(0);
    } finally {
      for (const p of procs) p.child.kill("SIGKILL");
    }
  }, 150_000);
});

describe("--model model.onnx checkpoints", () => {
  it("resumes an imported model from its checkpoint bit for bit like the uninterrupted run", async () => {
    const model = join(FIXTURES, "resproj", "model.onnx");
    const args = ["--model", model, "--norm", "sync", "--data", DATA, "--workers", "2", "--batch", "4", "--shuffle", "off", "--checkpoint-every", "2"];
    const straight = mkdtempSync(join(tmpdir(), "syncbn-onnx-straight-"));
    const cut = mkdtempSync(join(tmpdir(), "syncbn-onnx-cut-"));
    const a = await runCli(["train", ...args, "--steps", "4", "--out", straight], { timeoutMs: 120_000 });
    expect(a.code, a.stderr).toBe(0);
    const b1 = await runCli(["train", ...args, "--steps", "2", "--out", cut], { timeoutMs: 120_000 });
    expect(b1.code, b1.stderr).toBe(0);
    const b2 = await runCli(["train", ...args, "--steps", "4", "--resume", join(cut, "checkpoint.bin"), "--out", cut], { timeoutMs: 120_000 });
    expect(b2.code, b2.stderr).toBe(0);
    const x = readSafetensors(join(straight, "weights.safetensors")).tensors;
    const y = readSafetensors(join(cut, "weights.safetensors")).tensors;
    expect([...y.keys()].sort()).toEqual([...x.keys()].sort());
    expect(x.has("proj.1.running_var")).toBe(true);
    for (const [name, t] of x) expect(Buffer.from(y.get(name)!.data).equals(Buffer.from(t.data)), name).toBe(true);
  }, 300_000);
});
