// The sweep report's per-layer view of BN spread: from each run's `{"type":"bn"}`
// lines of metrics.jsonl (coordinator/bn-spread.ts), per mode, the mean over
// sampled steps of |μ_k − μ|/σ and ln(σ_k²/σ²) per layer against the per-worker
// batch, as one small SVG and one table per mode. Not the live dashboard.

import { bnNote } from "../coordinator/bn-spread.js";
import { esc } from "./report-charts.js";
import type { SweepReportInfo, SweepRunResult } from "./report.js";

/** One BN layer of one run: means over its sampled steps (ranks averaged first). */
export interface BnLayerSpread {
  layer: number;
  channels: number;
  samples: number;
  meanDev: number | null;
  logVar: number | null;
  runningMeanGap: number | null;
}

/** Collects a run's bn lines (any order) into per-layer means. */
export class BnSpreadAccumulator {
  private readonly layers = new Map<number, { channels: number; n: number; dev: number[]; lv: number[]; gap: number[] }>();

  add(line: { type?: string; layer?: unknown; channels?: unknown; meanDevMean?: unknown; logVarMean?: unknown; runningMeanGap?: unknown }): void {
    if (line.type !== "bn" || typeof line.layer !== "number") return;
    let a = this.layers.get(line.layer);
    if (!a) this.layers.set(line.layer, (a = { channels: typeof line.channels === "number" ? line.channels : 0, n: 0, dev: [], lv: [], gap: [] }));
    a.n++;
    if (typeof line.meanDevMean === "number") a.dev.push(line.meanDevMean);
    if (typeof line.logVarMean === "number") a.lv.push(line.logVarMean);
    if (typeof line.runningMeanGap === "number") a.gap.push(line.runningMeanGap);
  }

  result(): BnLayerSpread[] {
    const mean = (v: number[]): number | null => (v.length ? v.reduce((x, y) => x + y, 0) / v.length : null);
    return [...this.layers.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([layer, a]) => ({ layer, channels: a.channels, samples: a.n, meanDev: mean(a.dev), logVar: mean(a.lv), runningMeanGap: mean(a.gap) }));
  }
}

const LAYER_COLORS = ["#1f63c6", "#d9481c", "#2e8b3a", "#7a3fc0", "#9a6a14", "#00838f", "#c2185b", "#455a64"];

/** Per layer, per batch: the mean over seeds of a field (null where no run has it). */
function grid(runs: readonly SweepRunResult[], batches: readonly number[], field: "meanDev" | "logVar"): Map<number, (number | null)[]> {
  const out = new Map<number, (number | null)[]>();
  batches.forEach((b, i) => {
    const perLayer = new Map<number, number[]>();
    for (const r of runs.filter((r) => r.perWorkerBatch === b)) {
      for (const l of r.bn ?? []) {
        const v = l[field];
        if (v !== null) (perLayer.get(l.layer) ?? perLayer.set(l.layer, []).get(l.layer)!).push(v);
      }
    }
    for (const [layer, vs] of perLayer) {
      if (!out.has(layer)) out.set(layer, new Array<number | null>(batches.length).fill(null));
      out.get(layer)![i] = vs.reduce((a, c) => a + c, 0) / vs.length;
    }
  });
  return new Map([...out.entries()].sort((a, b) => a[0] - b[0]));
}

/** |μ_k − μ|/σ against the per-worker batch (log₂ x), one line per layer, with a dashed c/√B through the smallest batch's mean. */
function spreadPlot(norm: string, dev: Map<number, (number | null)[]>, batches: readonly number[]): string {
  const W = 420, H = 210, L = 46, R = 12, T = 24, B = 34;
  const all = [...dev.values()].flat().filter((v): v is number => v !== null);
  if (all.length === 0) return "";
  const yMax = Math.max(...all) * 1.1;
  const lx = batches.map((b) => Math.log2(b));
  const x0 = Math.min(...lx), x1 = Math.max(...lx) === x0 ? x0 + 1 : Math.max(...lx);
  const X = (b: number): number => L + ((Math.log2(b) - x0) / (x1 - x0)) * (W - L - R);
  const Y = (v: number): number => T + (1 - v / yMax) * (H - T - B);
  let s = `<svg class="plot bn-plot" data-mode="${esc(norm)}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="BN spread vs per-worker batch, ${esc(norm)}">`;
  s += `<text class="title" x="${L}" y="14">--norm ${esc(norm)}: |μₖ − μ| / σ</text>`;
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    s += `<line class="grid" x1="${L}" x2="${W - R}" y1="${Y(v)}" y2="${Y(v)}"/><text class="tick" x="${L - 5}" y="${Y(v) + 4}" text-anchor="end">${v.toFixed(2)}</text>`;
  }
  for (const b of batches) s += `<text class="tick" x="${X(b)}" y="${H - B + 16}" text-anchor="middle">${b}</text>`;
  s += `<text class="label" x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">per-worker batch</text>`;
  // The 1/√B law through the mean of the layers at the smallest batch.
  const firstVals = [...dev.values()].map((v) => v[0]).filter((v): v is number => v !== null && v !== undefined);
  if (firstVals.length) {
    const c = (firstVals.reduce((a, v) => a + v, 0) / firstVals.length) * Math.sqrt(batches[0]!);
    s += `<path class="chance" fill="none" d="${batches.map((b, i) => `${i ? "L" : "M"}${X(b).toFixed(1)} ${Y(c / Math.sqrt(b)).toFixed(1)}`).join("")}"><title>c / √(batch)</title></path>`;
  }
  let li = 0;
  for (const [layer, vals] of dev) {
    const color = LAYER_COLORS[li++ % LAYER_COLORS.length]!;
    const d = vals.map((v, i) => (v === null ? "" : `${X(batches[i]!).toFixed(1)} ${Y(v).toFixed(1)}`)).filter(Boolean);
    if (d.length) s += `<path class="bn-layer-line" data-layer="${layer}" fill="none" stroke="${color}" stroke-width="2" d="M${d.join("L")}"/>`;
    vals.forEach((v, i) => v !== null && (s += `<circle cx="${X(batches[i]!).toFixed(1)}" cy="${Y(v).toFixed(1)}" r="3" fill="${color}"><title>layer ${layer}, batch ${batches[i]}: ${v.toFixed(3)}</title></circle>`));
    s += `<text class="legend" x="${W - R - 4}" y="${T + 14 * li}" text-anchor="end" fill="${color}" style="fill:${color}">layer ${layer}</text>`;
  }
  return `${s}</svg>`;
}

/** The report section: for every mode, its per-layer spread against the per-worker batch, or why there is none. */
export function bnSection(rows: readonly SweepRunResult[], info: SweepReportInfo): string {
  const parts: string[] = [];
  const without: string[] = [];
  for (const norm of info.norms) {
    const runs = rows.filter((r) => r.norm === norm);
    const dev = grid(runs, info.batches, "meanDev");
    if (dev.size === 0) {
      without.push(`<li><code>${esc(norm)}</code>: ${esc(bnNote(norm, info.workers) ?? "no bn lines in these runs' metrics.jsonl")}</li>`);
      continue;
    }
    const lv = grid(runs, info.batches, "logVar");
    const fmt = (v: number | null | undefined): string => (v === null || v === undefined ? "–" : v.toFixed(3));
    const head = `<tr><th>layer</th>${info.batches.map((b) => `<th>B = ${b}</th>`).join("")}</tr>`;
    const body = [...dev.entries()].map(([layer, v]) => `<tr data-layer="${layer}"><th>layer ${layer}</th>${v.map((x, i) => `<td>${fmt(x)} <span class="sub">${fmt(lv.get(layer)?.[i])}</span></td>`).join("")}</tr>`).join("");
    parts.push(`<div class="bn-mode" data-mode="${esc(norm)}">${spreadPlot(norm, dev, info.batches)}<table class="results bn-table"><thead>${head}</thead><tbody>${body}</tbody></table></div>`);
  }
  return `<section class="card" id="bn-spread">
<h2 style="margin-top:0">BN statistics: each worker's batch against the global batch</h2>
<div class="smalls">${parts.join("")}</div>
<p class="caption">Per BN layer, the mean over channels of |μₖ − μ| / σ (top number; the line) and of ln(σₖ² / σ²) (below it): how far a worker's own batch statistics are from those sync BN normalizes with (its group's in group:K), averaged over ranks and over the steps sampled every 10 steps, mean over seeds. The dashed curve is c/√B through the smallest batch: the spread of a mean over B samples shrinks as 1/√B. This is the noise local BN normalizes with.</p>
${without.length ? `<ul class="findings">${without.join("")}</ul>` : ""}
</section>`;
}
