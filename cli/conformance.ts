// `syncbn conformance DIR...`: runs every case of the PyTorch-computed sync-BN
// suites in the given folders through a real coordinator and W real worker
// processes over WebSocket on 127.0.0.1 (or the W ranks packed into fewer
// processes, --ranks-per-proc), and compares against the expected values
// (see conformance-case.ts; the format is DESIGN.md §10).

import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { startCoordinatorServer, DEFAULT_MAX_PAYLOAD } from "../coordinator/server.js";
import { caseConventions, compareCase, loadCase, type CaseDump } from "./conformance-case.js";
import type { WorkerReport } from "./conformance-worker.js";
import { forkWorker, killAll } from "./procs.js";
import { spawn } from "node:child_process";
import { delimiter } from "node:path";
import { PYTHON_DIR } from "./launch.js";

export interface ConformanceOptions {
  dump?: string;
  /** Per-case deadline, and the coordinator's round deadline. */
  timeoutMs: number;
  /**
   * Ranks per worker process (default 1). A case whose ranks in one block have
   * unequal slices in some step runs all its ranks in one process instead (a block
   * that sends rounds needs equal per-rank batches; one holding the whole world
   * merges locally, any slices).
   */
  ranksPerProc?: number;
  /** "ts" (default): the TypeScript worker; "python": python/syncbn's SyncBatchNorm on PyTorch, one process per rank, on the tcp wire. */
  workersLang?: "ts" | "python";
  /** The Python interpreter with torch, for workersLang "python" (default python3). */
  python?: string;
  print(line: string): void;
}

/** Every case file of the folders, folder by folder, each folder's files sorted; checked before any case runs. */
function caseFiles(dirs: readonly string[]): { dir: string; f: string }[] {
  const out: { dir: string; f: string }[] = [];
  for (const dir of dirs) {
    let files: string[];
    try {
      if (!statSync(dir).isDirectory()) throw new Error("not a directory");
      files = readdirSync(dir).filter((f) => f.endsWith(".json")).sort();
    } catch (e) {
      throw new SyncbnError(ErrorCode.BadConfig, `conformance folder ${dir} is not readable (${(e as Error).message}); pass the folder holding the case *.json files`);
    }
    if (files.length === 0) throw new SyncbnError(ErrorCode.BadConfig, `no *.json case files in ${dir}`);
    for (const f of files) out.push({ dir, f });
  }
  return out;
}

export async function runConformance(dirs: readonly string[], opts: ConformanceOptions): Promise<{ passed: number; failed: number }> {
  const files = caseFiles(dirs);
  if (opts.dump) mkdirSync(opts.dump, { recursive: true });
  let passed = 0;
  let failed = 0;
  for (const { dir, f } of files) {
    const path = join(dir, f);
    let name = basename(f, ".json");
    try {
      const c = loadCase(path);
      name = c.name;
      const { dump, packing } = opts.workersLang === "python" ? await runPythonCase(path, opts.timeoutMs, opts.python ?? "python3") : await runCase(path, opts.timeoutMs, opts.ranksPerProc ?? 1);
      if (opts.dump) writeFileSync(join(opts.dump, `${c.name}.json`), JSON.stringify(dump));
      const m = compareCase(c, dump);
      if (m) {
        failed++;
        opts.print(`FAIL ${name}: ${m.field} max abs err ${m.maxAbsErr.toExponential(3)} at index ${m.index}`);
      } else {
        passed++;
        opts.print(`PASS ${name}${packing}`);
      }
    } catch (e) {
      failed++;
      opts.print(`FAIL ${name}: ${(e as Error).message.split("\n").join(" | ")}`);
    }
  }
  opts.print(`${passed} passed, ${failed} failed`);
  return { passed, failed };
}

/** Blocks [first, first+size) of the case's ranks: R per process, or all in one when a block's slices differ. */
function caseBlocks(c: ReturnType<typeof loadCase>, perProc: number): { first: number; size: number }[] {
  const w = c.steps[0]!.workers.length;
  const r = Math.min(perProc, w);
  const blocks: { first: number; size: number }[] = [];
  for (let first = 0; first < w; first += r) blocks.push({ first, size: Math.min(r, w - first) });
  const even = blocks.every((b) => b.size === w || c.steps.every((s) => s.workers.slice(b.first, b.first + b.size).every((x) => x.shape[0] === s.workers[b.first]!.shape[0])));
  return even ? blocks : [{ first: 0, size: w }];
}

async function runCase(path: string, timeoutMs: number, perProc: number): Promise<{ dump: CaseDump; packing: string }> {
  const c = loadCase(path);
  const worldSize = c.steps[0]!.workers.length;
  const blocks = caseBlocks(c, perProc);
  const packing = perProc > 1 ? ` (${worldSize} rank${worldSize === 1 ? "" : "s"} in ${blocks.length} process${blocks.length === 1 ? "" : "es"})` : "";
  const token = randomBytes(16).toString("hex");
  const server = await startCoordinatorServer({
    host: "127.0.0.1",
    port: 0,
    worldSize,
    token,
    conventions: caseConventions(c),
    roundTimeoutMs: timeoutMs,
    maxPayload: DEFAULT_MAX_PAYLOAD,
  });
  const script = new URL("./conformance-worker.js", import.meta.url);
  const procs = blocks.map(({ first, size }) => forkWorker(script, [path, String(first), server.url, token, String(timeoutMs), String(size)], first, { env: { ...process.env } }));
  try {
    const deadline = new Promise<never>((_, reject) =>
      setTimeout(() => reject(new SyncbnError(ErrorCode.Timeout, `case did not finish within ${timeoutMs} ms`)), timeoutMs).unref(),
    );
    const exits = await Promise.race([Promise.all(procs.map((p) => p.exited)), deadline]);
    const reports: WorkerReport[] = [];
    for (const [i, p] of procs.entries()) {
      const exit = exits[i]!;
      // One report per rank the process hosts.
      const report = p.messages.find((m): m is WorkerReport[] => Array.isArray(m) && (m as WorkerReport[])[0]?.type === "report");
      if (exit.code !== 0 || !report) {
        const why = p.stderrTail().filter((l) => l.trim()).slice(-3).join(" | ") || `exit code ${exit.code ?? exit.signal}`;
        throw new Error(`worker rank${blocks[i]!.size > 1 ? `s ${p.rank}..${p.rank + blocks[i]!.size - 1}` : ` ${p.rank}`} failed: ${why}`);
      }
      reports.push(...report);
    }
    return { dump: toDump(c.name, reports, server.coordinator.runningStats.layers.get(0)), packing };
  } finally {
    await killAll(procs);
    await server.close();
  }
}

/** Worker reports → the dump format; globals come from rank 0, checked equal on every rank. */
function toDump(name: string, reports: WorkerReport[], coordStats: { mean: Float64Array; var: Float64Array } | undefined): CaseDump {
  const r0 = reports[0]!;
  const steps = r0.steps.map((s, i) => {
    for (const r of reports) {
      const o = r.steps[i]!;
      for (const f of ["dgamma", "dbeta", "mean", "var", "runningMean", "runningVar"] as const) {
        if (o[f].some((v, j) => !Object.is(v, s[f][j]))) throw new Error(`rank ${r.rank} step ${i}: ${f} differs from rank 0's (replicas must agree bit for bit)`);
      }
    }
    return {
      workers: reports.map((r) => ({ y: r.steps[i]!.y, dx: r.steps[i]!.dx })),
      dgamma: s.dgamma,
      dbeta: s.dbeta,
      mean: s.mean,
      var: s.var,
      runningMean: s.runningMean,
      runningVar: s.runningVar,
    };
  });
  const last = steps[steps.length - 1]!;
  if (coordStats && (coordStats.mean.some((v, j) => !Object.is(v, last.runningMean[j])) || coordStats.var.some((v, j) => !Object.is(v, last.runningVar[j])))) {
    throw new Error("the coordinator's authoritative running statistics differ from the workers'");
  }
  for (const r of reports) {
    if (r.evalY.some((v, j) => !Object.is(v, r0.evalY[j]))) throw new Error(`rank ${r.rank}: eval output differs from rank 0's`);
  }
  return { name, steps, eval: { y: r0.evalY } };
}

/**
 * A case on Python workers (python/syncbn/conformance.py): W processes of
 * `PYTHON -m syncbn.conformance`, each printing its report as one JSON line.
 */
async function runPythonCase(path: string, timeoutMs: number, python: string): Promise<{ dump: CaseDump; packing: string }> {
  const c = loadCase(path);
  const worldSize = c.steps[0]!.workers.length;
  const token = randomBytes(16).toString("hex");
  const server = await startCoordinatorServer({ host: "127.0.0.1", port: 0, worldSize, token, conventions: caseConventions(c), roundTimeoutMs: timeoutMs, maxPayload: DEFAULT_MAX_PAYLOAD, wire: "tcp" });
  const env = { ...process.env, PYTHONPATH: [PYTHON_DIR, process.env.PYTHONPATH].filter(Boolean).join(delimiter), OMP_NUM_THREADS: "1" };
  const procs = Array.from({ length: worldSize }, (_, rank) => {
    const child = spawn(python, ["-m", "syncbn.conformance", path, String(rank), server.url, token, String(timeoutMs)], { env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const exited = new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      child.once("error", (e) => resolve({ code: 127, out, err: `cannot start ${python}: ${e.message}` }));
      child.once("close", (code) => resolve({ code, out, err }));
    });
    return { child, exited };
  });
  try {
    const deadline = new Promise<never>((_, reject) => setTimeout(() => reject(new SyncbnError(ErrorCode.Timeout, `case did not finish within ${timeoutMs} ms`)), timeoutMs).unref());
    const exits = await Promise.race([Promise.all(procs.map((p) => p.exited)), deadline]);
    const reports: WorkerReport[] = exits.map((e, rank) => {
      const line = e.out.trim().split("\n").pop() ?? "";
      if (e.code !== 0 || !line.startsWith("{")) {
        const why = e.err.split("\n").filter((l) => l.trim()).slice(-3).join(" | ") || `exit code ${e.code}`;
        throw new Error(`python worker rank ${rank} failed: ${why}`);
      }
      return JSON.parse(line) as WorkerReport;
    });
    return { dump: toDump(c.name, reports, server.coordinator.runningStats.layers.get(0)), packing: " (python workers)" };
  } finally {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
    await server.close();
  }
}
