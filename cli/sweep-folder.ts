// A sweep's folder: sweep.json (the folder's grid, the union of every command
// run on it, and those commands), the check that a command fits the folder (same
// shared settings; the axes may grow) and that finished runs are what their names
// say. Reads and writes files only; running the grid is sweep.ts's.

import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import type { RunSummary } from "./monitor.js";
import type { PresetRecord } from "./study-preset.js";
import { DEFAULT_GRID, combosOf, gridAdditions, sharedSettingDiffs, unionGrid, type SweepGrid } from "./sweep-grid.js";

export function readJson<T>(path: string): T | null {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T;
  } catch {
    return null;
  }
}

export interface SweepFile {
  tool: "syncbn sweep";
  version: 1;
  /** The folder's grid: the union of every command run on it (they share everything but the axes). */
  grid: SweepGrid;
  created: string;
  /** Every distinct command that ran on this folder, oldest first. */
  commands?: string[];
  /** The preset the last command took parts of its grid from (cli/study-preset.ts); absent when none. */
  preset?: PresetRecord;
}

/** What a sweep folder holds before this command, and the grid this command makes of it. */
export interface SweepPlan {
  grid: SweepGrid;
  old: Partial<SweepFile> | null;
  /** "" for a new folder or the same grid; else what this command adds. */
  additions: string;
}

/**
 * The grid to run in outDir: this command's, or (an existing sweep there) the
 * union of both when only the axes (norms, batches, seeds) differ; a folder whose
 * shared settings differ is refused, naming them. Reads only: nothing is written.
 */
export function planOutDir(outDir: string, g: SweepGrid): SweepPlan {
  const path = join(outDir, "sweep.json");
  if (!existsSync(path)) return { grid: g, old: null, additions: "" };
  let old: Partial<SweepFile>;
  try {
    old = JSON.parse(readFileSync(path, "utf8")) as Partial<SweepFile>;
  } catch (e) {
    throw new SyncbnError(ErrorCode.BadConfig, `${path} is not a readable sweep file (${(e as Error).message}); use another --out`);
  }
  if (!old.grid) throw new SyncbnError(ErrorCode.BadConfig, `${path} holds no grid (unrecognized file); use another --out, or delete ${outDir} to start over`);
  const was: SweepGrid = { ...DEFAULT_GRID, ...old.grid };
  const diffs = sharedSettingDiffs(was, g);
  if (diffs.length) {
    throw new SyncbnError(
      ErrorCode.BadConfig,
      `${outDir} holds a sweep with other shared settings (${diffs.join("; ")}); its runs cannot be compared with these: use another --out, or delete ${outDir} to start over`,
    );
  }
  return { grid: unionGrid(was, g), old, additions: gridAdditions(was, g) };
}

/** Writes DIR/sweep.json for the planned grid, with this command appended to its history. */
export function claimOutDir(outDir: string, plan: SweepPlan, command: string, print: (l: string) => void, preset: PresetRecord | null = null): void {
  mkdirSync(join(outDir, "runs"), { recursive: true });
  const commands = [...(plan.old?.commands ?? [])];
  if (commands[commands.length - 1] !== command) commands.push(command);
  const f: SweepFile = { tool: "syncbn sweep", version: 1, grid: plan.grid, created: plan.old?.created ?? new Date().toISOString(), commands, ...(preset ? { preset } : {}) };
  writeFileSync(join(outDir, "sweep.json"), `${JSON.stringify(f, null, 2)}\n`);
  if (!plan.old) return;
  const g = plan.grid;
  if (plan.additions) print(`extending the sweep in ${outDir} (started ${plan.old.created ?? "earlier"}) with ${plan.additions}; its runs done so far are reused`);
  else print(`resuming the sweep in ${outDir} (started ${plan.old.created ?? "earlier"})`);
  print(`  the folder's grid: norms ${g.norms.join(", ")} × batches ${g.batches.join(", ")} × seeds ${g.seeds.join(", ")}`);
}

/**
 * A finished run is reused only if its summary.json says it was trained with the
 * settings its folder name and the grid give it; else the folder is refused, naming the run and the setting.
 */
export function checkFinishedRuns(outDir: string, g: SweepGrid): void {
  for (const c of combosOf(g)) {
    const path = join(outDir, "runs", c.name, "summary.json");
    const s = readJson<Partial<RunSummary>>(path);
    if (!s) continue;
    const expected: [keyof RunSummary, unknown][] = [["norm", c.norm], ["perWorkerBatch", c.batch], ["workers", g.workers], ["model", g.model], ["data", g.data]];
    const bad = expected.filter(([k, v]) => s[k] !== undefined && s[k] !== v).map(([k, v]) => `${k} is ${JSON.stringify(s[k])}, expected ${JSON.stringify(v)}`);
    if (bad.length) throw new SyncbnError(ErrorCode.BadConfig, `${path} does not belong to this sweep (${bad.join("; ")}); use another --out, or delete that run's folder to redo it`);
  }
}

// The command line (token hidden) and version, shared with train's run record.
export { commandLine, syncbnVersion } from "./run-record.js";
