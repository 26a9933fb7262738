// Native vs WebAssembly conv (issue 22): resnet:3's 3×3 convs (16→16 at 28×28,
// 32→32 at 14×14, 64→64 at 7×7, pad 1) at batch 32, forward+backward through the
// layer (the direct path or im2col, bias, db and dW's float64 sum included), in
// GFLOP/s (6·n·cout·cin·9·P flops per step): wasm on one compute thread, native on
// 1 and on 2 threads of the addon's pool, alternating per repetition. GFLOP/s per
// wall second, and per CPU second of the process (process.cpuUsage: what one busy
// core does, which other jobs on a shared machine disturb far less); the latter,
// for native, as a share of one core's FMA peak (native/peak.cc, per CPU second,
// measured in the run between the repetitions of each conv, 50 ms each: the median
// is that conv's ceiling) with PASS/MISS against 50 % for one thread. Not a test:
// it reports and never fails on a time. A section of `npm run bench`; alone:
// node dist/bench/native-conv.js [--reps N]

import { fileURLToPath } from "node:url";
import { Rng } from "../shared/rng.js";
import { Conv2d } from "../worker/nn/conv2d.js";
import { ConvNative } from "../worker/nn/kernels/conv-native.js";
import { nativeKernels, nativeUnavailableReason } from "../worker/nn/kernels/native.js";
import { fmt, table, verdict } from "./stats.js";

const SHAPES = [
  { c: 16, hw: 28 },
  { c: 32, hw: 14 },
  { c: 64, hw: 7 },
];
const BATCH = 32;
const NATIVE_THREADS = [1, 2] as const;
/** Issue 22's goal: one thread's forward+backward at ≥ this share of one core's FMA peak, per CPU second. */
export const PEAK_SHARE_GOAL = 0.5;

export interface NativeConvOptions {
  reps: number;
  log(line: string): void;
}
export const DEFAULT_NATIVE_CONV: Omit<NativeConvOptions, "log"> = { reps: 15 };

interface Rate {
  /** GFLOP/s per wall second and per CPU second. */
  wall: number;
  cpu: number;
}
export interface NativeConvRow {
  label: string;
  /** GFLOP/s of one core's FMA peak measured beside this conv's repetitions (median). */
  peak: number;
  wasm: Rate;
  /** By NATIVE_THREADS. */
  native: Rate[];
}
export interface NativeConvResult {
  /** null: the addon is not loaded here (the reason in `skipped`). */
  rows: NativeConvRow[] | null;
  skipped: string | null;
  isa: string;
}

function normals(rng: Rng, len: number): Float32Array {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = rng.normal();
  return a;
}

/** Median wall and CPU seconds of each step over `reps` repetitions, the steps alternating, after two untimed ones each (other jobs' load hits all alike). */
function times(steps: (() => void)[], reps: number): { wall: number; cpu: number }[] {
  const runs = steps.map(() => ({ wall: [] as number[], cpu: [] as number[] }));
  for (let r = 0; r < reps + 2; r++) {
    steps.forEach((step, i) => {
      const c0 = process.cpuUsage(), t0 = process.hrtime.bigint();
      step();
      const wall = Number(process.hrtime.bigint() - t0) / 1e9, c = process.cpuUsage(c0);
      if (r >= 2) runs[i]!.wall.push(wall), runs[i]!.cpu.push((c.user + c.system) / 1e6);
    });
  }
  return runs.map((r) => ({ wall: median(r.wall), cpu: median(r.cpu) }));
}

function median(a: number[]): number {
  return [...a].sort((x, y) => x - y)[a.length >> 1] ?? 0;
}

export function runNativeConvBench(o: NativeConvOptions): NativeConvResult {
  const k = nativeKernels();
  if (!k) return { rows: null, skipped: `native kernels unavailable: ${nativeUnavailableReason()}`, isa: "none" };
  const rows: NativeConvRow[] = [];
  for (const { c, hw } of SHAPES) {
    const rng = new Rng(1);
    const wasm = new Conv2d("c", c, c, 3, 1, 1, hw, hw, new Rng(2), "wasm");
    const g = wasm.geometry, w = wasm.weight.value, b = wasm.bias.value;
    const x = normals(rng, BATCH * c * hw * hw), dy = normals(rng, BATCH * c * hw * hw);
    const dw = new Float32Array(w.length), db = new Float32Array(b.length);
    const natives = NATIVE_THREADS.map((t) => new ConvNative(g, k, t));
    const peaks: number[] = [];
    const steps = [
      () => void peaks.push(k.fmaPeak(0.05)[0]),
      () => (wasm.forward(x, BATCH, true), wasm.backward(dy, BATCH)),
      ...natives.map((n) => () => (n.forward(x, BATCH, true, w, b), n.backward(dy, BATCH, w, dw, db, null))),
    ];
    const flops = 6 * BATCH * c * c * 9 * hw * hw;
    const rate = (t: { wall: number; cpu: number }): Rate => ({ wall: flops / t.wall / 1e9, cpu: flops / t.cpu / 1e9 });
    const [, wasmT, ...nat] = times(steps, o.reps);
    const row: NativeConvRow = { label: `${c}→${c} 3×3 at ${hw}×${hw}`, peak: median(peaks), wasm: rate(wasmT!), native: nat.map(rate) };
    rows.push(row);
    o.log(`native-conv ${row.label}, GFLOP/s (peak ${fmt(row.peak, 1)}): wasm ${fmt(row.wasm.wall, 1)} wall; ` +
      row.native.map((r, i) => `native ${NATIVE_THREADS[i]} thread${i ? "s" : ""} ${fmt(r.wall, 1)} wall, ${fmt(r.cpu, 1)} CPU (${fmt((100 * r.cpu) / row.peak, 0)} % of the peak per CPU second)`).join("; "));
  }
  return { rows, skipped: null, isa: k.isa() };
}

/** One target row per conv: one thread's share of the peak per CPU second. */
export function nativeConvTargets(r: NativeConvResult): string[][] {
  if (!r.rows) return [[`native conv ≥ ${PEAK_SHARE_GOAL * 100} % of one core's FMA peak`, `not run: ${r.skipped}`, "n/a"]];
  return r.rows.map((row) => {
    const share = row.native[0]!.cpu / row.peak;
    return [`native conv ${row.label}, batch ${BATCH}, 1 thread ≥ ${PEAK_SHARE_GOAL * 100} % of one core's FMA peak per CPU second`,
      `${fmt(share * 100, 1)} % (${fmt(row.native[0]!.cpu, 1)} of ${fmt(row.peak, 1)} GFLOP/s)`, verdict(share >= PEAK_SHARE_GOAL)];
  });
}

export function nativeConvMarkdown(r: NativeConvResult, o: Omit<NativeConvOptions, "log">): string[] {
  if (!r.rows) return [`Not run: ${r.skipped}.`];
  return [
    `resnet:3's 3×3 convs at batch ${BATCH}, forward+backward through the layer, medians of ${o.reps} repetitions alternating with WebAssembly and ` +
      `with 50 ms of the FMA peak micro-benchmark (native/peak.cc: 12 chains of ${r.isa === "avx512f" ? "AVX-512" : r.isa} FMAs, per CPU second; the median is each conv's ceiling). ` +
      `GFLOP/s per wall second and per CPU second; the native micro-kernel here: ${r.isa}.`,
    "",
    ...table(
      ["conv", "FMA peak, GFLOP/s", "wasm, 1 thread (wall)", "native, 1 thread: wall / CPU (share of the peak)", "native, 2 threads: wall / CPU (share)"],
      r.rows.map((row) => [
        row.label,
        fmt(row.peak, 1),
        fmt(row.wasm.wall, 1),
        ...row.native.map((n) => `${fmt(n.wall, 1)} / ${fmt(n.cpu, 1)} (${fmt((100 * n.cpu) / row.peak, 0)} %)`),
      ]),
    ),
  ];
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const at = process.argv.indexOf("--reps");
  const reps = at > 0 ? Number(process.argv[at + 1]) : DEFAULT_NATIVE_CONV.reps;
  if (!(Number.isInteger(reps) && reps >= 1 && reps <= 1000)) throw new Error("--reps takes 1..1000");
  const o = { reps, log: (l: string) => console.log(l) };
  const r = runNativeConvBench(o);
  if (!r.rows) {
    console.log(r.skipped);
    process.exit(1);
  }
  console.log(["", ...nativeConvMarkdown(r, o), "", ...table(["target (issue 22)", "measured", "verdict"], nativeConvTargets(r))].join("\n"));
}
