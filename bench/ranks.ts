// Simulating many devices: samples/s and peak memory (summed RSS of every process
// of the run) of `syncbn train` with W ranks × 2 samples packed into processes
// (--ranks-per-proc auto, and one process), against one process training the same
// global batch. Real CLI runs in their own process group. Reports; never fails on a time.
// node dist/bench/ranks.js [--quick]   (writes bench/ranks-results.md)

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const CLI = fileURLToPath(new URL("../cli/main.js", import.meta.url));
const RESULTS = fileURLToPath(new URL("../../bench/ranks-results.md", import.meta.url));
const quick = process.argv.includes("--quick");
const STEPS = quick ? 40 : 200;

interface Measured {
  label: string;
  samplesPerSecond: number | null;
  processes: number;
  ranksPerProcess: number;
  peakGb: number;
}

/** Summed RSS (kB) of every process in group `pgid`. */
function groupRssKb(pgid: number): number {
  try {
    const out = execFileSync("ps", ["-eo", "pgid=,rss="], { encoding: "utf8" });
    let kb = 0;
    for (const line of out.split("\n")) {
      const [g, rss] = line.trim().split(/\s+/);
      if (Number(g) === pgid) kb += Number(rss);
    }
    return kb;
  } catch {
    return 0;
  }
}

async function run(label: string, args: string[]): Promise<Measured> {
  const out = mkdtempSync(join(tmpdir(), "syncbn-bench-ranks-"));
  try {
    const child = spawn(process.execPath, [CLI, "train", ...args, "--steps", String(STEPS), "--out", join(out, "run")], { detached: true, stdio: "ignore", env: { ...process.env, CI: "true" } });
    let peak = 0;
    const timer = setInterval(() => (peak = Math.max(peak, groupRssKb(child.pid!))), 200);
    const code = await new Promise<number | null>((r) => child.once("exit", r));
    clearInterval(timer);
    if (code !== 0) return { label: `${label} (failed, exit ${code})`, samplesPerSecond: null, processes: 0, ranksPerProcess: 0, peakGb: peak / 1048576 };
    const s = JSON.parse(readFileSync(join(out, "run", "summary.json"), "utf8")) as { samplesPerSecond: number | null; processes: number; ranksPerProcess: number };
    return { label, samplesPerSecond: s.samplesPerSecond, processes: s.processes, ranksPerProcess: s.ranksPerProcess, peakGb: peak / 1048576 };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

const rows: Measured[] = [];
const lines: string[] = [];
const loadStart = loadavg().map((l) => l.toFixed(1)).join(" / ");
const mlp = ["--model", "mlp", "--batch", "2", "--pin-cpus", "off"];
for (const w of quick ? [8, 64] : [8, 32, 64, 256]) {
  rows.push(await run(`mlp, ${w} ranks × 2, sync, auto`, ["--workers", String(w), "--norm", "sync", "--ranks-per-proc", "auto", ...mlp]));
  if (w >= 64) rows.push(await run(`mlp, ${w} ranks × 2, sync, one process`, ["--workers", String(w), "--norm", "sync", "--ranks-per-proc", String(w), ...mlp]));
}
rows.push(await run("mlp, one process, --batch 128, sync (the global batch of 64 × 2)", ["--workers", "1", "--batch", "128", "--model", "mlp", "--norm", "sync"]));
rows.push(await run("mlp, 64 ranks × 2, local, auto", ["--workers", "64", "--norm", "local", "--ranks-per-proc", "auto", ...mlp]));
rows.push(await run("mlp, one process, --batch 128, ghost:2 (the same statistics)", ["--workers", "1", "--batch", "128", "--model", "mlp", "--norm", "ghost:2"]));
const cnn = ["--model", "cnn", "--batch", "2", "--pin-cpus", "off", "--ranks-per-proc", "auto"];
rows.push(await run("cnn, 32 ranks × 2, sync, auto", ["--workers", "32", "--norm", "sync", ...cnn]));
rows.push(await run("cnn, 32 ranks × 2, local, auto", ["--workers", "32", "--norm", "local", ...cnn]));

lines.push("# Simulating many devices (bench/ranks.ts)", "");
lines.push(`${STEPS} steps per run; load average (1/5/15 min) at start ${loadStart}, at end ${loadavg().map((l) => l.toFixed(1)).join(" / ")}. Peak memory: summed RSS of every process of the run, sampled every 200 ms.`, "");
lines.push("| run | processes × ranks | samples/s | peak memory |", "|---|---|---|---|");
for (const r of rows) lines.push(`| ${r.label} | ${r.processes} × ${r.ranksPerProcess} | ${r.samplesPerSecond === null ? "–" : Math.round(r.samplesPerSecond).toLocaleString("en-US")} | ${r.peakGb.toFixed(2)} GB |`);
const text = `${lines.join("\n")}\n`;
writeFileSync(RESULTS, text);
process.stdout.write(text);
