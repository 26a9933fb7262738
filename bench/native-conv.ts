// Native vs WebAssembly conv (issue 22): resnet:3's 3×3 convs (16→16 at 28×28,
// 32→32 at 14×14, 64→64 at 7×7, pad 1) at batch 32, forward+backward through the
// layer (im2col, bias, col2im and dW's float64 sum included), in GFLOP/s
// (6·n·cout·cin·9·P flops per step), the backends alternating per repetition, each
// on --threads compute threads (wasm's helpers, the addon's std::threads). Not a
// test: it reports and never fails on a time. Each shape's native GFLOP/s is also
// given as a share of one core's FMA peak (native/peak.cc), measured in the run.
// node dist/bench/native-conv.js [--reps N] [--threads T]

import { Rng } from "../shared/rng.js";
import { Conv2d } from "../worker/nn/conv2d.js";
import { nativeKernels, nativeUnavailableReason } from "../worker/nn/kernels/native.js";
import { setComputeThreads } from "../worker/nn/kernels/threads.js";

const SHAPES = [
  { c: 16, hw: 28 },
  { c: 32, hw: 14 },
  { c: 64, hw: 7 },
];
const BATCH = 32;
const repsAt = process.argv.indexOf("--reps");
const REPS = repsAt > 0 ? Number(process.argv[repsAt + 1]) : 15;
const threadsAt = process.argv.indexOf("--threads");
const THREADS = threadsAt > 0 ? Number(process.argv[threadsAt + 1]) : 1;
setComputeThreads(THREADS);

function normals(rng: Rng, len: number): Float32Array {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = rng.normal();
  return a;
}

/** Seconds of one forward+backward. */
function once(layer: Conv2d, x: Float32Array, dy: Float32Array): number {
  const t0 = process.hrtime.bigint();
  layer.forward(x, BATCH, true);
  layer.backward(dy, BATCH);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** [best, median] seconds of each layer over REPS repetitions, the layers alternating, after two untimed ones each (other jobs' load hits both alike). */
function times(layers: Conv2d[], x: Float32Array, dy: Float32Array): [number, number][] {
  const runs: number[][] = layers.map(() => []);
  for (let r = 0; r < REPS + 2; r++) layers.forEach((l, i) => { const t = once(l, x, dy); if (r >= 2) runs[i]!.push(t); });
  return runs.map((ts) => {
    ts.sort((a, b) => a - b);
    return [ts[0]!, ts[ts.length >> 1]!];
  });
}

const k = nativeKernels();
if (!k) {
  console.log(`native kernels unavailable: ${nativeUnavailableReason()}`);
  process.exit(1);
}
// The ceiling (issue 22): one core's widest vector FMA, measured here, in this run. The kernels use no FMA (wasm's bits).
const [peak, peakIsa] = k.fmaPeak(1);
console.log(`native clone: ${k.isa()}; batch ${BATCH}; best and median of ${REPS} forward+backward, the backends alternating; ${THREADS} thread${THREADS > 1 ? "s" : ""}`);
console.log(`FMA peak of one core (${peakIsa}, 12 chains, 1 s): ${peak.toFixed(1)} GFLOP/s${THREADS > 1 ? ` (× ${THREADS} threads: ${(peak * THREADS).toFixed(1)})` : ""}`);
for (const { c, hw } of SHAPES) {
  const rng = new Rng(1);
  const wasm = new Conv2d("c", c, c, 3, 1, 1, hw, hw, new Rng(2), "wasm");
  const nat = new Conv2d("c", c, c, 3, 1, 1, hw, hw, new Rng(2), "native");
  const x = normals(rng, BATCH * c * hw * hw), dy = normals(rng, BATCH * c * hw * hw);
  const flops = 6 * BATCH * c * c * 9 * hw * hw;
  const [[bw, mw], [bn, mn]] = times([wasm, nat], x, dy);
  const g = (t: number): string => (flops / t / 1e9).toFixed(2);
  const pct = (t: number): string => (peak > 0 ? `${((flops / t / 1e9 / (peak * THREADS)) * 100).toFixed(0)} %` : "n/a");
  console.log(`${c}→${c} 3×3 at ${hw}×${hw}: best wasm ${g(bw)}, native ${g(bn)} GFLOP/s (×${(bw / bn).toFixed(2)}); median wasm ${g(mw)}, native ${g(mn)} (×${(mw / mn).toFixed(2)}); native best = ${pct(bn)} of the FMA peak (goal ≥ 50 %: ${peak > 0 && flops / bn / 1e9 >= 0.5 * peak * THREADS ? "PASS" : "MISS"})`);
}
