// Simulating many devices (issue 13): `syncbn train` runs with W ranks of 2
// samples packed into few processes (--ranks-per-proc auto, or all in one), against
// the same global batch in one process (--workers 1 --batch 2W) measured in the same
// run; peak memory of the whole process tree (launcher, coordinator, workers)
// sampled from /proc. Spawns the real CLI; reports, never fails on a time.
// Alone: `npm run bench:ranks` (node dist/bench/ranks.js [--quick]), which also
// writes bench/ranks-results.md; `npm run bench` runs it as one section.

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { fmt, loadLine, machineLine, table, verdict } from "./stats.js";

const CLI = fileURLToPath(new URL("../cli/main.js", import.meta.url));

export interface RanksOptions {
  steps: number;
  /** Worlds of the mlp table (ranks × 2 samples, --ranks-per-proc auto). */
  worlds: number[];
  /** Worlds also run with one process per rank, for the contrast (costly: W processes). */
  onePerProcess: number[];
  /** Runs of each 64-rank comparison (packed and its one-process baseline alternating); the median run counts. */
  repeats: number;
  log: (line: string) => void;
}

export const DEFAULT_RANKS: RanksOptions = { steps: 200, worlds: [8, 32, 64, 256], onePerProcess: [8, 32], repeats: 3, log: () => {} };

export interface RanksRun {
  label: string;
  samplesPerSecond: number;
  msPerStep: number;
  peakMiB: number;
  processes: number;
}

/** Sum of VmRSS over `root` and its descendants, MiB (Linux /proc). */
function treeRssMiB(root: number): { mib: number; processes: number } {
  const children = new Map<number, number[]>();
  const rss = new Map<number, number>();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const status = readFileSync(`/proc/${d}/status`, "utf8");
      const ppid = Number(/PPid:\s+(\d+)/.exec(status)?.[1]);
      const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      rss.set(Number(d), kb);
      const list = children.get(ppid) ?? [];
      list.push(Number(d));
      children.set(ppid, list);
    } catch {
      // gone while we looked
    }
  }
  let kb = 0;
  let processes = 0;
  const stack = [root];
  while (stack.length > 0) {
    const p = stack.pop()!;
    kb += rss.get(p) ?? 0;
    processes++;
    stack.push(...(children.get(p) ?? []));
  }
  return { mib: kb / 1024, processes };
}

/** One `syncbn train` run: its summary's samples/s and ms/step, and the peak RSS of its process tree. */
export async function trainMeasured(label: string, args: string[]): Promise<RanksRun> {
  const out = mkdtempSync(join(tmpdir(), "syncbn-ranks-"));
  try {
    const child = spawn(process.execPath, [CLI, "train", ...args, "--out", out], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    let peak = 0;
    let processes = 0;
    const timer = setInterval(() => {
      const t = treeRssMiB(child.pid!);
      peak = Math.max(peak, t.mib);
      processes = Math.max(processes, t.processes);
    }, 100);
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    clearInterval(timer);
    if (code !== 0) throw new Error(`${label}: syncbn train ${args.join(" ")} exited ${code}: ${stderr.trim().split("\n").slice(-3).join(" / ")}`);
    const s = JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as { samplesPerSecond: number; msPerStep: number };
    return { label, samplesPerSecond: s.samplesPerSecond, msPerStep: s.msPerStep, peakMiB: peak, processes };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

/** The run with the median samples/s (the upper median of an even count). */
function medianRun(runs: readonly RanksRun[]): RanksRun {
  return [...runs].sort((x, y) => x.samplesPerSecond - y.samplesPerSecond)[Math.floor(runs.length / 2)]!;
}

export interface RanksResult {
  steps: number;
  repeats: number;
  /** mlp, 2 samples per rank, sync, by W: --ranks-per-proc auto, all W in one process, one process per rank. */
  worlds: { world: number; packed: RanksRun; oneProcess: RanksRun; onePerProcess: RanksRun | null }[];
  /**
   * The same global batch in one process, W = 64: sync against --workers 1 --batch 128;
   * local against ghost:2. packed: --ranks-per-proc auto with the default --rank-grads
   * exact; fused: the same with --rank-grads fused.
   */
  sync64: { packed: RanksRun; fused: RanksRun; oneProcess: RanksRun; single: RanksRun };
  local64: { packed: RanksRun; fused: RanksRun; single: RanksRun };
  /** The same with --transport thread (workers as threads of one process, as the issue's own figures were measured). */
  thread64: { sync: RanksRun; syncFused: RanksRun; syncSingle: RanksRun; local: RanksRun; localFused: RanksRun; localSingle: RanksRun };
  /** cnn, 32 ranks × 2, packed: sync and local. */
  cnn32: { sync: RanksRun; local: RanksRun };
}

export async function runRanksBench(o: RanksOptions): Promise<RanksResult> {
  const steps = ["--steps", String(o.steps), "--eval-every", "0"];
  const show = (r: RanksRun): RanksRun => {
    o.log(`  ${r.label}: ${fmt(r.samplesPerSecond, 0)} samples/s, ${fmt(r.msPerStep, 2)} ms/step, peak ${fmt(r.peakMiB, 0)} MiB over ${r.processes} processes`);
    return r;
  };
  // Worker processes unless a row says threads: without --transport, runs this small would default to threads (cli/layout.ts).
  const run = async (label: string, args: string[]): Promise<RanksRun> =>
    show(await trainMeasured(label, [...(args.includes("--transport") ? [] : ["--transport", "process"]), ...args, ...steps]));
  const mlp = (w: number, norm: string, rpp: string): string[] => ["--model", "mlp", "--workers", String(w), "--batch", "2", "--norm", norm, "--ranks-per-proc", rpp];
  const single = (norm: string, batch: number, model = "mlp"): string[] => ["--model", model, "--workers", "1", "--batch", String(batch), "--norm", norm];

  /** The runs in turn, `repeats` times, each round starting one later in the list (so none always goes first); the median run of each. */
  const alternate = async (runs: [string, string[]][]): Promise<RanksRun[]> => {
    const got: RanksRun[][] = runs.map(() => []);
    for (let i = 0; i < o.repeats; i++) {
      for (let j = 0; j < runs.length; j++) {
        const k = (i + j) % runs.length;
        got[k]!.push(await run(...runs[k]!));
      }
    }
    return got.map(medianRun);
  };
  /** W = 64 packed with the default --rank-grads exact, with fused, and the one-process baseline. */
  const trio = async (norm: string, baseline: [string, string[]], extra: string[] = [], tag = ""): Promise<[RanksRun, RanksRun, RanksRun]> => {
    const [exact, fused, base] = await alternate([
      [`mlp 64 ranks × 2, ${norm}, --ranks-per-proc auto${tag}`, [...mlp(64, norm, "auto"), ...extra]],
      [`mlp 64 ranks × 2, ${norm}, --ranks-per-proc auto, --rank-grads fused${tag}`, [...mlp(64, norm, "auto"), "--rank-grads", "fused", ...extra]],
      [baseline[0] + tag, [...baseline[1], ...extra]],
    ]);
    return [exact!, fused!, base!];
  };
  const thread = ["--transport", "thread"];
  const [syncPacked, syncFused, syncSingle] = await trio("sync", ["mlp 1 worker × 128, sync", single("sync", 128)]);
  const sync64 = { packed: syncPacked, fused: syncFused, oneProcess: await run("mlp 64 ranks × 2, sync, all in one process", mlp(64, "sync", "64")), single: syncSingle };
  const [localPacked, localFused, localSingle] = await trio("local", ["mlp 1 worker × 128, ghost:2", single("ghost:2", 128)]);
  const local64 = { packed: localPacked, fused: localFused, single: localSingle };
  const [tSync, tSyncFused, tSyncSingle] = await trio("sync", ["mlp 1 worker × 128, sync", single("sync", 128)], thread, ", threads");
  const [tLocal, tLocalFused, tLocalSingle] = await trio("local", ["mlp 1 worker × 128, ghost:2", single("ghost:2", 128)], thread, ", threads");
  const thread64 = { sync: tSync, syncFused: tSyncFused, syncSingle: tSyncSingle, local: tLocal, localFused: tLocalFused, localSingle: tLocalSingle };
  const worlds: RanksResult["worlds"] = [];
  for (const w of o.worlds) {
    const packed = w === 64 ? sync64.packed : await run(`mlp ${w} ranks × 2, sync, --ranks-per-proc auto`, mlp(w, "sync", "auto"));
    const oneProcess = w === 64 ? sync64.oneProcess : await run(`mlp ${w} ranks × 2, sync, all in one process`, mlp(w, "sync", String(w)));
    const one = o.onePerProcess.includes(w) ? await run(`mlp ${w} ranks × 2, sync, one process per rank`, mlp(w, "sync", "1")) : null;
    worlds.push({ world: w, packed, oneProcess, onePerProcess: one });
  }
  const cnn = (norm: string): string[] => ["--model", "cnn", "--workers", "32", "--batch", "2", "--norm", norm, "--ranks-per-proc", "auto"];
  const cnn32 = { sync: await run("cnn 32 ranks × 2, sync, --ranks-per-proc auto", cnn("sync")), local: await run("cnn 32 ranks × 2, local, --ranks-per-proc auto", cnn("local")) };
  return { steps: o.steps, repeats: o.repeats, worlds, sync64, local64, thread64, cnn32 };
}

/** A goal row: `a` against `b` in samples/s, against the least ratio `goal` (0: reported only). */
function ratioRow(what: string, a: RanksRun, b: RanksRun, goal = 0.7, by = "issue 13"): string[] {
  const x = a.samplesPerSecond / b.samplesPerSecond;
  return [what, `${fmt(a.samplesPerSecond, 0)} / ${fmt(b.samplesPerSecond, 0)} = ${fmt(x, 2)}×`, goal > 0 ? `≥ ${goal}× (${by})` : "reported", goal > 0 ? verdict(x >= goal) : ""];
}

// Issue 22's goals for many simulated devices: 64 ranks × 2 fused against 1 × 128, ≥ 0.7× on worker processes, ≥ 0.9× on threads.
const fusedProcesses = (r: RanksResult): string[] => ratioRow("64 ranks × 2, sync, auto, fused / 1 worker × 128 sync (samples/s)", r.sync64.fused, r.sync64.single, 0.7, "issues 13, 22");
const fusedThreads = (r: RanksResult): string[] => ratioRow("threads: 64 ranks × 2, sync, auto, fused / 1 worker × 128 sync (samples/s)", r.thread64.syncFused, r.thread64.syncSingle, 0.9, "issue 22");

/** Issue 22's many-devices goals as [what, measured, verdict], for the Targets table of bench/results.md. */
export function ranksTargets(r: RanksResult): string[][] {
  return [fusedProcesses(r), fusedThreads(r)].map(([what, measured, goal, v]) => [`${what}: ${goal}`, measured!, v!]);
}

export function ranksMarkdown(r: RanksResult): string[] {
  const mem64 = r.sync64.packed.peakMiB / 1024;
  const t = r.thread64;
  const mib = (x: RanksRun): string => `${fmt(x.peakMiB, 0)} MiB (${x.processes} processes)`;
  return [
    `mlp, 2 samples per rank, ${r.steps}-step runs of \`syncbn train\` with the default \`--rank-grads exact\` unless a row says fused; each 64-rank comparison runs its three configurations (exact, fused, baseline) in turn, ${r.repeats} times, and reports the median run of each; \`--ranks-per-proc auto\` packs the ranks into ≤ ${cpus().length} worker processes, \`--ranks-per-proc W\` puts all of them in one (no statistics rounds); "threads" rows run the workers as threads (\`--transport thread\`), baseline included. Peak memory is the sum of RSS over the whole process tree (launcher with its coordinator, and every worker).`,
    "",
    ...table(
      ["ranks W", "auto: samples/s", "auto: peak memory", "one process: samples/s", "one process: peak memory", "one process per rank: samples/s", "one process per rank: peak memory"],
      r.worlds.map((w) => [
        String(w.world),
        fmt(w.packed.samplesPerSecond, 0),
        mib(w.packed),
        fmt(w.oneProcess.samplesPerSecond, 0),
        mib(w.oneProcess),
        w.onePerProcess ? fmt(w.onePerProcess.samplesPerSecond, 0) : "not run (W processes)",
        w.onePerProcess ? mib(w.onePerProcess) : "",
      ]),
    ),
    "",
    ...table(
      ["figure", "value", "goal", ""],
      [
        fusedProcesses(r),
        ratioRow("64 ranks × 2, sync, auto, exact (default) / 1 worker × 128 sync (samples/s)", r.sync64.packed, r.sync64.single),
        ratioRow("64 ranks × 2, sync, one process, exact / 1 worker × 128 sync (samples/s; one run)", r.sync64.oneProcess, r.sync64.single, 0),
        ratioRow("64 ranks × 2, local, auto, fused / 1 worker × 128 ghost:2 (samples/s)", r.local64.fused, r.local64.single),
        ratioRow("64 ranks × 2, local, auto, exact (default) / 1 worker × 128 ghost:2 (samples/s)", r.local64.packed, r.local64.single),
        fusedThreads(r),
        ratioRow("threads: 64 ranks × 2, sync, auto, exact / 1 worker × 128 sync (samples/s)", t.sync, t.syncSingle),
        ratioRow("threads: 64 ranks × 2, local, auto, fused / 1 worker × 128 ghost:2 (samples/s)", t.localFused, t.localSingle),
        ratioRow("threads: 64 ranks × 2, local, auto, exact / 1 worker × 128 ghost:2 (samples/s)", t.local, t.localSingle),
        ["64 ranks, peak memory of the whole run", `${fmt(mem64, 2)} GiB`, "≤ 1.5 GB", verdict(r.sync64.packed.peakMiB * 1048576 <= 1.5e9)],
        ["cnn 32 ranks × 2, packed: sync / local (ms/step)", `${fmt(r.cnn32.sync.msPerStep, 2)} / ${fmt(r.cnn32.local.msPerStep, 2)} = ${fmt(r.cnn32.sync.msPerStep / r.cnn32.local.msPerStep, 2)}×; ${fmt(r.cnn32.sync.samplesPerSecond, 0)} samples/s sync`, "reported", ""],
      ],
    ),
  ];
}

// Run alone: `node dist/bench/ranks.js [--quick]`.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const quick = process.argv.includes("--quick");
  const log = (l: string): void => console.log(l);
  log(`ranks per process: ${machineLine()}, load ${loadLine()}`);
  const r = await runRanksBench({ ...DEFAULT_RANKS, log, ...(quick ? { steps: 60, worlds: [8, 64, 256], onePerProcess: [8], repeats: 1 } : {}) });
  const md = [`# Simulating many devices (bench/ranks.ts)`, "", `${machineLine()}; ${new Date().toISOString()}; load at end ${loadLine()}.`, "", ...ranksMarkdown(r), ""];
  writeFileSync(fileURLToPath(new URL("../../bench/ranks-results.md", import.meta.url)), md.join("\n"));
  log("");
  for (const l of md) log(l);
}
