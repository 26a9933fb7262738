// Kernel benchmark (issue 5 §2): BN forward+backward for (32, 64, 16, 16) in
// elements/s through the BN layer on its WebAssembly passes and on their TypeScript
// twins (shared/stats.ts), interleaved in the same run, and the reference
// cnn's conv 3×3 and linear layers and resnet:3's convs (stride 2, 1×1), forward+backward through the layer (copies,
// im2col and bias included) in GFLOP/s, on the JS and WASM kernels. Not a test:
// it reports and never fails on a time. Standalone: node dist/bench/kernels.js [--quick].

import { pathToFileURL } from "node:url";
import { Rng } from "../shared/rng.js";
import { BatchNorm } from "../worker/nn/batchnorm.js";
import { Conv2d } from "../worker/nn/conv2d.js";
import { kernelBackend, setKernelBackend, wasmKernelModule, type KernelBackend } from "../worker/nn/kernels/backend.js";
import { Linear } from "../worker/nn/linear.js";
import { fmt, loadLine, machineLine, percentile, table, verdict } from "./stats.js";

export interface KernelBenchOptions {
  /** Measured runs per kernel and backend (median and p90 over them). */
  reps: number;
  /** Unmeasured time per kernel and backend first (V8 tiers wasm and JS up meanwhile). */
  warmupMs: number;
  /** Calls per run: enough that one run lasts at least this long. */
  minRunMs: number;
  batches: readonly number[];
  log(line: string): void;
}

export const DEFAULT_KERNEL_BENCH: Omit<KernelBenchOptions, "log"> = { reps: 30, warmupMs: 300, minRunMs: 4, batches: [8, 32] };

/** Issue 5's floor for conv and linear, per core. */
export const GFLOPS_TARGET = 10;

/** Throughput in work units per second over the runs: median, and p90 of the run time (the slow tail). */
export interface Rate {
  median: number;
  p90: number;
  /** Median by process CPU time: what one core did while it ran, whatever else shared the machine. */
  cpuMedian: number;
}

/**
 * Rates of each call over o.reps runs. The calls (one per backend) run
 * interleaved, run by run, so a change in machine load hits them alike.
 */
export function measure(calls: readonly (() => void)[], workPerCall: number, o: Omit<KernelBenchOptions, "log">): Rate[] {
  const inner = calls.map((call) => {
    const t0 = performance.now();
    let done = 0;
    while (done < 3 || performance.now() < t0 + o.warmupMs) {
      call();
      done++;
    }
    const perCallMs = (performance.now() - t0) / done;
    return Math.max(1, Math.ceil(o.minRunMs / Math.max(perCallMs, 1e-6)));
  });
  const wall = calls.map((): number[] => []), cpu = calls.map((): number[] => []);
  for (let r = 0; r < o.reps; r++) {
    calls.forEach((call, b) => {
      const c0 = process.cpuUsage();
      const w0 = performance.now();
      for (let i = 0; i < inner[b]!; i++) call();
      const w1 = performance.now();
      const c = process.cpuUsage(c0);
      wall[b]!.push((w1 - w0) / 1000 / inner[b]!);
      cpu[b]!.push((c.user + c.system) / 1e6 / inner[b]!);
    });
  }
  return calls.map((_, b) => ({
    median: workPerCall / percentile(wall[b]!, 0.5),
    p90: workPerCall / percentile(wall[b]!, 0.9),
    cpuMedian: workPerCall / percentile(cpu[b]!, 0.5),
  }));
}

function normals(rng: Rng, len: number): Float32Array {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = rng.normal();
  return a;
}

interface LayerCase {
  label: string;
  batch: number;
  /** Forward + backward flops: 2 for y, 2 for dW, 2 for dx per multiply-add of the forward. */
  flops: number;
  build(backend: KernelBackend): { forward(x: Float32Array, n: number, train: boolean): Float32Array; backward(dy: Float32Array, n: number): Float32Array };
  inSize: number;
  outSize: number;
}

/** The reference cnn's conv and linear layers (DESIGN.md §7), and resnet:N's strided ones, at one per-worker batch. */
function layerCases(batch: number): LayerCase[] {
  const conv = (label: string, cin: number, cout: number, hw: number, k = 3, stride = 1): LayerCase => {
    const out = Math.floor((hw + 2 * ((k - 1) / 2) - k) / stride) + 1;
    return {
      label: `${label} ${k}×${k} ${cin}→${cout}${stride > 1 ? ` stride ${stride}` : ""} pad ${(k - 1) / 2} on ${hw}×${hw}`,
      batch,
      flops: 6 * batch * cout * cin * k * k * out * out,
      build: (b) => new Conv2d(label, cin, cout, k, stride, (k - 1) / 2, hw, hw, new Rng(1), b, stride === 1),
      inSize: cin * hw * hw,
      outSize: cout * out * out,
    };
  };
  const linear = (label: string, inF: number, outF: number): LayerCase => ({
    label: `${label} linear ${inF}→${outF}`,
    batch,
    flops: 6 * batch * inF * outF,
    build: (b) => new Linear(label, inF, outF, new Rng(1), b),
    inSize: inF,
    outSize: outF,
  });
  return [
    conv("conv1", 1, 16, 28), conv("conv2", 16, 32, 14), linear("fc1", 32 * 7 * 7, 64), linear("fc2", 64, 10),
    conv("resnet layer2.0.conv1", 16, 32, 28, 3, 2), conv("resnet layer2.0.downsample", 16, 32, 28, 1, 2), conv("resnet layer3.0.downsample", 32, 64, 14, 1, 2),
  ];
}

/** resnet:3's conv shapes on 1×28×28 (worker/nn/resnet.ts: no bias, pad (k−1)/2): 3×3 stride 1 and 2, the stride-2 1×1 shortcuts, and a stride-1 1×1. */
function resnetCases(batch: number): LayerCase[] {
  const conv = (label: string, cin: number, cout: number, k: number, stride: number, hw: number): LayerCase => {
    const pad = (k - 1) / 2;
    const out = Math.floor((hw + 2 * pad - k) / stride) + 1;
    return {
      label: `resnet ${label} ${k}×${k} s${stride} ${cin}→${cout} on ${hw}×${hw} → ${out}×${out}`,
      batch,
      flops: 6 * batch * cout * cin * k * k * out * out,
      build: (b) => new Conv2d(label, cin, cout, k, stride, pad, hw, hw, new Rng(1), b, false),
      inSize: cin * hw * hw,
      outSize: cout * out * out,
    };
  };
  return [
    conv("layer1.conv", 16, 16, 3, 1, 28),
    conv("layer2.0.conv1", 16, 32, 3, 2, 28),
    conv("layer2.0.downsample", 16, 32, 1, 2, 28),
    conv("layer3.0.conv1", 32, 64, 3, 2, 14),
    conv("layer3.0.downsample", 32, 64, 1, 2, 14),
    conv("1×1 (not in resnet:3)", 32, 64, 1, 1, 14),
  ];
}

/**
 * BN forward + backward over (N, C, H, W) through the BatchNorm layer (local
 * statistics, no collective) on one backend: staging, moments, normalize, grad
 * sums, dx and the running statistics, as a training step runs them.
 */
export function bnLayerCall(backend: KernelBackend, n: number, c: number, h: number, w: number): () => void {
  const before = kernelBackend();
  setKernelBackend(backend);
  const bn = new BatchNorm("bn", 0, [c, h, w], { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true }, null);
  setKernelBackend(before);
  const rng = new Rng(3);
  const x = normals(rng, n * c * h * w), dy = normals(rng, n * c * h * w);
  return () => {
    void bn.forward(x, n, true);
    void bn.backward(dy, n);
  };
}

/** Runs every kernel and returns the markdown section for bench/results.md. */
export async function runKernelBench(options: Partial<KernelBenchOptions> = {}): Promise<string> {
  const o: KernelBenchOptions = { ...DEFAULT_KERNEL_BENCH, log: () => {}, ...options };
  const backends: KernelBackend[] = wasmKernelModule() === null ? ["js"] : ["js", "wasm"];
  const loadBefore = loadLine();

  const bnShape = [32, 64, 16, 16] as const;
  const bnElements = bnShape[0] * bnShape[1] * bnShape[2] * bnShape[3];
  const [bnJs, bnWasm] = measure(backends.map((b) => bnLayerCall(b, ...bnShape)), bnElements, o) as [Rate, Rate | undefined];
  const mEl = (r: Rate | undefined, k: keyof Rate): string => (r ? fmt(r[k] / 1e6, 1) : "n/a");
  o.log(`BN (32, 64, 16, 16) fwd+bwd: WASM ${mEl(bnWasm, "median")} M elements/s, TS twin ${mEl(bnJs, "median")} (CPU time: ${mEl(bnWasm, "cpuMedian")}, ${mEl(bnJs, "cpuMedian")})`);
  await new Promise((r) => setImmediate(r));

  const rows: string[][] = [];
  for (const batch of o.batches) {
    for (const c of [...layerCases(batch), ...resnetCases(batch)]) {
      const rng = new Rng(2);
      const x = normals(rng, batch * c.inSize), dy = normals(rng, batch * c.outSize);
      const calls = backends.map((b) => {
        const layer = c.build(b);
        return (): void => {
          layer.forward(x, batch, true);
          layer.backward(dy, batch);
        };
      });
      const [js, wasm] = measure(calls, c.flops, o) as [Rate, Rate | undefined];
      await new Promise((r) => setImmediate(r));
      const g = (r: Rate | undefined, k: keyof Rate): string => (r ? fmt(r[k] / 1e9, 2) : "n/a");
      o.log(`${c.label} batch ${batch}: JS ${g(js, "median")} GFLOP/s, WASM ${g(wasm, "median")} GFLOP/s`);
      rows.push([
        c.label, String(batch),
        g(js, "median"), g(js, "p90"), g(js, "cpuMedian"), g(wasm, "median"), g(wasm, "p90"), g(wasm, "cpuMedian"),
        wasm ? fmt(wasm.median / js.median, 1) : "n/a",
        wasm ? verdict(wasm.median / 1e9 >= GFLOPS_TARGET) : "n/a",
      ]);
    }
  }

  return [
    `Kernels, forward + backward through the layer (weight/input copies, im2col/col2im, bias and Σdy included), ` +
      `${o.reps} runs each of ≥ ${o.minRunMs} ms after ${o.warmupMs} ms of warm-up, single thread, JS and WASM runs interleaved. ` +
      `Flops counted as 6 per multiply-add of the forward (y, dW, dx). "p90" is the rate of the 90th-percentile (slow) run; ` +
      `"CPU-time median" divides by the process's CPU time instead of wall time, so time slices lost to other processes on a shared machine do not count. ` +
      `Machine: ${machineLine()}; load (1/5/15 min) ${loadBefore} before, ${loadLine()} after.${backends.length === 1 ? " WebAssembly SIMD unavailable: JS only." : ""}`,
    "",
    `BN forward + backward, (N, C, H, W) = (32, 64, 16, 16), through the BatchNorm layer (local statistics: staging, two-pass float64 moments, normalize, grad sums, dx), ` +
      `WebAssembly SIMD passes: median ${mEl(bnWasm, "median")} M elements/s, p90 ${mEl(bnWasm, "p90")}, CPU-time median ${mEl(bnWasm, "cpuMedian")}; ` +
      `their TypeScript twins (shared/stats.ts, the same bits), in the same run: median ${mEl(bnJs, "median")}, p90 ${mEl(bnJs, "p90")}, CPU-time median ${mEl(bnJs, "cpuMedian")}` +
      `${bnWasm ? ` (WASM / TS ${fmt(bnWasm.median / bnJs.median, 1)}×)` : ""}. PyTorch's BatchNorm2d on the same shape: section 3b.`,
    "",
    ...table(
      ["layer (reference cnn, then resnet:3)", "batch", "JS median GFLOP/s", "JS p90", "JS CPU-time median", "WASM median GFLOP/s", "WASM p90", "WASM CPU-time median", "WASM / JS (medians)", `WASM ≥ ${GFLOPS_TARGET}`],
      rows,
    ),
  ].join("\n");
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const quick = process.argv.includes("--quick");
  const section = await runKernelBench({ log: (l) => console.error(l), ...(quick ? { reps: 10, warmupMs: 150 } : {}) });
  console.log(section);
}
