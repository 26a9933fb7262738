// What a run records about itself besides its numbers: every setting, the exact
// command line (the token never), the syncbn and Node versions — for summary.json
// and the first metrics.jsonl line, as sweep.json has them — and the folder rules
// every command shares: the default `runs/<time>` and the closing `outputs:` line.
// Building records and names only; the files are written by the monitor and workers.

import { existsSync, readFileSync } from "node:fs";
import { isAbsolute, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import type { TrainSettings } from "../worker/settings.js";

/** The settings, command and versions of a run (RunSummary.run, and the metrics.jsonl start line's `run`). */
export interface RunRecord {
  /** Every training setting (TrainSettings) plus how the run was laid out; null where this process cannot know (a hand-started coordinator does not see its workers' threads or kernels). */
  /** Plain JSON values: numbers, strings, flags, and the recipe's milestone and warm-up objects. */
  settings: Record<string, unknown>;
  /** The command as typed (`syncbn train …`), arguments quoted where a shell would need it, the token's value replaced by `***`. */
  command: string;
  versions: { syncbn: string; node: string };
}

/** How the run was laid out: not training settings (they never change a result) but part of what ran. */
export interface RunLayout {
  workers: number;
  ranksPerProcess: number | null;
  threads: number | null;
  kernels: string | null;
  transport?: string;
  wire?: string | null;
  /** The layout and why it was chosen (cli/layout.ts), e.g. "2 threads × 2 ranks (auto: …)". */
  layout?: string;
}

export function runRecord(s: TrainSettings | RunRecord["settings"], layout: RunLayout, argv: readonly string[] = process.argv): RunRecord {
  const settings: RunRecord["settings"] = {};
  for (const [k, v] of Object.entries({ ...s, ...layout })) if (v !== undefined) settings[k] = v;
  return { settings, command: commandLine(argv), versions: { syncbn: syncbnVersion(), node: process.version } };
}

/** Flags whose value is a secret: recorded as `***`. */
const SECRET_FLAGS = ["--token"];

/** The command line as typed (arguments quoted where the shell would need it), with the token's value hidden. */
export function commandLine(argv: readonly string[]): string {
  const quote = (a: string): string => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`);
  const args = argv.slice(2).map((a, i, all) => {
    if (i > 0 && SECRET_FLAGS.includes(all[i - 1]!)) return "***";
    const eq = SECRET_FLAGS.find((f) => a.startsWith(`${f}=`));
    return eq ? `${eq}=***` : quote(a);
  });
  return ["syncbn", ...args].join(" ");
}

/** This syncbn's version, from its package.json ("unknown" if that cannot be read). */
export function syncbnVersion(): string {
  // dist/cli/*.js sits two levels below the package root, cli/*.ts (run from source, as the tests do) one.
  for (const up of ["../../package.json", "../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(fileURLToPath(new URL(up, import.meta.url)), "utf8")) as { name?: unknown; version?: unknown };
      if (pkg.name === "syncbn") return typeof pkg.version === "string" ? pkg.version : "unknown";
    } catch {
      // not there: try the next level
    }
  }
  return "unknown";
}

/** `runs/<UTC time>`: the default --out of train, coordinator and worker (seconds, so two runs a minute apart do not share it). */
export function defaultOutDir(now = new Date()): string {
  return `runs/${now.toISOString().slice(0, 19).replace(/:/g, "-")}`;
}

/** The files a run may leave in its folder, in the order the outputs line names them. */
const OUTPUT_FILES = ["weights.safetensors", "checkpoint.bin", "metrics.jsonl", "summary.json"];

/**
 * The last line of every command: where its outputs went, naming the files that
 * are there, e.g. `outputs: runs/2026-12-06T18-30-00 (weights.safetensors,
 * checkpoint.bin, metrics.jsonl, summary.json)`; null dir: this process wrote none.
 */
export function outputsLine(dir: string | null, none = "none"): string {
  if (dir === null) return `outputs: ${none}`;
  const present = OUTPUT_FILES.filter((f) => existsSync(join(dir, f)));
  // A folder under the working directory reads as typed (runs/…), even when the coordinator named it absolutely.
  const rel = relative(process.cwd(), dir);
  const shown = isAbsolute(dir) && rel !== "" && !rel.startsWith("..") && !isAbsolute(rel) ? rel : dir;
  return `outputs: ${shown} (${present.length ? present.join(", ") : "no files yet"})`;
}
