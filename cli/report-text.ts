// The sweep report's words: the budget-adequacy check (sync BN's spread across
// per-worker batches) and the generated paragraph of what the numbers say, both
// computed from the cells and runs only (nothing here is written by hand about a
// particular result). Plain text, shared by results.md, report.html and stdout;
// not the figures (report-charts.ts) nor the tables (report.ts).

import type { Cell, SweepReportInfo, SweepRunResult } from "./report.js";

/** Sync BN's seed-mean accuracy may differ by at most this many points across per-worker batches for the budget to count as adequate. */
export const ADEQUATE_SPREAD_POINTS = 1.5;

/** The control of a study: the mode whose statistics do not depend on the per-worker batch. */
export const CONTROL_MODE = "sync";

export interface Adequacy {
  /** max − min of the control's seed-mean accuracy over the batches that have one, in points (0..100). */
  spread: number;
  lo: Cell;
  hi: Cell;
  /** Batches with a result (at least 2). */
  batches: number;
  adequate: boolean;
}

const pts = (a: number): string => (100 * a).toFixed(1);

/** The adequacy check of a study, or null when it has no sync mode with results at two or more batches. */
export function adequacyOf(cells: readonly Cell[][], norms: readonly string[]): Adequacy | null {
  const row = cells[norms.indexOf(CONTROL_MODE)];
  const done = (row ?? []).filter((c) => c.mean !== null);
  if (done.length < 2) return null;
  const lo = done.reduce((a, c) => (c.mean! < a.mean! ? c : a));
  const hi = done.reduce((a, c) => (c.mean! > a.mean! ? c : a));
  const spread = 100 * (hi.mean! - lo.mean!);
  // Rounded as printed: a spread shown as "1.5" is not called more than 1.5.
  return { spread, lo, hi, batches: done.length, adequate: Number(spread.toFixed(1)) <= ADEQUATE_SPREAD_POINTS };
}

/** One sentence: the spread, where it comes from, and the verdict (INADEQUATE in capitals when it fails). */
export function adequacyText(a: Adequacy | null): string {
  if (a === null) return `Budget adequacy: not checked (it needs ${CONTROL_MODE} results at two or more per-worker batches).`;
  const where = `${pts(a.lo.mean!)}% at ${a.lo.perWorkerBatch} per worker to ${pts(a.hi.mean!)}% at ${a.hi.perWorkerBatch}`;
  const spread = `${CONTROL_MODE} BN's seed-mean accuracy spans ${a.spread.toFixed(1)} points across ${a.batches} per-worker batches (${where})`;
  if (a.adequate) return `Budget adequacy: ${spread}, within ${ADEQUATE_SPREAD_POINTS}: adequate, so the other modes' differences across batches are not the budget's.`;
  return `Budget adequacy: INADEQUATE: ${spread}, more than ${ADEQUATE_SPREAD_POINTS}: the budget, not BN, decides part of the differences; give each run more samples (--epochs, --train-size).`;
}

/** Mean over a mode's runs at one batch of the per-layer mean |μₖ − μ|/σ, or null when none recorded it. */
function bnDeviation(rows: readonly SweepRunResult[], norm: string, batch: number): { value: number; layers: number } | null {
  const perRun = rows
    .filter((r) => r.norm === norm && r.perWorkerBatch === batch && r.bn && r.bn.length)
    .map((r) => r.bn!.map((l) => l.meanDev).filter((v): v is number => v !== null))
    .filter((v) => v.length);
  if (perRun.length === 0) return null;
  const runMeans = perRun.map((v) => v.reduce((a, x) => a + x, 0) / v.length);
  return { value: runMeans.reduce((a, x) => a + x, 0) / runMeans.length, layers: Math.max(...perRun.map((v) => v.length)) };
}

/**
 * The paragraph of what the numbers say: at the smallest per-worker batch, how many
 * points each mode loses against sync; how flat each GroupNorm mode is; from which
 * batch on each other mode is within the adequacy margin of sync; the spread of the
 * per-worker BN statistics where the runs recorded it. The adequacy verdict is
 * adequacyText's, printed beside it.
 */
export function studyParagraph(cells: readonly Cell[][], info: SweepReportInfo, rows: readonly SweepRunResult[]): string {
  const out: string[] = [];
  const seeds = info.seeds.length;
  const control = cells[info.norms.indexOf(CONTROL_MODE)];
  const b0 = Math.min(...info.batches);
  const i0 = info.batches.indexOf(b0);
  const ref = control?.[i0];
  if (ref && ref.mean !== null) {
    const n = ref.accuracies.length;
    const others = info.norms
      .map((norm, i) => ({ norm, cell: cells[i]![i0]! }))
      .filter((o) => o.norm !== CONTROL_MODE);
    const losses = others.filter((o) => o.cell.mean !== null).map((o) => ({ ...o, loss: 100 * (ref.mean! - o.cell.mean!) })).sort((a, b) => b.loss - a.loss);
    const parts = losses.map((o, k) => `${o.norm} ${o.loss >= 0 ? "loses" : "gains"} ${Math.abs(o.loss).toFixed(1)}${k === 0 ? " points" : ""} (${pts(o.cell.mean!)}%)`);
    const failed = others.filter((o) => o.cell.mean === null && o.cell.failed.length).map((o) => o.norm);
    if (failed.length) parts.push(`${failed.join(" and ")} ${failed.length > 1 ? "fail" : "fails"} at this batch`);
    out.push(
      `At the smallest per-worker batch, ${b0} (global ${b0 * info.workers}), ${CONTROL_MODE} BN reaches ${pts(ref.mean!)}% (mean of ${n} seed${n > 1 ? "s" : ""}${n > 1 ? `, std ${pts(ref.std!)}` : ""})` +
        (parts.length ? `; against it ${parts.join(", ")}.` : "."),
    );
  } else {
    out.push(`${CONTROL_MODE} BN has no result at the smallest per-worker batch (${b0}), so the losses of the other modes cannot be measured against it.`);
  }
  // GroupNorm never looks at the batch: how flat it is, in the same terms as the adequacy check.
  info.norms.forEach((norm, i) => {
    if (!norm.startsWith("groupnorm:")) return;
    const done = cells[i]!.filter((c) => c.mean !== null);
    if (done.length < 2) return;
    const lo = Math.min(...done.map((c) => c.mean!)), hi = Math.max(...done.map((c) => c.mean!));
    const spread = 100 * (hi - lo);
    const flat = Number(spread.toFixed(1)) <= ADEQUATE_SPREAD_POINTS;
    out.push(`${norm} spans ${spread.toFixed(1)} points across the batches (${pts(lo)}% to ${pts(hi)}%): ${flat ? "flat" : "not flat"} by the ${ADEQUATE_SPREAD_POINTS}-point margin.`);
  });
  // Where each batch-dependent mode comes within the margin of sync and stays there.
  if (control) {
    const closes: string[] = [];
    info.norms.forEach((norm, i) => {
      if (norm === CONTROL_MODE || norm.startsWith("groupnorm:")) return;
      const gaps = cells[i]!.map((c, j) => (c.mean === null || control[j]!.mean === null ? null : 100 * (control[j]!.mean! - c.mean)));
      let from = -1;
      for (let j = gaps.length - 1; j >= 0; j--) {
        const g = gaps[j];
        if (g === null || g === undefined || g > ADEQUATE_SPREAD_POINTS) break;
        from = j;
      }
      if (from === 0) closes.push(`${norm} is within ${ADEQUATE_SPREAD_POINTS} points of ${CONTROL_MODE} at every batch`);
      else if (from === gaps.length - 1) closes.push(`${norm} only at ${info.batches[from]} per worker`);
      else if (from > 0) closes.push(`${norm} from ${info.batches[from]} per worker on`);
      else if (gaps.some((g) => g !== null) && gaps.every((g) => g === null || g > ADEQUATE_SPREAD_POINTS)) closes.push(`${norm} at no batch`);
    });
    if (closes.length) out.push(`Within ${ADEQUATE_SPREAD_POINTS} points of ${CONTROL_MODE}: ${closes.join("; ")}.`);
  }
  // The per-worker statistics: what local BN normalizes with, measured in the runs that send statistics.
  const bnMode = [CONTROL_MODE, ...info.norms].find((n) => info.norms.includes(n) && info.batches.some((b) => bnDeviation(rows, n, b) !== null));
  if (bnMode) {
    const at = info.batches.map((b) => ({ b, d: bnDeviation(rows, bnMode, b) })).filter((x) => x.d !== null);
    const first = at[0]!, last = at[at.length - 1]!;
    out.push(
      `The per-worker BN statistics (recorded in the ${bnMode} runs, mean over ${first.d!.layers} BN layer${first.d!.layers > 1 ? "s" : ""} and the sampled steps): a worker's batch mean lies ${first.d!.value.toFixed(2)} σ from the global batch's at ${first.b} per worker` +
        (last !== first ? ` and ${last.d!.value.toFixed(2)} σ at ${last.b}` : "") +
        `; that is the noise each worker's own statistics carry in local BN, and what ${CONTROL_MODE} BN removes.`,
    );
  } else {
    out.push("No run recorded the per-worker BN statistics (bn lines of metrics.jsonl), so their spread is not reported.");
  }
  if (seeds > 1) out.push(`Means are over seeds ${info.seeds.join(", ")}.`);
  return out.join(" ");
}
