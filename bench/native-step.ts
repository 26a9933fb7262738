// Native vs WebAssembly vs TypeScript for the step kernels outside the conv
// (issue 22): BN forward+backward through the BatchNorm layer, max pooling and ReLU
// forward+backward, the residual add and the SGD update (momentum 0.9, weight decay), at resnet:3's
// batch-32 shapes (28×28 input: 16 ch at 28×28, 32 at 14×14, 64 at 7×7), the
// backends interleaved run by run (bench/kernels.ts's measure), one thread. In M
// elements/s, wall and CPU time (the CPU-time median ignores time slices lost to
// other processes on a shared machine). Not a test: it reports, never fails on a time.
// node dist/bench/native-step.js [--quick]

import { Rng } from "../shared/rng.js";
import { Add } from "../worker/nn/graph.js";
import { setKernelBackend, type KernelBackend } from "../worker/nn/kernels/backend.js";
import { nativeKernels, nativeUnavailableReason } from "../worker/nn/kernels/native.js";
import type { Param } from "../worker/nn/layer.js";
import { MaxPool2d } from "../worker/nn/maxpool.js";
import { ReLU } from "../worker/nn/relu.js";
import { SGD } from "../worker/nn/sgd.js";
import { bnLayerCall, measure } from "./kernels.js";
import { fmt, loadLine, machineLine, table } from "./stats.js";

const quick = process.argv.includes("--quick");
const OPTS = { reps: quick ? 7 : 25, warmupMs: quick ? 100 : 300, minRunMs: 4, batches: [] };
const BACKENDS: KernelBackend[] = ["native", "wasm", "js"];

function normals(rng: Rng, len: number): Float32Array {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = rng.normal();
  return a;
}

function built<T>(backend: KernelBackend, make: () => T): T {
  setKernelBackend(backend);
  try {
    return make();
  } finally {
    setKernelBackend("wasm");
  }
}

function reluCall(backend: KernelBackend, n: number, shape: number[]): () => void {
  const relu = built(backend, () => new ReLU("relu", shape));
  const len = n * shape.reduce((a, b) => a * b, 1), rng = new Rng(1), x = normals(rng, len), dy = normals(rng, len);
  return () => {
    relu.forward(x, n, true);
    relu.backward(dy, n);
  };
}

function poolCall(backend: KernelBackend, n: number, c: number, hw: number): () => void {
  const pool = new MaxPool2d("pool", c, hw, hw, 2, 2, backend);
  const rng = new Rng(4), x = normals(rng, n * c * hw * hw), dy = normals(rng, n * c * (hw / 2) * (hw / 2));
  return () => {
    pool.forward(x, n, true);
    pool.backward(dy, n);
  };
}

function addCall(backend: KernelBackend, n: number, shape: number[]): () => void {
  const add = built(backend, () => new Add("add", shape));
  const len = n * shape.reduce((a, b) => a * b, 1), rng = new Rng(2), xs = [normals(rng, len), normals(rng, len)];
  return () => void add.forward(xs, n, true);
}

/** resnet:3's parameter sizes (≈ 0.27 M values in 65 arrays). */
function sgdCall(backend: KernelBackend, sizes: readonly number[]): () => void {
  const rng = new Rng(3);
  const params: Param[] = sizes.map((len, k) => ({ name: `p${k}`, value: normals(rng, len), grad: normals(rng, len) }));
  const opt = new SGD(params, { lr: 1e-9, momentum: 0.9, weightDecay: 5e-4 }, backend === "native");
  return () => opt.step();
}

function resnet3Sizes(): number[] {
  const sizes = [16 * 3 * 9 * 0 + 16 * 1 * 9, 16, 16];
  const block = (cin: number, cout: number, down: boolean): void => {
    sizes.push(cout * cin * 9, cout, cout, cout * cout * 9, cout, cout);
    if (down) sizes.push(cout * cin, cout, cout);
  };
  for (const [cin, cout] of [[16, 16], [16, 32], [32, 64]] as const) for (let b = 0; b < 3; b++) block(b === 0 ? cin : cout, cout, b === 0 && cin !== cout);
  sizes.push(64 * 10, 10);
  return sizes;
}

if (nativeKernels() === null) {
  console.log(`native addon not loaded (${nativeUnavailableReason()}): nothing to compare`);
  process.exit(0);
}
const loadBefore = loadLine();
const N = 32;
const sgdSizes = resnet3Sizes(), sgdLen = sgdSizes.reduce((a, b) => a + b, 0);
const cases: [string, number, (b: KernelBackend) => () => void][] = [
  ["BN fwd+bwd (32, 16, 28, 28)", N * 16 * 784, (b) => bnLayerCall(b, N, 16, 28, 28)],
  ["BN fwd+bwd (32, 64, 7, 7)", N * 64 * 49, (b) => bnLayerCall(b, N, 64, 7, 7)],
  ["BN fwd+bwd (32, 64, 16, 16) (issue's shape)", N * 64 * 256, (b) => bnLayerCall(b, N, 64, 16, 16)],
  ["BN fwd+bwd (32, 256) (mlp's (N, C) input)", N * 256, (b) => bnLayerCall(b, N, 256, 1, 1)],
  ["MaxPool 2×2 fwd+bwd (32, 16, 28, 28) (cnn's pool1)", N * 16 * 784, (b) => poolCall(b, N, 16, 28)],
  ["ReLU fwd+bwd (32, 16, 28, 28)", N * 16 * 784, (b) => reluCall(b, N, [16, 28, 28])],
  ["residual add (32, 16, 28, 28)", N * 16 * 784, (b) => addCall(b, N, [16, 28, 28])],
  [`SGD momentum step, resnet:3's ${sizesLabel(sgdSizes.length, sgdLen)}`, sgdLen, (b) => sgdCall(b, sgdSizes)],
];

function sizesLabel(arrays: number, values: number): string {
  return `${arrays} arrays, ${fmt(values / 1e6, 2)} M values`;
}

const rows: string[][] = [];
for (const [label, work, make] of cases) {
  const r = measure(BACKENDS.map(make), work, OPTS);
  const m = (k: number, key: "median" | "cpuMedian"): string => fmt(r[k]![key] / 1e6, 0);
  rows.push([label, m(0, "median"), m(0, "cpuMedian"), m(1, "median"), m(1, "cpuMedian"), m(2, "median"),
    fmt(r[0]!.cpuMedian / r[1]!.cpuMedian, 1), fmt(r[0]!.cpuMedian / r[2]!.cpuMedian, 1)]);
  console.error(`${label}: native ${m(0, "cpuMedian")}, wasm ${m(1, "cpuMedian")}, js ${m(2, "cpuMedian")} M el/s (CPU time)`);
}
console.log(`Step kernels, native vs wasm vs js, ${OPTS.reps} runs each, interleaved, one thread (the residual add and SGD have no wasm kernel: their wasm column runs the TypeScript loop, as a wasm run does). Machine: ${machineLine()}; load ${loadBefore} before, ${loadLine()} after.\n`);
console.log(table(["kernel", "native M el/s", "native CPU-time", "wasm M el/s", "wasm CPU-time", "js M el/s", "native/wasm (CPU)", "native/js (CPU)"], rows).join("\n"));
