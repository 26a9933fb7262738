// `--model model.onnx` against hostile or odd files, each built by editing a real
// export (test/fixtures/onnx) with onnx-buf: initializers of other float types are
// read, never replaced by random values; size bombs, malformed tensors and values
// that overflow float32 are refused in one line, exit 2, before any worker starts;
// a FIFO is refused without blocking.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AttributeProto_AttributeType, AttributeProtoSchema, ModelProtoSchema, NodeProtoSchema, TensorProtoSchema, type ModelProto, type TensorProto } from "onnx-buf";
import { describe, expect, it } from "vitest";
import { parseNorm } from "../shared/config.js";
import { buildModel } from "../worker/nn/model.js";
import { DEFAULT_SETTINGS, conventionsOf } from "../worker/settings.js";
import { ROOT, runCli } from "./helpers.js";

const FIXTURES = join(ROOT, "test", "fixtures", "onnx");
const DATA = join(ROOT, "test", "fixtures", "torch", "data");

const DOUBLE = 11;
const FLOAT16 = 10;
const INT32 = 6;
const INT64 = 7;

function fixture(name = "resproj"): ModelProto {
  return fromBinary(ModelProtoSchema, readFileSync(join(FIXTURES, name, "model.onnx")));
}

function written(m: ModelProto): `${string}.onnx` {
  const path = join(mkdtempSync(join(tmpdir(), "syncbn-onnx-hostile-")), "model.onnx");
  writeFileSync(path, toBinary(ModelProtoSchema, m));
  return path as `${string}.onnx`;
}

const init = (m: ModelProto, name: string): TensorProto => m.graph!.initializer.find((t) => t.name === name)!;
const floatsOf = (t: TensorProto): Float32Array => new Float32Array(new Uint8Array(t.rawData).buffer);

function rawOf(values: ArrayLike<number>, bytes: number, put: (v: DataView, i: number, x: number) => void): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(values.length * bytes);
  const v = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) put(v, i, values[i]!);
  return out;
}
const doubles = (values: ArrayLike<number>) => rawOf(values, 8, (v, i, x) => v.setFloat64(8 * i, x, true));

/** float32 → binary16 bits, round to nearest even (values of the fixture are normal and in range). */
function toHalf(x: number): number {
  const f = new DataView(new ArrayBuffer(4));
  f.setFloat32(0, x);
  const b = f.getUint32(0);
  const sign = (b >>> 16) & 0x8000;
  const exp = ((b >>> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return sign;
  let mant = (b >>> 13) & 0x3ff;
  const rest = b & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && mant & 1)) mant++;
  return sign | ((exp << 10) + mant);
}

function model(path: `${string}.onnx`) {
  return buildModel({ kind: path, inShape: [1, 28, 28], classes: 10, norm: parseNorm("sync"), conventions: conventionsOf(DEFAULT_SETTINGS), sync: null, seed: 1 });
}
const paramOf = (m: ReturnType<typeof model>, name: string): Float32Array => m.params.find((p) => p.name === name)!.value;

/** `syncbn train` on the model: exit 2, one line on stderr, no worker started; returns that line. */
async function refused(path: string): Promise<string> {
  const out = mkdtempSync(join(tmpdir(), "syncbn-onnx-hostile-out-"));
  const r = await runCli(["train", "--model", path, "--norm", "sync", "--data", DATA, "--workers", "2", "--batch", "4", "--steps", "1", "--out", out], { timeoutMs: 60_000 });
  expect(r.code, r.stderr).toBe(2);
  expect(r.stderr).not.toMatch(/rank \d/);
  const lines = r.stderr.trim().split("\n");
  expect(lines, r.stderr).toHaveLength(1);
  return lines[0]!;
}

describe("ONNX initializers of other float types", () => {
  it("reads a DOUBLE conv1.weight as its values rounded to float32, not the importer's random ones", () => {
    const m = fixture();
    const t = init(m, "conv1.weight");
    const want = floatsOf(t);
    t.dataType = DOUBLE;
    t.rawData = doubles(want);
    expect(paramOf(model(written(m)), "conv1.weight")).toEqual(want);
  });

  it("reads DOUBLE values given in double_data, and FLOAT16 ones in raw_data and in int32_data", () => {
    const m = fixture();
    const w = init(m, "conv2.weight");
    const want2 = floatsOf(w);
    w.dataType = DOUBLE;
    w.rawData = new Uint8Array(0);
    w.doubleData = Array.from(want2);
    const bits = (t: TensorProto) => Array.from(floatsOf(t), toHalf);
    const f1 = init(m, "conv1.weight");
    const half1 = bits(f1);
    f1.dataType = FLOAT16;
    f1.rawData = rawOf(half1, 2, (v, i, x) => v.setUint16(2 * i, x, true));
    const f3 = init(m, "conv3.weight");
    const half3 = bits(f3);
    f3.dataType = FLOAT16;
    f3.rawData = new Uint8Array(0);
    f3.int32Data = half3;
    const built = model(written(m));
    const halfValue = (h: number) => (h & 0x8000 ? -1 : 1) * (((h >> 10) & 0x1f) === 0 ? (h & 0x3ff) * 2 ** -24 : (1 + (h & 0x3ff) / 1024) * 2 ** (((h >> 10) & 0x1f) - 15));
    expect(paramOf(built, "conv2.weight")).toEqual(want2);
    expect(paramOf(built, "conv1.weight")).toEqual(Float32Array.from(half1, halfValue));
    expect(paramOf(built, "conv3.weight")).toEqual(Float32Array.from(half3, halfValue));
  });

  it("refuses a weight of another type (INT32) in one line naming the tensor and the types it may have", async () => {
    const m = fixture();
    const t = init(m, "conv2.weight");
    t.dataType = INT32;
    t.int32Data = Array.from(floatsOf(t), Math.round);
    t.rawData = new Uint8Array(0);
    expect(await refused(written(m))).toMatch(/node "\/conv2\/Conv" \(Conv\): weight "conv2\.weight" is INT32; it must be FLOAT, DOUBLE or FLOAT16/);
  }, 90_000);
});

describe("ONNX size bombs are refused from their declared sizes, before anything is allocated", () => {
  it("refuses one unused ConstantOfShape of [100000000]", async () => {
    const m = fixture();
    const shape = create(TensorProtoSchema, { name: "bomb.shape", dataType: INT64, dims: [1n], int64Data: [100_000_000n] });
    m.graph!.initializer.push(shape);
    m.graph!.node.push(create(NodeProtoSchema, { name: "/bomb", opType: "ConstantOfShape", input: ["bomb.shape"], output: ["bomb"] }));
    expect(await refused(written(m))).toMatch(/node "\/bomb" \(ConstantOfShape\): an output of dims \[100000000\] is not supported \(non-negative dims of at most 1024 elements/);
  }, 90_000);

  it("refuses a conv weight that claims dims [1e8, 1, 3, 3] over the 36 floats it holds", async () => {
    const m = fixture();
    init(m, "conv1.weight").dims = [100_000_000n, 1n, 3n, 3n];
    expect(await refused(written(m))).toMatch(/initializer "conv1\.weight": dims \[100000000, 1, 3, 3\] are over the limit of 33554432 elements per tensor/);
  }, 90_000);

  it("refuses a 4×1×30000×30000 kernel with 36 floats of data, and a kernel_shape the weight does not have", async () => {
    const m = fixture();
    init(m, "conv1.weight").dims = [4n, 1n, 30000n, 30000n];
    const conv1 = m.graph!.node.find((n) => n.name === "/conv1/Conv")!;
    conv1.attribute.find((a) => a.name === "kernel_shape")!.ints = [30000n, 30000n];
    expect(await refused(written(m))).toMatch(/initializer "conv1\.weight": dims \[4, 1, 30000, 30000\] are over the limit/);

    const m2 = fixture();
    init(m2, "conv1.weight").dims = [4n, 1n, 3n, 3n];
    m2.graph!.node.find((n) => n.name === "/conv1/Conv")!.attribute.find((a) => a.name === "kernel_shape")!.ints = [30000n, 30000n];
    expect(await refused(written(m2))).toMatch(/node "\/conv1\/Conv" \(Conv\): kernel_shape 30000×30000 is not the weight's 3×3/);
  }, 90_000);

  it("refuses a weight whose dims hold more values than its data (1000×1×3×3 with 36 floats)", async () => {
    const m = fixture();
    init(m, "conv1.weight").dims = [1000n, 1n, 3n, 3n];
    expect(await refused(written(m))).toMatch(/initializer "conv1\.weight": dims \[1000, 1, 3, 3\] need 9000 × 4 = 36000 bytes of FLOAT, raw_data holds 144/);
  }, 90_000);

  it("refuses padding that would make a conv output of 4×100026×100026 per sample", async () => {
    const m = fixture();
    m.graph!.node.find((n) => n.name === "/conv1/Conv")!.attribute.find((a) => a.name === "pads")!.ints = [50_000n, 50_000n, 50_000n, 50_000n];
    expect(await refused(written(m))).toMatch(/node "\/conv1\/Conv" \(Conv\): output 4×100026×100026 .* is over the limit of 33554432 elements per sample/);
  }, 90_000);
});

describe("ONNX tensors and attributes that are malformed or out of range", () => {
  it("refuses an int64 initializer with dims [3] and 8 bytes in one line, exit 2, no stack trace", async () => {
    const m = fixture("mlp");
    m.graph!.initializer.push(create(TensorProtoSchema, { name: "odd", dataType: INT64, dims: [3n], rawData: new Uint8Array(8) }));
    const line = await refused(written(m));
    expect(line).toMatch(/SYNCBN_ERR_BAD_CONFIG: --model .*model\.onnx: initializer "odd": dims \[3\] need 3 × 8 = 24 bytes of INT64, raw_data holds 8/);
  }, 90_000);

  it("refuses a DOUBLE running_var of 1e300, which float32 cannot hold, naming the tensor and index", async () => {
    const m = fixture();
    const t = init(m, "bn2.running_var");
    const v = Array.from(floatsOf(t));
    v[5] = 1e300;
    t.dataType = DOUBLE;
    t.rawData = doubles(v);
    expect(await refused(written(m))).toMatch(/initializer "bn2\.running_var"\[5\] is 1e\+300, which overflows float32; every value must be finite/);
  }, 90_000);

  it("refuses a NaN weight and a negative running variance, naming each tensor and index", async () => {
    const m = fixture();
    const w = floatsOf(init(m, "conv3.weight"));
    w[7] = NaN;
    init(m, "conv3.weight").rawData = new Uint8Array(w.buffer);
    expect(await refused(written(m))).toMatch(/initializer "conv3\.weight"\[7\] is NaN; every value must be finite/);
    const m2 = fixture();
    const rv = floatsOf(init(m2, "bn1.running_var"));
    rv[2] = -0.5;
    init(m2, "bn1.running_var").rawData = new Uint8Array(rv.buffer);
    expect(await refused(written(m2))).toMatch(/node "\/bn1\/BatchNormalization" \(BatchNormalization\): running_var "bn1\.running_var"\[2\] is -0\.5; a variance must be ≥ 0/);
  }, 120_000);

  for (const eps of [NaN, -1, 0]) {
    it(`refuses a BatchNormalization epsilon of ${eps}`, async () => {
      const m = fixture();
      const bn = m.graph!.node.find((n) => n.name === "/bn2/BatchNormalization")!;
      bn.attribute = bn.attribute.filter((a) => a.name !== "epsilon");
      bn.attribute.push(create(AttributeProtoSchema, { name: "epsilon", type: AttributeProto_AttributeType.FLOAT, f: eps }));
      expect(await refused(written(m))).toMatch(new RegExp(`node "/bn2/BatchNormalization" \\(BatchNormalization\\): epsilon ${eps} must be a finite number > 0`));
    }, 90_000);
  }

  it("refuses a FIFO given as --model at once, without blocking on its open", async () => {
    const fifo = join(mkdtempSync(join(tmpdir(), "syncbn-onnx-fifo-")), "model.onnx");
    execFileSync("mkfifo", [fifo]);
    expect(await refused(fifo)).toMatch(/--model .*model\.onnx: cannot read it \(a FIFO, not a regular file; give a file\)/);
  }, 90_000);
});
