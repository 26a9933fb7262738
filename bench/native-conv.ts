// Native vs WebAssembly conv (issue 22): resnet:3's 3×3 convs (16→16 at 28×28,
// 32→32 at 14×14, 64→64 at 7×7, pad 1) at batch 32, forward+backward through the
// layer (im2col, bias, col2im and dW's float64 sum included), in GFLOP/s
// (6·n·cout·cin·9·P flops per step), the two backends interleaved. Not a test: it
// reports and never fails on a time. node dist/bench/native-conv.js [--reps N]

import { Rng } from "../shared/rng.js";
import { Conv2d } from "../worker/nn/conv2d.js";
import { nativeKernels, nativeUnavailableReason } from "../worker/nn/kernels/native.js";

const SHAPES = [
  { c: 16, hw: 28 },
  { c: 32, hw: 14 },
  { c: 64, hw: 7 },
];
const BATCH = 32;
const repsAt = process.argv.indexOf("--reps");
const REPS = repsAt > 0 ? Number(process.argv[repsAt + 1]) : 15;

function normals(rng: Rng, len: number): Float32Array {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = rng.normal();
  return a;
}

/** Median seconds of one forward+backward over REPS timed runs, after two untimed ones. */
function time(layer: Conv2d, x: Float32Array, dy: Float32Array): number {
  const runs: number[] = [];
  for (let r = 0; r < REPS + 2; r++) {
    const t0 = process.hrtime.bigint();
    layer.forward(x, BATCH, true);
    layer.backward(dy, BATCH);
    if (r >= 2) runs.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  runs.sort((a, b) => a - b);
  return runs[runs.length >> 1]!;
}

const k = nativeKernels();
if (!k) {
  console.log(`native kernels unavailable: ${nativeUnavailableReason()}`);
  process.exit(1);
}
console.log(`native clone: ${k.isa()}; batch ${BATCH}; median of ${REPS} forward+backward; one thread`);
for (const { c, hw } of SHAPES) {
  const rng = new Rng(1);
  const wasm = new Conv2d("c", c, c, 3, 1, 1, hw, hw, new Rng(2), "wasm");
  const nat = new Conv2d("c", c, c, 3, 1, 1, hw, hw, new Rng(2), "native");
  const x = normals(rng, BATCH * c * hw * hw), dy = normals(rng, BATCH * c * hw * hw);
  const flops = 6 * BATCH * c * c * 9 * hw * hw;
  const tw = time(wasm, x, dy), tn = time(nat, x, dy);
  console.log(`${c}→${c} 3×3 at ${hw}×${hw}: wasm ${(flops / tw / 1e9).toFixed(2)} GFLOP/s, native ${(flops / tn / 1e9).toFixed(2)} GFLOP/s (×${(tw / tn).toFixed(2)})`);
}
