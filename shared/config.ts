// The BN conventions a run is defined by, shared by coordinator and workers, and
// the parser of the `--norm` mode string. Every worker's hello carries these and
// the coordinator refuses any that differ. No I/O here.

import { ErrorCode, SyncbnError } from "./errors.js";

export type MomentumStyle = "torch" | "keras";

/** Normalization mode; see DESIGN.md §4. */
export type NormMode =
  | { kind: "sync" }
  | { kind: "local" }
  | { kind: "group"; groupSize: number }
  | { kind: "ghost"; ghostBatch: number }
  | { kind: "renorm" }
  | { kind: "groupnorm"; groups: number }
  /** Cross-iteration BN (worker/nn/cbn.ts): statistics of the last `window` steps, plain BN for the first `burnin`. */
  | { kind: "cbn"; window: number; burnin: number }
  | { kind: "none" };

/** Largest K of --norm cbn:K: each CBN layer keeps K − 1 copies of its producer's weights and their Jacobians. */
export const MAX_CBN_WINDOW = 32;
/** Largest burn-in B of --norm cbn:K:B, in steps. */
export const MAX_CBN_BURNIN = 1_000_000_000;

export interface BnConventions {
  eps: number;
  /** torch style: weight of the new batch (0.1); keras style: weight of the old value (0.99); null: cumulative. */
  momentum: number | null;
  momentumStyle: MomentumStyle;
  /** Running var from M2/(n-1) (PyTorch) or M2/n (Keras/Flax). */
  unbiasedRunningVar: boolean;
  /**
   * false: γ = 1 and β = 0 fixed, not parameters (PyTorch's BatchNorm(affine=False), an ONNX node fed by
   * constants). A layer's own, set by the model builder; never part of a run's conventions on the wire.
   */
  affine?: boolean;
}

/** What a worker and the coordinator must agree on before any round. */
export interface RunConventions extends BnConventions {
  /** The `--norm` string, e.g. "sync", "group:2". */
  norm: string;
  /**
   * Canonical JSON of the rest of the training settings every worker must share
   * (model, batch, lr, seed...), or "" when there is no training (conformance).
   */
  training: string;
}

export const TORCH_CONVENTIONS: BnConventions = {
  eps: 1e-5,
  momentum: 0.1,
  momentumStyle: "torch",
  unbiasedRunningVar: true,
};

export function parseNorm(text: string): NormMode {
  const [name, arg, ...rest] = text.trim().split(":");
  const intArg = (what: string): number => {
    const n = Number(arg);
    if (rest.length > 0 || arg === undefined || !Number.isInteger(n) || n < 1) {
      throw new SyncbnError(ErrorCode.BadConfig, `--norm ${text}: ${name} needs a positive integer ${what}, e.g. ${name}:2`);
    }
    return n;
  };
  switch (name) {
    case "sync":
    case "local":
    case "renorm":
    case "none":
      if (arg !== undefined) throw new SyncbnError(ErrorCode.BadConfig, `--norm ${text}: ${name} takes no argument`);
      return { kind: name };
    case "group":
      return { kind: "group", groupSize: intArg("group size K (workers per group)") };
    case "ghost":
      return { kind: "ghost", ghostBatch: intArg("ghost batch size G (samples per sub-batch)") };
    case "groupnorm":
      return { kind: "groupnorm", groups: intArg("number of channel groups G") };
    case "cbn":
      return parseCbn(text, arg, rest);
    default:
      throw new SyncbnError(
        ErrorCode.BadConfig,
        `unknown --norm "${text}"; use one of sync, local, group:K, ghost:G, renorm, groupnorm:G, cbn:K, none`,
      );
  }
}

/** cbn:K or cbn:K:B: K in 1..MAX_CBN_WINDOW steps of statistics, B ≥ 0 steps of plain BN first (default 0, the official code's). */
function parseCbn(text: string, windowText: string | undefined, rest: string[]): NormMode {
  const usage = `use cbn:K with K in 1..${MAX_CBN_WINDOW} (iterations averaged), optionally cbn:K:B with B in 0..${MAX_CBN_BURNIN} burn-in steps of plain BN`;
  const int = (t: string | undefined): number => (t !== undefined && /^\d+$/.test(t.trim()) ? Number(t) : NaN);
  const window = int(windowText);
  const burnin = rest.length === 0 ? 0 : int(rest[0]);
  if (rest.length > 1 || !(window >= 1 && window <= MAX_CBN_WINDOW) || !(burnin >= 0 && burnin <= MAX_CBN_BURNIN)) {
    throw new SyncbnError(ErrorCode.BadConfig, `--norm ${text}: ${usage}`);
  }
  return { kind: "cbn", window, burnin };
}

/**
 * Workers per statistics group for the BN rounds of a mode: W for sync, 1 for
 * local (no rounds at all), K for group:K.
 */
export function statsGroupSize(mode: NormMode, worldSize: number): number {
  switch (mode.kind) {
    case "sync":
      return worldSize;
    case "group":
      if (worldSize % mode.groupSize !== 0) {
        throw new SyncbnError(
          ErrorCode.BadConfig,
          `--norm group:${mode.groupSize} needs K to divide the number of workers (${worldSize}); try K in {${divisors(worldSize).join(", ")}}`,
        );
      }
      return mode.groupSize;
    default:
      return 1;
  }
}

export function divisors(n: number): number[] {
  const out: number[] = [];
  for (let d = 1; d <= n; d++) if (n % d === 0) out.push(d);
  return out;
}

export function validateConventions(c: BnConventions): void {
  if (!(c.eps > 0) || !Number.isFinite(c.eps)) {
    throw new SyncbnError(ErrorCode.BadConfig, `eps must be a positive number, got ${c.eps}`);
  }
  if (c.momentumStyle !== "torch" && c.momentumStyle !== "keras") {
    throw new SyncbnError(ErrorCode.BadConfig, `momentumStyle must be "torch" or "keras", got ${String(c.momentumStyle)}`);
  }
  if (c.momentum !== null && !(c.momentum >= 0 && c.momentum <= 1)) {
    throw new SyncbnError(ErrorCode.BadConfig, `momentum must be in [0, 1] or null (cumulative), got ${c.momentum}`);
  }
}

/** The BN-convention fields (eps, momentum, style, running var, norm) and the training settings (lr, batch, …) that differ. */
function splitConventionsDiff(ours: RunConventions, theirs: RunConventions): { bn: string[]; training: string[] } {
  const keys: (keyof RunConventions)[] = ["eps", "momentum", "momentumStyle", "unbiasedRunningVar", "norm"];
  const bn: string[] = [];
  const training: string[] = [];
  for (const k of keys) {
    if (!Object.is(ours[k], theirs[k])) bn.push(`${k}: run has ${String(ours[k])}, worker has ${String(theirs[k])}`);
  }
  if (ours.training !== theirs.training) {
    const a = parseSettings(ours.training);
    const b = parseSettings(theirs.training);
    const fields = [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
    for (const k of fields) training.push(`${k}: run has ${JSON.stringify(a[k])}, worker has ${JSON.stringify(b[k])}`);
    if (fields.length === 0) training.push("the settings' text differs");
  }
  return { bn, training };
}

/**
 * Why a worker's hello does not fit the run, or null: "BN conventions differ" only
 * when eps, momentum and the like do; a different --lr or --batch is a training
 * setting, and saying "BN conventions" there sent people looking in the wrong place.
 */
export function conventionsMismatch(ours: RunConventions, theirs: RunConventions): string | null {
  const d = splitConventionsDiff(ours, theirs);
  const what = d.bn.length && d.training.length ? "BN conventions and training settings differ" : d.bn.length ? "BN conventions differ" : d.training.length ? "training settings differ" : null;
  return what && `${what} from the run's: ${[...d.bn, ...d.training].join("; ")}`;
}

function parseSettings(text: string): Record<string, unknown> {
  if (text === "") return {};
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === "object" && v !== null ? (v as Record<string, unknown>) : {};
  } catch {
    return { training: text };
  }
}
