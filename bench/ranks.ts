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
  /** The same global batch in one process, W = 64: sync against --workers 1 --batch 128; local against ghost:2. */
  sync64: { packed: RanksRun; oneProcess: RanksRun; single: RanksRun; exact: RanksRun };
  local64: { packed: RanksRun; single: RanksRun };
  /** The same with --transport thread (workers as threads of one process, as the issue's own figures were measured). */
  thread64: { sync: RanksRun; syncSingle: RanksRun; local: RanksRun; localSingle: RanksRun };
  /** cnn, 32 ranks × 2, packed: sync and local. */
  cnn32: { sync: RanksRun; local: RanksRun };
}

export async function runRanksBench(o: RanksOptions): Promise<RanksResult> {
  const steps = ["--steps", String(o.steps), "--eval-every", "0"];
  const show = (r: RanksRun): RanksRun => {
    o.log(`  ${r.label}: ${fmt(r.samplesPerSecond, 0)} samples/s, ${fmt(r.msPerStep, 2)} ms/step, peak ${fmt(r.peakMiB, 0)} MiB over ${r.processes} processes`);
    return r;
  };
  const run = async (label: string, args: string[]): Promise<RanksRun> => show(await trainMeasured(label, [...args, ...steps]));
  const mlp = (w: number, norm: string, rpp: string): string[] => ["--model", "mlp", "--workers", String(w), "--batch", "2", "--norm", norm, "--ranks-per-proc", rpp];
  const single = (norm: string, batch: number, model = "mlp"): string[] => ["--model", model, "--workers", "1", "--batch", String(batch), "--norm", norm];

  /** The pair's runs alternating (which goes first swaps each round), `repeats` of each; the median run of each. */
  const pair = async (a: [string, string[]], b: [string, string[]]): Promise<[RanksRun, RanksRun]> => {
    const ra: RanksRun[] = [], rb: RanksRun[] = [];
    for (let i = 0; i < o.repeats; i++) {
      if (i % 2 === 0) { ra.push(await run(...a)); rb.push(await run(...b)); } else { rb.push(await run(...b)); ra.push(await run(...a)); }
    }
    return [medianRun(ra), medianRun(rb)];
  };
  const thread = ["--transport", "thread"];
  const [syncPacked, syncSingle] = await pair(["mlp 64 ranks × 2, sync, --ranks-per-proc auto", mlp(64, "sync", "auto")], ["mlp 1 worker × 128, sync", single("sync", 128)]);
  const sync64 = {
    packed: syncPacked,
    oneProcess: await run("mlp 64 ranks × 2, sync, all in one process", mlp(64, "sync", "64")),
    single: syncSingle,
    exact: await run("mlp 64 ranks × 2, sync, --ranks-per-proc auto, --rank-grads exact", [...mlp(64, "sync", "auto"), "--rank-grads", "exact"]),
  };
  const [localPacked, localSingle] = await pair(["mlp 64 ranks × 2, local, --ranks-per-proc auto", mlp(64, "local", "auto")], ["mlp 1 worker × 128, ghost:2", single("ghost:2", 128)]);
  const local64 = { packed: localPacked, single: localSingle };
  const [tSync, tSyncSingle] = await pair(["mlp 64 ranks × 2, sync, --ranks-per-proc auto, threads", [...mlp(64, "sync", "auto"), ...thread]], ["mlp 1 worker × 128, sync, thread", [...single("sync", 128), ...thread]]);
  const [tLocal, tLocalSingle] = await pair(["mlp 64 ranks × 2, local, --ranks-per-proc auto, threads", [...mlp(64, "local", "auto"), ...thread]], ["mlp 1 worker × 128, ghost:2, thread", [...single("ghost:2", 128), ...thread]]);
  const thread64 = { sync: tSync, syncSingle: tSyncSingle, local: tLocal, localSingle: tLocalSingle };
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

export function ranksMarkdown(r: RanksResult): string[] {
  const ratioSync = r.sync64.packed.samplesPerSecond / r.sync64.single.samplesPerSecond;
  const ratioOne = r.sync64.oneProcess.samplesPerSecond / r.sync64.single.samplesPerSecond;
  const ratioExact = r.sync64.exact.samplesPerSecond / r.sync64.single.samplesPerSecond;
  const ratioLocal = r.local64.packed.samplesPerSecond / r.local64.single.samplesPerSecond;
  const mem64 = r.sync64.packed.peakMiB / 1024;
  const t = r.thread64;
  const ratioThreadSync = t.sync.samplesPerSecond / t.syncSingle.samplesPerSecond;
  const ratioThreadLocal = t.local.samplesPerSecond / t.localSingle.samplesPerSecond;
  const mib = (x: RanksRun): string => `${fmt(x.peakMiB, 0)} MiB (${x.processes} processes)`;
  return [
    `mlp, 2 samples per rank, ${r.steps}-step runs of \`syncbn train\` with the default \`--rank-grads fused\` unless a row says exact; each 64-rank comparison is the median of ${r.repeats} runs of each side, alternating; \`--ranks-per-proc auto\` packs the ranks into ≤ ${cpus().length} worker processes, \`--ranks-per-proc W\` puts all of them in one (no statistics rounds); "threads" rows run the workers as threads (\`--transport thread\`), baseline included. Peak memory is the sum of RSS over the whole process tree (launcher with its coordinator, and every worker).`,
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
      ["figure", "value", "goal (issue 13)", ""],
      [
        ["64 ranks × 2, sync, auto / 1 worker × 128 sync (samples/s)", `${fmt(r.sync64.packed.samplesPerSecond, 0)} / ${fmt(r.sync64.single.samplesPerSecond, 0)} = ${fmt(ratioSync, 2)}×`, "≥ 0.7×", verdict(ratioSync >= 0.7)],
        ["64 ranks × 2, sync, one process / 1 worker × 128 sync (samples/s)", `${fmt(r.sync64.oneProcess.samplesPerSecond, 0)} / ${fmt(r.sync64.single.samplesPerSecond, 0)} = ${fmt(ratioOne, 2)}×`, "≥ 0.7×", verdict(ratioOne >= 0.7)],
        ["64 ranks × 2, sync, auto, --rank-grads exact / 1 worker × 128 sync (samples/s; one run)", `${fmt(r.sync64.exact.samplesPerSecond, 0)} / ${fmt(r.sync64.single.samplesPerSecond, 0)} = ${fmt(ratioExact, 2)}×`, "reported", ""],
        ["64 ranks × 2, local, packed / 1 worker × 128 ghost:2 (samples/s)", `${fmt(r.local64.packed.samplesPerSecond, 0)} / ${fmt(r.local64.single.samplesPerSecond, 0)} = ${fmt(ratioLocal, 2)}×`, "≥ 0.7×", verdict(ratioLocal >= 0.7)],
        ["threads: 64 ranks × 2, sync, auto / 1 worker × 128 sync (samples/s)", `${fmt(t.sync.samplesPerSecond, 0)} / ${fmt(t.syncSingle.samplesPerSecond, 0)} = ${fmt(ratioThreadSync, 2)}×`, "≥ 0.7×", verdict(ratioThreadSync >= 0.7)],
        ["threads: 64 ranks × 2, local, auto / 1 worker × 128 ghost:2 (samples/s)", `${fmt(t.local.samplesPerSecond, 0)} / ${fmt(t.localSingle.samplesPerSecond, 0)} = ${fmt(ratioThreadLocal, 2)}×`, "≥ 0.7×", verdict(ratioThreadLocal >= 0.7)],
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
