// Native vs WebAssembly conv (issue 22): resnet:3's 3×3 convs (16→16 at 28×28,
// 32→32 at 14×14, 64→64 at 7×7, pad 1) at batch 32, forward+backward through the
// layer (im2col, bias, col2im, db and dW's float64 sum included), in GFLOP/s
// (6·n·cout·cin·9·P flops per step): wasm on --threads compute threads (default 1),
// native on 1 and on 2 threads of the addon's pool, alternating per repetition.
// GFLOP/s per wall second, and per CPU second of the process (process.cpuUsage:
// what one busy core does, which other jobs on a shared machine disturb far less);
// the latter, for native, as a share of one core's FMA peak (native/peak.cc, per
// CPU second, measured in the run) with PASS/MISS against 50 %. Not a test: it
// reports and never fails on a time.
// node dist/bench/native-conv.js [--reps N] [--threads T]

import { Rng } from "../shared/rng.js";
import { Conv2d } from "../worker/nn/conv2d.js";
import { ConvNative } from "../worker/nn/kernels/conv-native.js";
import { nativeKernels, nativeUnavailableReason } from "../worker/nn/kernels/native.js";
import { setComputeThreads } from "../worker/nn/kernels/threads.js";

const SHAPES = [
  { c: 16, hw: 28 },
  { c: 32, hw: 14 },
  { c: 64, hw: 7 },
];
const BATCH = 32;
const NATIVE_THREADS = [1, 2];
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

/** One forward+backward, timed. */
type Step = () => void;

/** Median wall and CPU seconds of each step over REPS repetitions, the steps alternating, after two untimed ones each (other jobs' load hits all alike). */
function times(steps: Step[]): { wall: number; cpu: number }[] {
  const runs = steps.map(() => ({ wall: [] as number[], cpu: [] as number[] }));
  for (let r = 0; r < REPS + 2; r++) {
    steps.forEach((step, i) => {
      const c0 = process.cpuUsage(), t0 = process.hrtime.bigint();
      step();
      const wall = Number(process.hrtime.bigint() - t0) / 1e9, c = process.cpuUsage(c0);
      if (r >= 2) runs[i]!.wall.push(wall), runs[i]!.cpu.push((c.user + c.system) / 1e6);
    });
  }
  const median = (a: number[]): number => a.sort((x, y) => x - y)[a.length >> 1]!;
  return runs.map((r) => ({ wall: median(r.wall), cpu: median(r.cpu) }));
}

const k = nativeKernels();
if (!k) {
  console.log(`native kernels unavailable: ${nativeUnavailableReason()}`);
  process.exit(1);
}
// The ceiling (issue 22): one core's widest vector FMA, measured here, in this run.
const [peak, peakIsa] = k.fmaPeak(1);
console.log(`native micro-kernel: ${k.isa()}; batch ${BATCH}; medians of ${REPS} forward+backward, alternating; wasm on ${THREADS} thread${THREADS > 1 ? "s" : ""}`);
console.log(`FMA peak of one core (${peakIsa}, 12 chains, 1 CPU second): ${peak.toFixed(1)} GFLOP/s`);
for (const { c, hw } of SHAPES) {
  const rng = new Rng(1);
  const wasm = new Conv2d("c", c, c, 3, 1, 1, hw, hw, new Rng(2), "wasm");
  const g = wasm.geometry, w = wasm.weight.value, b = wasm.bias.value;
  const x = normals(rng, BATCH * c * hw * hw), dy = normals(rng, BATCH * c * hw * hw);
  const dw = new Float32Array(w.length), db = new Float32Array(b.length);
  const natives = NATIVE_THREADS.map((t) => new ConvNative(g, k, t));
  const steps: Step[] = [
    () => (wasm.forward(x, BATCH, true), wasm.backward(dy, BATCH)),
    ...natives.map((n) => () => (n.forward(x, BATCH, true, w, b), n.backward(dy, BATCH, w, dw, db, null))),
  ];
  const flops = 6 * BATCH * c * c * 9 * hw * hw;
  const gf = (t: number): number => flops / t / 1e9;
  const [wasmT, ...nat] = times(steps);
  const parts = nat.map((n, i) => {
    const t = NATIVE_THREADS[i]!, share = peak > 0 ? gf(n.cpu) / peak : 0;
    const verdict = peak > 0 ? `${(share * 100).toFixed(0)} % of the peak per CPU second, ${share >= 0.5 ? "PASS" : "MISS"}` : "no peak";
    return `native ${t} thread${t > 1 ? "s" : ""} ${gf(n.wall).toFixed(1)} wall, ${gf(n.cpu).toFixed(1)} CPU (×${(wasmT.wall / n.wall).toFixed(2)} wasm's wall; ${verdict})`;
  });
  console.log(`${c}→${c} 3×3 at ${hw}×${hw}, GFLOP/s: wasm ${gf(wasmT.wall).toFixed(1)} wall, ${gf(wasmT.cpu).toFixed(1)} CPU; ${parts.join("; ")}`);
}
console.log("goal (issue 22): native forward+backward ≥ 50 % of the FMA peak per CPU second");
