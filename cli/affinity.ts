// CPU pinning of local worker processes (`syncbn train --pin-cpus`, and the ranks
// of `syncbn launch --pin-cpus`): worker r
// runs on the r-th allowed CPU, round-robin. With more workers than cores every
// barrier of a sync step switches processes; unpinned, the kernel also migrates
// them between cores, and each migration restarts a worker on cold caches.
// Linux only, through util-linux `taskset`; elsewhere pinning is simply off.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { ErrorCode, SyncbnError } from "../shared/errors.js";

export type PinMode = "auto" | "on" | "off";
export const PIN_MODES: readonly PinMode[] = ["auto", "on", "off"];

/** "0-3,8,10-11" (Linux's cpu-list format) → [0, 1, 2, 3, 8, 10, 11]; null if malformed. */
export function parseCpuList(text: string): number[] | null {
  const out: number[] = [];
  for (const part of text.trim().split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) return null;
    const from = Number(m[1]);
    const to = m[2] === undefined ? from : Number(m[2]);
    if (to < from) return null;
    for (let c = from; c <= to; c++) out.push(c);
  }
  return out.length > 0 ? out : null;
}

/** The CPUs this process may run on (its affinity, e.g. a cgroup's cpuset), or null where unknown. */
export function allowedCpus(statusPath = "/proc/self/status"): number[] | null {
  try {
    const m = /^Cpus_allowed_list:\s*(.+)$/m.exec(readFileSync(statusPath, "utf8"));
    return m ? parseCpuList(m[1]!) : null;
  } catch {
    return null;
  }
}

/**
 * Which CPU each of `workers` ranks goes to, or null for no pinning. "auto" pins
 * only when it cannot unbalance the cores: every core gets the same number of
 * workers (W a multiple of the CPU count) or at most one (W ≤ CPUs). 3 workers on
 * 2 cores stay unpinned: the kernel balances them better than a fixed 2 + 1.
 */
export function planPinning(mode: PinMode, workers: number, cpus: number[] | null): number[] | null {
  if (mode === "off") return null;
  if (cpus === null || cpus.length === 0) {
    if (mode === "on") throw new SyncbnError(ErrorCode.BadConfig, "--pin-cpus on: this system does not say which CPUs the process may use (Linux /proc/self/status); use --pin-cpus off");
    return null;
  }
  if (mode === "auto" && workers > cpus.length && workers % cpus.length !== 0) return null;
  return Array.from({ length: workers }, (_, rank) => cpus[rank % cpus.length]!);
}

/** Restricts process `pid` (its threads started from now on too) to `cpu`, or to a set of CPUs; throws an Error saying why if it cannot. */
export function pinProcess(pid: number, cpu: number | readonly number[]): void {
  try {
    execFileSync("taskset", ["-p", "-c", typeof cpu === "number" ? String(cpu) : cpu.join(","), String(pid)], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    throw new Error(err.code === "ENOENT" ? "taskset (util-linux) is not installed" : (err.stderr?.toString().trim() || (e as Error).message));
  }
}

/** Why pinning cannot work here (no taskset, not allowed), or null if it can: asked of our own process. */
export function pinningProblem(): string | null {
  try {
    execFileSync("taskset", ["-p", String(process.pid)], { stdio: "ignore" });
    return null;
  } catch (e) {
    return (e as { code?: string }).code === "ENOENT" ? "taskset (util-linux) is not installed" : `taskset failed: ${(e as Error).message}`;
  }
}

/**
 * The CPUs to pin `workers` local worker processes to, or null: plans with the
 * allowed CPUs. "on" turns every obstacle into a BadConfig error, checking
 * taskset first; "auto" skips that check (one process spawn at start-up) and lets
 * the launcher's pinning report a failure and run unpinned.
 */
export function workerPinning(mode: PinMode, workers: number): number[] | null {
  if (mode === "off") return null;
  if (process.platform !== "linux") {
    if (mode === "on") throw new SyncbnError(ErrorCode.BadConfig, `--pin-cpus on needs Linux (this is ${process.platform}); use --pin-cpus off`);
    return null;
  }
  const plan = planPinning(mode, workers, allowedCpus());
  if (plan === null || mode === "auto") return plan;
  const problem = pinningProblem();
  if (problem !== null) throw new SyncbnError(ErrorCode.BadConfig, `--pin-cpus on: ${problem}; install util-linux or use --pin-cpus off`);
  return plan;
}

/**
 * Pins each process to its planned CPUs (`perProcess` consecutive entries of
 * `cpus` each: one per compute thread); on a failure the processes not yet pinned
 * stay unpinned, said once. `what` names them in that line ("worker processes", "ranks").
 */
export function pinProcesses(procs: readonly { pid?: number; rank: number }[], cpus: readonly number[], perProcess: number, what: string, print: (line: string) => void): void {
  let pinned = 0;
  // More threads than CPUs wrap around: a CPU appears once in a set.
  const sets = procs.map((_, i) => [...new Set(cpus.slice(i * perProcess, (i + 1) * perProcess))]);
  try {
    for (const [i, p] of procs.entries()) {
      if (p.pid === undefined) continue;
      pinProcess(p.pid, sets[i]!);
      pinned++;
    }
    print(`${what} pinned to CPUs ${sets.map((s) => s.join("+")).join(", ")} ${procs.length > 0 && procs[procs.length - 1]!.rank !== procs.length - 1 ? "by process" : "by rank"} (--pin-cpus off lets the OS place them)`);
  } catch (e) {
    print(`could not pin ${what} to CPUs (${(e as Error).message}); ${pinned === 0 ? "running unpinned" : `ranks after the first ${pinned} run unpinned`}`);
  }
}
