// The conformance case format of DESIGN.md §10: types, a
// validating loader, and the comparison with the tolerance docs/proofs.md states.
// Knows nothing about processes or sockets.

import { readFileSync } from "node:fs";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import type { RunConventions } from "../shared/config.js";

export interface CaseWorker {
  shape: number[];
  x: number[];
  dy: number[];
  expected: { y: number[]; dx: number[] };
}
export interface CaseStep {
  workers: CaseWorker[];
  expected: StepGlobals;
}
export interface StepGlobals {
  dgamma: number[];
  dbeta: number[];
  mean: number[];
  var: number[];
  runningMean: number[];
  runningVar: number[];
}
export interface ConformanceCase {
  name: string;
  channels: number;
  spatial: number[];
  eps: number;
  momentum: number | null;
  momentumStyle: "torch" | "keras";
  unbiasedRunningVar: boolean;
  gamma: number[];
  beta: number[];
  steps: CaseStep[];
  eval: { shape: number[]; x: number[]; expected: { y: number[] } };
}

/** What the project computed, in the shape of the case's expected values (the --dump format). */
export interface CaseDump {
  name: string;
  steps: ({ workers: { y: number[]; dx: number[] }[] } & StepGlobals)[];
  eval: { y: number[] };
}

export function loadCase(path: string): ConformanceCase {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new SyncbnError(ErrorCode.BadConfig, `${path}: not readable JSON (${(e as Error).message})`);
  }
  const c = raw as ConformanceCase;
  const bad = (what: string): never => {
    throw new SyncbnError(ErrorCode.BadConfig, `${path}: ${what}; see DESIGN.md §10 for the format`);
  };
  if (typeof c !== "object" || c === null) bad("not an object");
  if (typeof c.name !== "string") bad("name must be a string");
  if (!Number.isInteger(c.channels) || c.channels < 1) bad("channels must be a positive integer");
  if (!Array.isArray(c.spatial)) bad("spatial must be [] or [H, W]");
  if (!Array.isArray(c.steps) || c.steps.length === 0) bad("steps must be a non-empty array");
  const per = c.channels * c.spatial.reduce((a, b) => a * b, 1);
  c.steps.forEach((s, i) => {
    if (!Array.isArray(s.workers) || s.workers.length === 0) bad(`steps[${i}].workers must be a non-empty array`);
    if (s.workers.length !== c.steps[0]!.workers.length) bad(`steps[${i}] has ${s.workers.length} workers, steps[0] has ${c.steps[0]!.workers.length}`);
    s.workers.forEach((w, k) => {
      const n = w.shape?.[0];
      if (!Number.isInteger(n) || n! < 0) bad(`steps[${i}].workers[${k}].shape must start with N ≥ 0`);
      if (w.x.length !== n! * per || w.dy.length !== n! * per) bad(`steps[${i}].workers[${k}]: x/dy length differs from shape`);
    });
  });
  return c;
}

export function caseConventions(c: ConformanceCase): RunConventions {
  return { eps: c.eps, momentum: c.momentum, momentumStyle: c.momentumStyle, unbiasedRunningVar: c.unbiasedRunningVar, norm: "sync", training: "" };
}

export interface Mismatch {
  field: string;
  maxAbsErr: number;
  index: number;
}

const ATOL = 1e-4;
const RTOL = 1e-4;

/** Largest violation of |got − expected| ≤ 1e-4 + 1e-4·|expected|, or null if none. */
export function compareField(field: string, got: ArrayLike<number>, expected: readonly number[]): Mismatch | null {
  if (got.length !== expected.length) return { field: `${field} (length ${got.length}, expected ${expected.length})`, maxAbsErr: Infinity, index: -1 };
  let worst: Mismatch | null = null;
  let worstExcess = 0;
  for (let i = 0; i < expected.length; i++) {
    const e = expected[i]!;
    const err = Math.abs(got[i]! - e);
    const excess = err - (ATOL + RTOL * Math.abs(e));
    if (!(excess <= 0) && (worst === null || !(excess <= worstExcess))) {
      worst = { field, maxAbsErr: err, index: i };
      worstExcess = Number.isNaN(excess) ? Infinity : excess;
    }
  }
  return worst;
}

/** First mismatch over every checked field, or null when the case passes. */
export function compareCase(c: ConformanceCase, got: CaseDump): Mismatch | null {
  for (let i = 0; i < c.steps.length; i++) {
    const exp = c.steps[i]!;
    const g = got.steps[i];
    if (!g) return { field: `steps[${i}] (missing)`, maxAbsErr: Infinity, index: -1 };
    for (let k = 0; k < exp.workers.length; k++) {
      for (const f of ["y", "dx"] as const) {
        const m = compareField(`steps[${i}].workers[${k}].${f}`, g.workers[k]?.[f] ?? [], exp.workers[k]!.expected[f]);
        if (m) return m;
      }
    }
    for (const f of ["dgamma", "dbeta", "mean", "var", "runningMean", "runningVar"] as const) {
      const m = compareField(`steps[${i}].${f}`, g[f], exp.expected[f]);
      if (m) return m;
    }
  }
  return compareField("eval.y", got.eval.y, c.eval.expected.y);
}
