// `npm run bench`: every benchmark of issue 5 in one bounded run — round latency
// against the raw TCP floor, kernels (bench/kernels.ts, when present), native conv
// against one core's FMA peak (bench/native-conv.ts), training
// step sync vs local, resnet:3 sync vs local and against PyTorch (bench/resnet.ts), Fashion-MNIST throughput, heap growth, load and soak
// (bench/load.ts, when present) — printed as it goes and written to
// bench/results.md with the machine, the load and a PASS/MISS line per target.
// A benchmark reports; it never fails on a time. `--quick` shrinks every section.

import "../cli/gc.js"; // the CLI's garbage-collector settings (its coordinator runs in this process)
import { existsSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { DEFAULT_HEAP, heapMarkdown, runHeapBench, type HeapOptions, type HeapResult } from "./heap.js";
import { DEFAULT_LATENCY, LATENCY_TARGET, latencyMarkdown, runLatencyBench, type LatencyOptions, type LatencyRow } from "./latency.js";
import { fmt, loadLine, machineLine, table, verdict } from "./stats.js";
import { DEFAULT_NATIVE_CONV, nativeConvMarkdown, nativeConvTargets, runNativeConvBench, type NativeConvOptions, type NativeConvResult } from "./native-conv.js";
import { DEFAULT_RANKS, ranksMarkdown, ranksTargets, runRanksBench, type RanksOptions, type RanksResult } from "./ranks.js";
import { DEFAULT_RESNET, resnetMarkdown, resnetTargets, runResnetBench, type ResnetOptions, type ResnetResult } from "./resnet.js";
import { DEFAULT_STEP, STEP_TARGET, TRANSPORT_LABEL, runStepBench, stepMarkdown, type StepOptions, type StepRow } from "./step.js";
import { DEFAULT_TORCH_LAUNCH, runTorchLaunchBench, torchLaunchMarkdown, torchLaunchTargets, type TorchLaunchOptions, type TorchLaunchResult } from "./torch-launch.js";
import { DEFAULT_THROUGHPUT, runThroughputBench, throughputMarkdown, type ThroughputOptions, type ThroughputRow } from "./throughput.js";

const quick = process.argv.includes("--quick");
// Before the first flush(): render() reads it, and a const is not there before its line runs.
const c = cpus();
const log = (l: string): void => console.log(l);
const started = Date.now();
const RESULTS = fileURLToPath(new URL("../../bench/results.md", import.meta.url));

const latencyOpts: LatencyOptions = { ...DEFAULT_LATENCY, log, ...(quick ? { warmup: 2000, blocks: 3, roundsPerBlock: 300 } : {}) };
const stepOpts: StepOptions = { ...DEFAULT_STEP, log, ...(quick ? { steps: 60, repeats: 1, diagnostics: [] } : {}) };
const throughputOpts: ThroughputOptions = { ...DEFAULT_THROUGHPUT, log, ...(quick ? { steps: 60 } : {}) };
const resnetOpts: ResnetOptions = { ...DEFAULT_RESNET, log, ...(quick ? { steps: 40, warmup: 20, repeats: 1, singleSteps: 15 } : {}) };
const torchLaunchOpts: TorchLaunchOptions = { ...DEFAULT_TORCH_LAUNCH, log, ...(quick ? { steps: 15, repeats: 1 } : {}) };
const ranksOpts: RanksOptions = { ...DEFAULT_RANKS, log, ...(quick ? { steps: 60, worlds: [8, 64, 256], onePerProcess: [8], repeats: 1 } : {}) };
const nativeConvOpts: NativeConvOptions = { ...DEFAULT_NATIVE_CONV, log, ...(quick ? { reps: 5 } : {}) };
const heapOpts: HeapOptions = { ...DEFAULT_HEAP, log, ...(quick ? { from: 50, to: 250 } : {}) };

/** Runs one section; a crash is reported in the results instead of ending the run. */
interface Done<T> {
  value: T | null;
  error: string | null;
  seconds: number;
  /** false: the bench has not reached this section (yet); results.md is rewritten after every section. */
  ran: boolean;
}
const notRun = <T>(): Done<T> => ({ value: null, error: null, seconds: 0, ran: false });

async function section<T>(name: string, f: () => Promise<T>): Promise<Done<T>> {
  const t0 = performance.now();
  log(`\n== ${name} (load ${loadLine()})`);
  try {
    const value = await f();
    return { value, error: null, seconds: (performance.now() - t0) / 1000, ran: true };
  } catch (e) {
    const error = (e as Error).stack ?? String(e);
    log(`${name} failed: ${error}`);
    return { value: null, error, seconds: (performance.now() - t0) / 1000, ran: true };
  }
}

/** An optional bench module owned elsewhere (kernels, load): its markdown, if the module is built. */
async function optionalSection(file: string, exportName: string): Promise<string | null> {
  const url = new URL(file, import.meta.url);
  if (!existsSync(url)) return null;
  const mod = (await import(url.href)) as Record<string, unknown>;
  const run = mod[exportName];
  if (typeof run !== "function") throw new Error(`${file} does not export ${exportName}()`);
  return (await (run as () => Promise<string>)()).trim();
}

log(`syncbn bench${quick ? " (quick)" : ""}: ${machineLine()}`);
const loadStart = loadLine();

let resnet = notRun<ResnetResult>(), latency = notRun<LatencyRow[]>(), kernels = notRun<string | null>(), step = notRun<StepRow[]>();
let ranks = notRun<RanksResult>(), torchLaunch = notRun<TorchLaunchResult>(), nativeConv = notRun<NativeConvResult>();
let throughput = notRun<ThroughputRow[] | null>(), heap = notRun<HeapResult>(), dashboard = notRun<string | null>();
let load: Done<string | null> | null = quick ? null : notRun<string | null>();
const flush = (final: boolean): void => writeFileSync(RESULTS, render(final).join("\n"));

// resnet:3 first: its PyTorch comparison is the longest and the most load-sensitive section.
resnet = await section("resnet:3 (and PyTorch)", () => runResnetBench(resnetOpts));
flush(false);
torchLaunch = await section("PyTorch script under syncbn launch (and DDP)", () => runTorchLaunchBench(torchLaunchOpts));
flush(false);
latency = await section("round latency", () => runLatencyBench(latencyOpts));
flush(false);
kernels = await section("kernels", () => optionalSection("./kernels.js", "runKernelBench"));
flush(false);
nativeConv = await section("native conv against the FMA peak", async () => runNativeConvBench(nativeConvOpts));
flush(false);
step = await section("training step", () => runStepBench(stepOpts));
flush(false);
throughput = await section("throughput", () => runThroughputBench(throughputOpts));
flush(false);
ranks = await section("ranks per process", () => runRanksBench(ranksOpts));
flush(false);
heap = await section("heap", () => runHeapBench(heapOpts));
flush(false);
if (!quick) {
  load = await section("load and soak", () => optionalSection("./load.js", "runLoadBench"));
  flush(false);
}
dashboard = await section("dashboard on/off", () => optionalSection("./dashboard.js", "runDashboardBench"));

function missing(s: Done<unknown>): string {
  return s.ran ? "not measured (section failed)" : "not run (bench stopped before it)";
}

function targetRows(): string[][] {
  const rows: string[][] = [];
  for (const r of (latency.value ?? []) as LatencyRow[]) {
    rows.push([`round latency W=${r.world} C=${r.channels} ≤ ${LATENCY_TARGET} × raw TCP floor, ws wire (default)`, `${fmt(r.ratio, 2)} × (${fmt(r.ours.median)} vs ${fmt(r.floor.median)} ms)`, verdict(r.ratio <= LATENCY_TARGET)]);
    rows.push([`round latency W=${r.world} C=${r.channels} ≤ ${LATENCY_TARGET} × raw TCP floor, tcp wire`, `${fmt(r.tcpRatio, 2)} × (${fmt(r.tcp.median)} vs ${fmt(r.floor.median)} ms)`, verdict(r.tcpRatio <= LATENCY_TARGET)]);
  }
  if (!latency.value) rows.push([`round latency ≤ ${LATENCY_TARGET} × floor`, missing(latency), "MISS"]);
  for (const r of ((step.value ?? []) as StepRow[]).filter((r) => !r.diagnostic)) {
    rows.push([`sync ≤ ${STEP_TARGET} × local, 4 workers × 8 (${TRANSPORT_LABEL[r.transport]})`, `${fmt(r.overhead, 2)} × (${fmt(r.sync.median, 1)} vs ${fmt(r.local.median, 1)} ms/step)`, verdict(r.overhead <= STEP_TARGET)]);
  }
  if (!step.value) rows.push([`sync ≤ ${STEP_TARGET} × local`, missing(step), "MISS"]);
  if (resnet.value) rows.push(...resnetTargets(resnet.value as ResnetResult));
  else rows.push(["resnet:3 sync vs local, against PyTorch", missing(resnet), "MISS"]);
  if (nativeConv.value) rows.push(...nativeConvTargets(nativeConv.value as NativeConvResult));
  else rows.push(["native conv ≥ 50 % of one core's FMA peak", missing(nativeConv), "MISS"]);
  if (ranks.value) rows.push(...ranksTargets(ranks.value as RanksResult));
  else rows.push(["64 ranks × 2 fused against 1 × 128 (many simulated devices)", missing(ranks), "MISS"]);
  if (torchLaunch.value) rows.push(...torchLaunchTargets(torchLaunch.value as TorchLaunchResult));
  else rows.push(["PyTorch example under syncbn launch: sync vs local, against DDP", missing(torchLaunch), "MISS"]);
  const h = heap.value as HeapResult | null;
  if (h) {
    const perStep = Math.max(...h.reports.map((w) => Math.abs(w.heapAfter - w.heapBefore))) / (heapOpts.to - heapOpts.from);
    // "≈ 0": under 1 KB per step retained is noise of a few-MB heap, not a per-step leak.
    rows.push([`heap growth over ${heapOpts.to - heapOpts.from} steps ≈ 0`, `≤ ${fmt(perStep, 0)} B/step retained (largest worker)`, verdict(perStep < 1024)]);
  } else rows.push(["heap growth ≈ 0", missing(heap), "MISS"]);
  rows.push(["conv and linear kernels ≥ 10 GFLOP/s per core", kernels.value ? "see Kernels below" : "bench/kernels.ts not present", kernels.value ? "see below" : "n/a"]);
  return rows;
}

function failed(s: Done<unknown>): string[] {
  if (!s.ran) return ["Not run: the bench had not reached this section when this file was written."];
  return s.error ? ["", "Section failed:", "", "```", s.error, "```"] : [];
}


function render(final: boolean): string[] {
const loadEnd = loadLine();
const minutes = (Date.now() - started) / 60000;
return [
  "# syncbn benchmark results",
  "",
  `Written by \`npm run bench\`${quick ? " --quick" : ""} on ${new Date().toISOString()}. Machine: ${c[0]?.model ?? "unknown CPU"}, ${c.length} cores; Node ${process.version}; ${process.platform}. ` +
    `Load average (1/5/15 min) at start ${loadStart}, at end ${loadEnd}; ${final ? "whole run" : "PARTIAL (written after a section; the run went on or was stopped)"} ${fmt(minutes, 1)} min. ` +
    `The machine is shared: with a load above the core count every figure is slower and noisier than on an idle machine — compare figures measured in the same run, as the ratios do.`,
  "",
  "## Targets",
  "",
  ...table(["target (issues 5, 12, 22 and 23)", "measured (medians)", "verdict"], targetRows()),
  "",
  "## 1. Round latency",
  "",
  ...(latency.value ? latencyMarkdown(latency.value, latencyOpts) : []),
  ...failed(latency),
  "",
  "## 2. Kernels",
  "",
  kernels.value ?? (kernels.error || !kernels.ran ? "" : "bench/kernels.ts is not present in this build."),
  ...failed(kernels),
  "",
  "## 2b. Native conv against one core's FMA peak",
  "",
  ...(nativeConv.value ? nativeConvMarkdown(nativeConv.value as NativeConvResult, nativeConvOpts) : []),
  ...failed(nativeConv),
  "",
  "## 3. Training step: sync vs local",
  "",
  ...(step.value ? stepMarkdown(step.value, stepOpts) : []),
  ...failed(step),
  "",
  "## 3b. resnet:3: sync vs local, and against PyTorch",
  "",
  ...(resnet.value ? resnetMarkdown(resnet.value as ResnetResult, resnetOpts) : []),
  ...failed(resnet),
  "",
  "## 3c. A PyTorch script under syncbn launch, and PyTorch's DDP",
  "",
  ...(torchLaunch.value ? torchLaunchMarkdown(torchLaunch.value as TorchLaunchResult, torchLaunchOpts) : []),
  ...failed(torchLaunch),
  "",
  "## 4. Throughput on Fashion-MNIST",
  "",
  ...(throughput.ran && (throughput.value !== null || !throughput.error) ? throughputMarkdown(throughput.value as ThroughputRow[] | null, throughputOpts) : []),
  ...failed(throughput),
  "",
  "## 4b. Simulating many devices: ranks per process",
  "",
  ...(ranks.value ? ranksMarkdown(ranks.value) : []),
  ...failed(ranks),
  "",
  "## 5. Heap in the steady-state step loop",
  "",
  ...(heap.value ? heapMarkdown(heap.value, heapOpts) : []),
  ...failed(heap),
  "",
  ...(load?.value ? [load.value, ""] : load?.error || (load && !load.ran) ? ["## Load and soak", "", ...failed(load), ""] : []),
  "## Live dashboard: step cost on and off",
  "",
  dashboard.value ?? "",
  ...failed(dashboard),
  "",
  "## Reproduce",
  "",
  "`npm run bench` (about 16 minutes on this 2-core machine; `node dist/bench/run.js --quick` for a short run). Sections alone: `node dist/bench/latency.js [--quick] [--worlds 2,4] [--channels 64] [--unpinned]`, " +
    "`node dist/bench/step.js [--quick] [--transports process,process-tcp,thread]`, `node dist/bench/native-conv.js [--reps N]`, `node dist/bench/resnet.js [--quick]` (runs `bench/torch_resnet.py` with /usr/bin/python3 when it has torch), `node dist/bench/torch-launch.js [--steps N] [--repeats R] [--blocks B]`, `node dist/bench/throughput.js`, `node dist/bench/ranks.js [--quick]`, `node dist/bench/heap.js`, `node dist/bench/kernels.js`, `node dist/bench/dashboard.js [--quick]`.",
  "",
];
}
const md = render(true);
writeFileSync(RESULTS, md.join("\n"));
log(`\n${md.join("\n")}`);
log(`wrote ${RESULTS} (${fmt((Date.now() - started) / 60000, 1)} min; load ${loadStart} → ${loadLine()}, ${loadavg()[0]! > c.length ? "machine busy" : "machine not saturated"})`);
if ([latency, kernels, step, resnet, torchLaunch, throughput, ranks, heap, load, dashboard].some((s) => s?.error)) process.exitCode = 1;
