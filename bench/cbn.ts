// What cross-iteration BN (--norm cbn:K) costs per training step against local
// BN: one process, no coordinator, the model's forward and backward alone
// (cnn × 32 and resnet:1 × 8 on 1×28×28), median ms over timed steps after the
// window is full, on both kernel backends. `node dist/bench/cbn.js [--steps N]`.
// Not a test: no assertion on time; a shared machine's load moves the numbers.

import { loadavg } from "node:os";
import { TORCH_CONVENTIONS, parseNorm } from "../shared/config.js";
import { setKernelBackend, type KernelBackend } from "../worker/nn/kernels/backend.js";
import { buildModel, type ModelKind } from "../worker/nn/model.js";

const stepsAt = process.argv.indexOf("--steps");
const steps = stepsAt > 0 ? Number(process.argv[stepsAt + 1]) : 30;

async function msPerStep(kind: ModelKind, batch: number, norm: string, backend: KernelBackend): Promise<number> {
  setKernelBackend(backend);
  const model = buildModel({ kind, inShape: [1, 28, 28], classes: 10, norm: parseNorm(norm), conventions: TORCH_CONVENTIONS, sync: null, seed: 1 });
  const x = Float32Array.from({ length: batch * 784 }, (_, i) => Math.sin(i * 0.37));
  const dlogits = Float32Array.from({ length: batch * 10 }, (_, i) => Math.cos(i) / batch);
  const times: number[] = [];
  for (let t = 0; t < steps + 8; t++) {
    const t0 = performance.now();
    await model.forward(x, batch, true);
    await model.backward(dlogits, batch);
    // A small update so the compensation has weight differences to carry.
    for (const p of model.params) for (let i = 0; i < p.value.length; i++) p.value[i] = Math.fround(p.value[i]! - 1e-3 * p.grad[i]!);
    if (t >= 8) times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

const load = (): string => loadavg().map((v) => v.toFixed(2)).join(" / ");
const before = load();
const rows: string[] = [];
for (const [kind, batch] of [["cnn", 32], ["resnet:1", 8]] as const) {
  for (const backend of ["wasm", "js"] as const) {
    const local = await msPerStep(kind, batch, "local", backend);
    const cbn = await msPerStep(kind, batch, "cbn:4", backend);
    rows.push(`| ${kind} × ${batch} | ${backend} | ${local.toFixed(1)} | ${cbn.toFixed(1)} | ${(cbn / local).toFixed(2)}× |`);
  }
}
console.log([
  `forward + backward + update in one process, median of ${steps} steps; load ${before} before, ${load()} after.`,
  "",
  "| model × batch | kernels | local ms/step | cbn:4 ms/step | ratio |",
  "|---|---|---|---|---|",
  ...rows,
].join("\n"));
