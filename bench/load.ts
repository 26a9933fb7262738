// Load and soak: many lightweight clients (statistics only) against a real
// `syncbn coordinator` process on 127.0.0.1. Reports round latency percentiles,
// failed rounds, and the coordinator's memory (RSS and heap) over the run.
// Used by bench/run.ts and, with bounded sizes, by test/load.test.ts.

import { fork, spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LoadClientReport } from "./load-client.js";

export interface LoadOptions {
  clients: number;
  channels: number;
  rounds: number;
  /** Client processes the clients are spread over. */
  processes: number;
}

export interface LoadResult extends LoadOptions {
  p50Ms: number;
  p99Ms: number;
  roundsPerSecond: number;
  failedRounds: number;
  firstError?: string;
  /** Coordinator RSS after warm-up (10% of the rounds) and at the end, MiB. */
  rssStartMiB: number;
  rssEndMiB: number;
  wallSeconds: number;
}

const CLI = new URL("../cli/main.js", import.meta.url);
const CLIENT = new URL("./load-client.js", import.meta.url);

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : NaN;
}

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const token = "load-test";
  // Its own temporary folder: a coordinator without --out writes runs/<time> in its working directory.
  const coord = spawn(process.execPath, [CLI.pathname, "coordinator", "--world", String(o.clients), "--port", "0", "--token", token, "--round-timeout", "60000"], {
    stdio: ["ignore", "pipe", "inherit"],
    cwd: mkdtempSync(join(tmpdir(), "syncbn-load-")),
  });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let out = "";
      const t = setTimeout(() => reject(new Error(`coordinator did not start: ${out}`)), 20_000);
      coord.stdout!.on("data", (d: Buffer) => {
        out += d.toString();
        const m = /listening on (ws:\/\/\S+)/.exec(out);
        if (m) {
          clearTimeout(t);
          resolve(m[1]!);
        }
      });
      coord.on("exit", (code) => reject(new Error(`coordinator exited ${code}: ${out}`)));
    });
    const started = performance.now();
    const per = Math.ceil(o.clients / o.processes);
    const reports: Promise<LoadClientReport>[] = [];
    for (let p = 0, first = 0; first < o.clients; p++, first += per) {
      const k = Math.min(per, o.clients - first);
      const child = fork(CLIENT, [url, token, String(o.clients), String(first), String(k), String(o.rounds), String(o.channels)], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
      reports.push(
        new Promise((resolve, reject) => {
          let report: LoadClientReport | null = null;
          child.on("message", (m) => (report = m as LoadClientReport));
          // "close", not "exit": a large report may still be in the IPC pipe when the process has exited.
          child.on("close", (code) => (report ? resolve(report) : reject(new Error(`load client process exited ${code} without a report`))));
        }),
      );
    }
    // Coordinator RSS sampled while rounds run: after 2 s of warm-up, and the last sample
    // before the clients finish (the coordinator exits when every client said bye).
    let rssStart = NaN;
    let rssEnd = NaN;
    const sampler = setInterval(() => {
      try {
        const v = rssMiB(coord.pid!);
        // An exited but not yet reaped process reads as NaN: keep the last real sample.
        if (!Number.isFinite(v)) return;
        if (Number.isNaN(rssStart) && performance.now() - started > 2000) rssStart = v;
        rssEnd = v;
      } catch {
        // exited
      }
    }, 100);
    const all = await Promise.all(reports);
    clearInterval(sampler);
    const wall = (performance.now() - started) / 1000;
    const lat = Float64Array.from(all.flatMap((r) => r.latenciesMs).filter((v) => v > 0)).sort();
    return {
      ...o,
      p50Ms: percentile(lat, 50),
      p99Ms: percentile(lat, 99),
      roundsPerSecond: o.rounds / wall,
      failedRounds: all.reduce((a, r) => a + r.failed, 0),
      firstError: all.find((r) => r.error)?.error,
      rssStartMiB: Number.isNaN(rssStart) ? rssEnd : rssStart,
      rssEndMiB: rssEnd,
      wallSeconds: wall,
    };
  } finally {
    coord.kill("SIGKILL");
  }
}

/** Markdown section for bench/results.md: the load test and the soak. */
export async function runLoadBench(): Promise<string> {
  const load = await runLoad({ clients: 64, channels: 512, rounds: 10_000, processes: 4 });
  const soak = await runLoad({ clients: 8, channels: 64, rounds: 100_000, processes: 2 });
  const row = (name: string, r: LoadResult): string =>
    `| ${name} | ${r.clients} | ${r.channels} | ${r.rounds} | ${r.p50Ms.toFixed(3)} | ${r.p99Ms.toFixed(3)} | ${r.roundsPerSecond.toFixed(0)} | ${r.failedRounds} | ${r.rssStartMiB.toFixed(1)} → ${r.rssEndMiB.toFixed(1)} | ${r.wallSeconds.toFixed(1)} |`;
  return [
    "## Load and soak (real coordinator process, lightweight clients on 127.0.0.1)",
    "",
    "| run | clients | C | rounds | p50 ms | p99 ms | rounds/s | failed | coordinator RSS MiB (warm → end) | wall s |",
    "|---|---|---|---|---|---|---|---|---|---|",
    row("load", load),
    row("soak", soak),
    "",
  ].join("\n");
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [clients = "64", channels = "512", rounds = "10000", processes = "4"] = process.argv.slice(2);
  runLoad({ clients: Number(clients), channels: Number(channels), rounds: Number(rounds), processes: Number(processes) }).then((r) => console.log(JSON.stringify(r, null, 2)));
}
