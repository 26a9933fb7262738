// --ranks-per-proc: how the W ranks of a run are packed into worker processes.
// Blocks are consecutive ranks, R per process, the last one possibly smaller; a
// block must not split a statistics group partly (group:K). Checks and planning
// only; the worker side of a block is worker/block-sync.ts and nn/segmented.ts.

import { availableParallelism } from "node:os";
import { InvalidArgumentError } from "commander";
import { parseNorm, statsGroupSize } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { blockLayout } from "../worker/block-sync.js";
import { plural } from "./progress-line.js";

export type RanksPerProc = number | "auto";

/** Up to this many ranks the default is one rank per process (npm start unchanged); above it, auto. */
export const ONE_RANK_PER_PROC_UP_TO = 8;

export const RANKS_PER_PROC_HELP = `ranks per worker process (or thread): R, or auto = enough to keep processes ≤ cores (default: auto for threads; for processes 1 up to ${ONE_RANK_PER_PROC_UP_TO} ranks, auto above)`;

/** commander argParser of --ranks-per-proc. */
export function parseRanksPerProc(v: string): RanksPerProc {
  if (v === "auto") return "auto";
  if (!/^\d+$/.test(v) || Number(v) < 1) throw new InvalidArgumentError(`--ranks-per-proc must be a positive integer or auto, got "${v}"`);
  return Number(v);
}

/** A block [first, first+size) of consecutive ranks one process hosts. */
export interface RankBlock {
  first: number;
  size: number;
}

export function rankBlocks(world: number, perProc: number): RankBlock[] {
  const out: RankBlock[] = [];
  for (let first = 0; first < world; first += perProc) out.push({ first, size: Math.min(perProc, world - first) });
  return out;
}

/** The first block that splits a statistics group partly, or null. */
function splitBlock(world: number, perProc: number, groupSize: number): RankBlock | null {
  if (groupSize <= 1) return null;
  return rankBlocks(world, perProc).find((b) => blockLayout(b.first, b.size, groupSize) === "splits") ?? null;
}

/**
 * Ranks per process for a run of `world` ranks and --norm `norm`: the flag's R
 * (refused, one line, when it is above W or splits a group), or auto: the
 * smallest R ≥ ⌈W / cores⌉ whose blocks split no group (R = W always fits).
 */
export function resolveRanksPerProc(spec: RanksPerProc | undefined, world: number, norm: string, cores = availableParallelism()): number {
  const groupSize = statsGroupSize(parseNorm(norm), world);
  if (spec === undefined) spec = world <= ONE_RANK_PER_PROC_UP_TO ? 1 : "auto";
  if (spec === "auto") {
    for (let r = Math.max(1, Math.ceil(world / Math.max(1, cores))); r <= world; r++) if (!splitBlock(world, r, groupSize)) return r;
    return world;
  }
  if (spec > world) throw new SyncbnError(ErrorCode.BadConfig, `--ranks-per-proc ${spec} is above the number of ranks (${world}); give 1..${world} or auto`);
  const bad = splitBlock(world, spec, groupSize);
  if (bad) {
    throw new SyncbnError(
      ErrorCode.BadConfig,
      `--ranks-per-proc ${spec} puts ranks ${bad.first}..${bad.first + bad.size - 1} in one process, which splits a --norm ${norm} group of ${groupSize} ranks; give a divisor or a multiple of ${groupSize}, or auto`,
    );
  }
  return spec;
}

/** `syncbn worker --rank FIRST --ranks-per-proc R`: the block must lie in the world and split no group. */
export function checkWorkerBlock(first: number, size: number, world: number, norm: string): void {
  if (first + size > world) {
    throw new SyncbnError(ErrorCode.BadConfig, `--rank ${first} with --ranks-per-proc ${size} names ranks up to ${first + size - 1}, outside 0..${world - 1} for --workers ${world}`);
  }
  const groupSize = statsGroupSize(parseNorm(norm), world);
  if (groupSize > 1 && blockLayout(first, size, groupSize) === "splits") {
    throw new SyncbnError(ErrorCode.BadConfig, `ranks ${first}..${first + size - 1} of one process split a --norm ${norm} group of ${groupSize} ranks; a block must lie inside one group or hold whole groups`);
  }
}

/** For the start line: "16 ranks on 2 processes (8 ranks per process)", or on threads with --transport thread. */
export function describeBlocks(world: number, perProc: number, unit: "process" | "thread" = "process"): string {
  const procs = Math.ceil(world / perProc);
  if (perProc === 1) return plural(world, "worker");
  const units = unit === "process" ? plural(procs, "process", "processes") : plural(procs, "thread");
  return `${world} ranks on ${units} (${perProc} ranks per ${unit}${world % perProc ? `, the last ${world % perProc}` : ""})`;
}
