// Whole models through the ONNX importer: the logits and every gradient of imported
// models (opsnet, poolnet, actnet, and small ShuffleNetV2-, MobileNetV2-, EfficientNet-, ResNet-stem-,
// Inception-like and TensorFlow-"same"-padded nets) against PyTorch's float64 ones for
// one batch (scripts/make-onnx-ops-fixtures.py), and the importer's one-line refusals
// of what the new ops cannot map. Op by op: onnx-ops.test.ts. No PyTorch needed here.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema } from "onnx-buf";
import { describe, expect, it } from "vitest";
import { TORCH_CONVENTIONS, parseNorm } from "../shared/config.js";
import { KERNEL_BACKENDS } from "../worker/nn/kernels/backend.js";
import { buildModel, onnxNodeConventions, torchMomentumOf } from "../worker/nn/model.js";
import { decodeOnnx, importOnnx, KNOWN_OPS } from "../worker/nn/onnx-import.js";
import { relDiff, safetensorsValues } from "./compare.js";
import { ROOT } from "./helpers.js";

const OPSNET_DIR = join(ROOT, "test", "fixtures", "onnx", "opsnet");

describe("models imported from ONNX against PyTorch, one batch", () => {
  const models = [
    ...["opsnet", "poolnet", "actnet", "bnvarnet"].map((f) => [f, join(ROOT, "test", "fixtures", "onnx", f)]),
    ...["shufflev2", "mobilev2", "samepad", "efflike", "resstem", "incep"].map((f) => [f, join(ROOT, "test", "fixtures", "onnx-ops", f)]),
  ];
  for (const [fixture, dir] of models) for (const backend of KERNEL_BACKENDS) {
    it(`gives ${fixture}'s logits within 1e-6 and every gradient within 1e-4 (relative) of PyTorch's float64 ones (${backend} kernels)`, async () => {
      const OPSNET = dir!;
      const prev = process.env.SYNCBN_KERNELS;
      process.env.SYNCBN_KERNELS = backend;
      try {
        const torch = safetensorsValues(join(OPSNET, "onestep.safetensors"));
        const model = buildModel({ kind: `${OPSNET}/model.onnx`, inShape: [1, 28, 28], classes: 10, norm: parseNorm("local"), conventions: TORCH_CONVENTIONS, sync: null, seed: 1 });
        const x = Float32Array.from(torch.get("x")!.values), labels = torch.get("y")!.values, n = labels.length;
        const logits = Float32Array.from(await model.forward(x, n, true));
        const dLogits = new Float32Array(logits.length);
        for (let s = 0; s < n; s++) {
          const row = Array.from(logits.subarray(s * 10, s * 10 + 10)), max = Math.max(...row);
          const z = row.reduce((a, v) => a + Math.exp(v - max), 0);
          row.forEach((v, c) => (dLogits[s * 10 + c] = (Math.exp(v - max) / z - (c === labels[s] ? 1 : 0)) / n));
        }
        await model.backward(dLogits, n);
        const report = [`logits ${relDiff(logits, torch.get("logits")!.values).toExponential(2)}`];
        expect(relDiff(logits, torch.get("logits")!.values)).toBeLessThan(1e-6); // measured 8e-8: float32 vs float64
        const names = model.params.map((p) => p.name).sort();
        expect(names).toEqual([...torch.keys()].filter((k) => k.startsWith("grad.")).map((k) => k.slice(5)).sort());
        // A bias followed by BN has a true gradient of 0 (PyTorch's ~1e-18; ours float32 cancellation, measured up
        // to 6e-7 of the model's largest gradient): each tensor's error is scaled by its own largest value, but by
        // no less than 1e-2 of the largest gradient of the model.
        const floor = 1e-2 * Math.max(...model.params.map((p) => Math.max(...torch.get(`grad.${p.name}`)!.values.map(Math.abs))));
        const diffs = model.params.map((p) => {
          const t = torch.get(`grad.${p.name}`)!.values;
          const d = relDiff(p.grad, t) * Math.max(...t.map(Math.abs));
          return { name: p.name, d: d / Math.max(floor, ...t.map(Math.abs)) };
        });
        report.push(...diffs.map((x) => `${x.name} ${x.d.toExponential(2)}`));
        // A tensor PyTorch gives no gradient at all would compare 0 with 0 and test nothing (a slope no input reaches).
        for (const p of model.params) expect(Math.max(...torch.get(`grad.${p.name}`)!.values.map(Math.abs)), p.name).toBeGreaterThan(0);
        console.log(`${fixture} one batch (${backend}): ${report.join(", ")}`);
        for (const x of diffs) expect(x.d, x.name).toBeLessThan(1e-4);
      } finally {
        if (prev === undefined) delete process.env.SYNCBN_KERNELS;
        else process.env.SYNCBN_KERNELS = prev;
      }
    });
  }
});

describe("the importer refuses what the new ops cannot map, one line naming the node", () => {
  type ModelProto = ReturnType<typeof fromBinary<typeof ModelProtoSchema>>;
  const problems = (edit: (m: ModelProto) => void, fixture = "opsnet"): string => {
    const m = fromBinary(ModelProtoSchema, readFileSync(join(ROOT, "test", "fixtures", "onnx", fixture, "model.onnx")));
    edit(m);
    const path = "edited.onnx";
    try {
      importOnnx(decodeOnnx(toBinary(ModelProtoSchema, m), path), path, [1, 28, 28], 10, false, (_g, _name, v) => v);
    } catch (e) {
      return (e as Error).message;
    }
    return "";
  };
  const nodeNamed = (m: ModelProto, name: string) => m.graph!.node.find((n) => n.name === name)!;

  it("refuses a Softmax head, telling the user to end with the logits", () => {
    const err = problems((m) => void (nodeNamed(m, "/Sigmoid_1").opType = "Softmax"));
    expect(err).toMatch(/^SYNCBN_ERR_BAD_CONFIG: --model edited\.onnx: node "\/Sigmoid_1" \(Softmax\): unsupported op: syncbn's loss applies the softmax itself/);
    expect(err.split("\n")).toHaveLength(1);
  });

  it("refuses a Concat along the batch axis and a Mul of shapes that do not broadcast", () => {
    const cat = problems((m) => void (nodeNamed(m, "/Concat").attribute.find((a) => a.name === "axis")!.i = 0n));
    expect(cat).toMatch(/node "\/Concat" \(Concat\): only a concatenation of activations of one rank along a non-batch axis/);
    const err = problems((m) => void (nodeNamed(m, "/Mul_3").input[1] = "/LeakyRelu_output_0")); // (16, 14, 14) × (12, 14, 14)
    expect(err).toMatch(/node "\/Mul_3" \(Mul\): shapes \(n, 16, 14, 14\) and \(n, 12, 14, 14\) do not broadcast/);
  });

  it("refuses arithmetic with a state_dict tensor (parameter or buffer: the export does not say which)", () => {
    const err = problems((m) => {
      const c = nodeNamed(m, "/Constant_7").attribute.find((a) => a.name === "value")!.t!;
      m.graph!.initializer.push({ ...c, name: "layer.scale" });
      nodeNamed(m, "/Add").input[1] = "layer.scale";
    });
    expect(err).toMatch(/node "\/Add" \(Add\): input 1 comes from the model tensor "layer\.scale" \(an nn\.Parameter or a buffer/);
    expect(err.split("\n")).toHaveLength(1);
    // The same through a folded reshape (x + self.scale.view(1, -1, 1, 1)): still refused, not frozen.
    const viewed = problems((m) => {
      const c = nodeNamed(m, "/Constant_7").attribute.find((a) => a.name === "value")!.t!;
      m.graph!.initializer.push({ ...c, name: "layer.scale", dims: [16n] });
      const shape = nodeNamed(m, "/drop/Constant").attribute.find((a) => a.name === "value")!.t!;
      m.graph!.initializer.push({ ...shape, name: "onnx::view_shape", dims: [4n], dataType: 7, rawData: new Uint8Array(new BigInt64Array([1n, -1n, 1n, 1n]).buffer) });
      const add = nodeNamed(m, "/Add");
      m.graph!.node.splice(m.graph!.node.indexOf(add), 0, { ...add, name: "/view", opType: "Reshape", input: ["layer.scale", "onnx::view_shape"], output: ["/scale_view"], attribute: [] });
      add.input[1] = "/scale_view";
    });
    expect(viewed).toMatch(/node "\/Add" \(Add\): input 1 comes from the model tensor "layer\.scale"/);
    expect(viewed.split("\n")).toHaveLength(1);
  });

  it("refuses a Pad node before a pool whose border would make a value over the per-sample limit, before allocating it", () => {
    const err = problems((m) => {
      const pads = m.graph!.node.find((n) => n.name === "/Pad")!.input[1]!;
      const c = m.graph!.node.find((n) => n.output[0] === pads)!.attribute.find((a) => a.name === "value")!.t!;
      c.rawData = new Uint8Array(new BigInt64Array([0n, 0n, 50_000n, 50_000n, 0n, 0n, 50_000n, 50_000n]).buffer);
    }, "poolnet");
    expect(err).toMatch(/node "\/AveragePool" \(AveragePool\): padding 50000,50000,50000,50000 makes \(6, 14, 14\) over the limit of 33554432 elements per sample/);
  });

  it("builds a zero Pad read by something other than a Conv or pool as a border of its own", () => {
    // opsnet's avg_pool2d is Pad + AveragePool; with the pool gone, Sub reads the padded (16, 16, 16) value and the global pool still gives 16.
    const edit = (m: ModelProto): void => {
      const pool = nodeNamed(m, "/AveragePool");
      pool.opType = "Identity";
      pool.attribute = [];
      const pads = m.graph!.node.find((n) => n.output[0] === nodeNamed(m, "/Pad").input[1])!.attribute.find((a) => a.name === "value")!.t!;
      pads.rawData = new Uint8Array(new BigInt64Array([0n, 0n, 1n, 1n, 0n, 0n, 1n, 1n]).buffer);
    };
    expect(problems(edit)).toBe("");
    const m = fromBinary(ModelProtoSchema, readFileSync(join(OPSNET_DIR, "model.onnx")));
    edit(m);
    const { graph } = importOnnx(decodeOnnx(toBinary(ModelProtoSchema, m), "edited.onnx"), "edited.onnx", [1, 28, 28], 10, false, (_g, _name, v) => v);
    expect(graph.ops.find((op) => op.name === "/AveragePool_output_0.pad")?.outShape).toEqual([16, 16, 16]); // named by the value it pads
  });

  it("refuses a PReLU slope that would broadcast along another axis, and one slope shared by two PRelu nodes", () => {
    const across = problems((m) => void (nodeNamed(m, "/prelu1/PRelu").input[1] = "/prelu/Unsqueeze_output_0"), "actnet"); // (8, 1, 1) over (8)
    expect(across).toMatch(/^SYNCBN_ERR_BAD_CONFIG: --model edited\.onnx: node "\/prelu1\/PRelu" \(PRelu\): the slope must be an nn\.PReLU weight of 1 value or \(8\), got .* of dims \[8, 1, 1\]$/);
    const shared = problems((m) => void (nodeNamed(m, "/prelu/PRelu").input[1] = "prelu1.weight"), "actnet");
    expect(shared).toMatch(/^SYNCBN_ERR_BAD_CONFIG: --model edited\.onnx: node "\/prelu1\/PRelu" \(PRelu\): the slope "prelu1\.weight" is used by an earlier PRelu too/);
    expect(shared.split("\n")).toHaveLength(1);
  });

  it("refuses a module called twice (its weight read by two nodes), which PyTorch trains as one tensor", () => {
    const twice = problems((m) => {
      // conv1 (1 → 8, 3×3) applied a second time to the input; SiLU's Mul becomes conv1(x) · sigmoid(bn1(conv1(x))).
      const conv = nodeNamed(m, "/conv1/Conv");
      m.graph!.node.splice(m.graph!.node.indexOf(conv) + 1, 0, { ...conv, name: "/conv1/Conv_again", output: ["/conv1/again"] });
      nodeNamed(m, "/Mul").input[0] = "/conv1/again";
    }, "opsnet");
    expect(twice).toMatch(/^SYNCBN_ERR_BAD_CONFIG: --model edited\.onnx: conv1\.weight is used by several nodes \(a module called twice\): shared weights are not supported$/);
  });

  it("refuses ceil_mode on an AveragePool (MaxPool takes it)", () => {
    const err = problems((m) => void (nodeNamed(m, "/AveragePool").attribute.find((a) => a.name === "ceil_mode")!.i = 1n), "poolnet");
    expect(err).toMatch(/node "\/AveragePool" \(AveragePool\): ceil_mode=1 is not supported \(MaxPool only\)/);
    // 28 → 15 rows in ceil mode (14 in floor mode), so the average pools give 8×8 and the classifier no longer fits: the only refusal.
    const max = problems((m) => void (nodeNamed(m, "/MaxPool").attribute.find((a) => a.name === "ceil_mode")!.i = 1n), "poolnet");
    expect(max).toMatch(/^SYNCBN_ERR_BAD_CONFIG: --model edited\.onnx: node "\/fc\/Gemm" \(Gemm\): expects \(588\) features per sample, got \(768\)/);
    expect(max.split("\n")).toHaveLength(1);
  });

  it("refuses a Dropout whose ratio is not in [0, 1) and a Dropout whose mask is read", () => {
    const err = problems((m) => {
      const c = nodeNamed(m, "/drop/Constant").attribute.find((a) => a.name === "value")!.t!;
      c.rawData = new Uint8Array(new Float64Array([1.5]).buffer);
    });
    expect(err).toMatch(/node "\/drop\/Dropout" \(Dropout\): ratio 1\.5 must be in \[0, 1\)/);
    const read = problems((m) => void (nodeNamed(m, "/fc/Gemm").input[0] = "/drop/Dropout_output_1"));
    expect(read).toMatch(/--model edited\.onnx: (node|the output)/);
  });
});

describe("docs/onnx-ops.md", () => {
  it("names every op type the importer accepts", () => {
    const doc = readFileSync(join(ROOT, "docs", "onnx-ops.md"), "utf8");
    const missing = [...KNOWN_OPS].filter((op) => !new RegExp(`\\b${op}\\b`).test(doc));
    expect(missing).toEqual([]);
  });
});

describe("a BatchNormalization node's momentum (ONNX's m = 1 − PyTorch's, a float32)", () => {
  it("comes back as the module's decimal momentum", () => {
    for (const [onnx, torch] of [[0.9, 0.1], [0.99, 0.01], [0.997, 0.003], [0.5, 0.5], [0, 1], [1, 0], [0.999, 0.001]] as const) expect(torchMomentumOf(Math.fround(onnx))).toBe(torch);
  });

  it("keeps the run's conventions, bit for bit, when the node has the default momentum or agrees with them in float32, else takes the node's", () => {
    const run = TORCH_CONVENTIONS; // eps 1e-5, momentum 0.1, torch style
    expect(onnxNodeConventions(run, Math.fround(1e-5), Math.fround(0.9))).toEqual(run);
    expect(onnxNodeConventions(run, 1e-3, Math.fround(0.99))).toEqual({ ...run, eps: 1e-3, momentum: 0.01, momentumStyle: "torch" });
    // A node with the default (a module's 0.1) leaves --bn-momentum in charge.
    expect(onnxNodeConventions({ ...run, momentum: 0.2 }, 1e-5, Math.fround(0.9))).toEqual({ ...run, momentum: 0.2 });
    expect(onnxNodeConventions({ ...run, momentum: 0.2 }, 1e-5, Math.fround(0.99))).toEqual({ ...run, momentum: 0.01 });
    // Keras style 0.99 is PyTorch's 0.01: the node's 0.99 agrees.
    const keras = { ...run, momentum: 0.99, momentumStyle: "keras" as const };
    expect(onnxNodeConventions(keras, 1e-5, Math.fround(0.99))).toEqual(keras);
    expect(onnxNodeConventions(keras, 1e-5, Math.fround(0.9))).toEqual(keras);
    expect(onnxNodeConventions(keras, 1e-5, Math.fround(0.5))).toEqual({ ...keras, momentum: 0.5, momentumStyle: "torch" });
    // A node's 0 (PyTorch's 1) is a momentum=None module exported before its first update: the cumulative average.
    expect(onnxNodeConventions(run, 1e-5, 0)).toEqual({ ...run, momentum: null });
    // --bn-momentum null (a cumulative average) is the run's choice over every node's.
    const cumulative = { ...run, momentum: null };
    expect(onnxNodeConventions(cumulative, 1e-5, Math.fround(0.99))).toEqual(cumulative);
  });
});
