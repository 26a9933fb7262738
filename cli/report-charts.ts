// The SVG figures of the sweep's report.html: test accuracy vs per-worker batch,
// and small multiples of the training-loss curves; their colours and axis ticks.
// Pure functions from cells and runs to markup. Not the page, its tables and CSS,
// the CSV or the markdown (report.ts). It imports only report.ts's types, so the
// two text helpers the tables share with the figures (esc, cellText) live here.

import type { Cell, SweepReportInfo, SweepRunResult } from "./report.js";
import { ADEQUATE_SPREAD_POINTS, CONTROL_MODE, adequacyOf } from "./report-text.js";

/** Escapes text for HTML and SVG, in content and in double-quoted attributes. */
export function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** A cell as text: mean ± std over seeds, and how many seeds finished; shared by the tables and the hover text. */
export function cellText(c: Cell, seeds: number): string {
  if (c.mean === null) return c.failed.length ? "failed" : "–";
  let t = `${(100 * c.mean).toFixed(1)}%`;
  if (c.accuracies.length > 1) t += ` ± ${(100 * c.std!).toFixed(1)}`;
  const short = seeds - c.accuracies.length;
  if (short > 0) t += ` (${c.accuracies.length} of ${seeds} seeds)`;
  return t;
}

// Okabe & Ito's colour-blind-safe palette (Color Universal Design, 2008): eight
// colours told apart under the common colour-vision deficiencies. Its yellow is
// the one hard to see on white, so it comes last.
const OKABE_ITO = {
  orange: "#E69F00",
  skyBlue: "#56B4E9",
  bluishGreen: "#009E73",
  blue: "#0072B2",
  vermillion: "#D55E00",
  reddishPurple: "#CC79A7",
  black: "#000000",
  yellow: "#F0E442",
} as const;
export const PALETTE: readonly string[] = Object.values(OKABE_ITO);

const MODE_COLORS: Record<string, string> = {
  sync: OKABE_ITO.blue,
  local: OKABE_ITO.vermillion,
  group: OKABE_ITO.orange,
  ghost: OKABE_ITO.skyBlue,
  renorm: OKABE_ITO.reddishPurple,
  groupnorm: OKABE_ITO.bluishGreen,
  none: OKABE_ITO.black,
};

/**
 * A stable colour per norm string, from the Okabe–Ito palette: by kind, the
 * palette's unused colours for repeated kinds (group:2 and group:4); past eight
 * modes colours repeat.
 */
export function modeColors(norms: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  const used = new Set<string>();
  for (const n of norms) {
    let c: string | undefined = MODE_COLORS[n.split(":")[0]!];
    if (!c || used.has(c)) c = PALETTE.find((p) => !used.has(p)) ?? PALETTE[out.size % PALETTE.length]!;
    used.add(c);
    out.set(n, c);
  }
  return out;
}

/** The i-th per-worker batch's colour in the loss panels: Okabe–Ito in order, then again dashed (batchDash). */
export function batchColor(i: number): string {
  return PALETTE[i % PALETTE.length]!;
}

/** Past the palette's eight colours, lines are dashed so no two batches look alike. */
function batchDash(i: number): string {
  return i < PALETTE.length ? "" : ` stroke-dasharray="6 3"`;
}

const f1 = (v: number): string => (Math.round(v * 10) / 10).toString();

/** Round up to a "nice" axis maximum (1, 2, 2.5, 5 × 10^k). */
function niceCeil(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** About `count` ticks in [lo, hi] at a 1-2-5 step. */
function ticks(lo: number, hi: number, count: number): number[] {
  const raw = (hi - lo) / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * p).find((v) => v >= raw) ?? 10 * p;
  const out: number[] = [];
  for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + 1e-9; k++) out.push(Number((k * step).toPrecision(6)));
  return out;
}

/** Accuracy vs per-worker batch (log2 x), one path per mode with class "mode-line" and data-mode. */
export function accuracyPlot(cells: Cell[][], info: SweepReportInfo, colors: Map<string, string>): string {
  // Failed runs get crosses in a strip under the x tick labels, never inside the plot.
  const anyFailed = cells.some((row) => row.some((c) => c.mean === null && c.failed.length > 0));
  const W = 900, H = anyFailed ? 446 : 420;
  const m = { l: 62, r: 170, t: 20, b: anyFailed ? 80 : 54 };
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  const bs = info.batches;
  const lx = bs.map((b) => Math.log2(b));
  const xlo = Math.min(...lx), xhi = Math.max(...lx);
  const pad = 26; // keeps the first and last batch off the axes
  const x = (b: number): number => m.l + (xhi === xlo ? pw / 2 : pad + ((Math.log2(b) - xlo) / (xhi - xlo)) * (pw - 2 * pad));
  const all = cells.flat().flatMap((c) => (c.max === null ? [] : [c.max]));
  const ymax = Math.min(1, niceCeil(Math.max(0.2, ...all) * 1.05));
  // A paper figure's y range: from 5 points under the lowest seed (to a multiple of 10%), so a 1.5-point band is visible; 0 when runs are near chance.
  const lows = cells.flat().flatMap((c) => (c.min === null ? [] : [c.min]));
  const ymin = lows.length ? Math.max(0, Math.floor((Math.min(...lows) - 0.05) * 10) / 10) : 0;
  const ylo = ymin < 0.3 || ymin >= ymax ? 0 : ymin;
  const y = (a: number): number => m.t + ph - ((a - ylo) / (ymax - ylo)) * ph;
  const out: string[] = [];
  out.push(`<svg class="plot" id="accuracy-plot" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="test accuracy versus per-worker batch, one line per normalization mode">`);
  for (const t of ticks(ylo, ymax, 5)) {
    out.push(`<line class="grid" x1="${m.l}" x2="${m.l + pw}" y1="${f1(y(t))}" y2="${f1(y(t))}"/>`);
    out.push(`<text class="tick" x="${m.l - 8}" y="${f1(y(t) + 4)}" text-anchor="end">${Math.round(t * 100)}%</text>`);
  }
  for (const b of bs) {
    out.push(`<line class="grid" x1="${f1(x(b))}" x2="${f1(x(b))}" y1="${m.t}" y2="${m.t + ph}"/>`);
    out.push(`<text class="tick" x="${f1(x(b))}" y="${m.t + ph + 18}" text-anchor="middle">${b}</text>`);
  }
  out.push(`<line class="axis" x1="${m.l}" x2="${m.l + pw}" y1="${m.t + ph}" y2="${m.t + ph}"/><line class="axis" x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${m.t + ph}"/>`);
  if (0.1 < ymax && 0.1 > ylo) {
    out.push(`<line class="chance" x1="${m.l}" x2="${m.l + pw}" y1="${f1(y(0.1))}" y2="${f1(y(0.1))}"/>`);
    out.push(`<text class="note" x="${m.l + pw - 4}" y="${f1(y(0.1) - 5)}" text-anchor="end">chance (10 classes)</text>`);
  }
  out.push(`<text class="label" x="${m.l + pw / 2}" y="${H - 10}" text-anchor="middle">samples per worker per step (log₂ scale; global batch = ${info.workers} × this)</text>`);
  out.push(`<text class="label" transform="translate(16 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">test accuracy${ylo > 0 ? ` (axis from ${Math.round(ylo * 100)}%)` : ""}</text>`);
  // The adequacy band: ADEQUATE_SPREAD_POINTS under sync's best seed mean; every sync point inside it means the budget is adequate.
  const adequacy = adequacyOf(cells, info.norms);
  if (adequacy) {
    const top = adequacy.hi.mean!, bottom = top - ADEQUATE_SPREAD_POINTS / 100;
    const verdict = adequacy.adequate ? "adequate" : "INADEQUATE";
    const tip = esc(`${CONTROL_MODE} spread ${adequacy.spread.toFixed(1)} points across batches (limit ${ADEQUATE_SPREAD_POINTS}): ${verdict}`);
    out.push(`<rect class="adequacy-band${adequacy.adequate ? "" : " inadequate"}" x="${m.l}" width="${pw}" y="${f1(y(top))}" height="${f1(y(bottom) - y(top))}"><title>${tip}</title></rect>`);
    out.push(`<text class="note" x="${m.l + pw - 6}" y="${f1(y(bottom) + 12)}" text-anchor="end">${esc(`${CONTROL_MODE} adequacy band (${ADEQUATE_SPREAD_POINTS} points under its best): spread ${adequacy.spread.toFixed(1)}, ${verdict}`)}</text>`);
  }
  cells.forEach((row, i) => {
    const norm = info.norms[i]!;
    const color = colors.get(norm)!;
    // A failed cell breaks the line: "M" starts a new segment after it.
    let d = "";
    let pen = false;
    for (const c of row) {
      if (c.mean === null) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${f1(x(c.perWorkerBatch))} ${f1(y(c.mean))} `;
      pen = true;
    }
    out.push(`<path class="mode-line" data-mode="${esc(norm)}" d="${d.trim()}" stroke="${color}"/>`);
    for (const c of row) {
      const cx = f1(x(c.perWorkerBatch));
      if (c.mean === null) {
        if (c.failed.length) {
          const why = esc(`${norm}, per-worker batch ${c.perWorkerBatch}: failed — ${c.failed[0]!.failure}`);
          const fy = m.t + ph + 38;
          const fx = Number(cx) + 12 * (i - (info.norms.length - 1) / 2);
          out.push(`<g class="mode-failed" data-mode="${esc(norm)}"><title>${why}</title><path d="M${f1(fx - 5)} ${fy - 5}l10 10m0 -10l-10 10" stroke="${color}" stroke-width="2.6"/></g>`);
        }
        continue;
      }
      if (c.min !== null && c.max !== null && c.accuracies.length > 1) {
        // Error bar: min to max over the seeds, with caps.
        const [y0, y1] = [f1(y(c.min)), f1(y(c.max))];
        const cxn = Number(cx);
        out.push(
          `<path class="spread" data-mode="${esc(norm)}" d="M${cx} ${y0}V${y1}M${f1(cxn - 4)} ${y0}h8M${f1(cxn - 4)} ${y1}h8" stroke="${color}" fill="none"/>`,
        );
      }
      const tip = esc(`${norm}, ${c.perWorkerBatch}/worker (global ${c.globalBatch}): ${cellText(c, info.seeds.length)}`);
      out.push(`<circle class="mode-point" data-mode="${esc(norm)}" cx="${cx}" cy="${f1(y(c.mean))}" r="4" fill="${color}"><title>${tip}</title></circle>`);
    }
  });
  // Legend, right of the plot.
  info.norms.forEach((norm, i) => {
    const ly = m.t + 14 + i * 22;
    const lx0 = m.l + pw + 18;
    out.push(`<line x1="${lx0}" x2="${lx0 + 22}" y1="${ly}" y2="${ly}" stroke="${colors.get(norm)}" stroke-width="3"/><circle cx="${lx0 + 11}" cy="${ly}" r="4" fill="${colors.get(norm)}"/>`);
    out.push(`<text class="legend" x="${lx0 + 30}" y="${ly + 4}">${esc(norm)}</text>`);
  });
  const bars = info.seeds.length > 1 ? ["error bars: min–max", `over ${info.seeds.length} seeds`] : ["one seed:", "no error bars"];
  const by = m.t + 14 + (info.norms.length + (anyFailed ? 1 : 0)) * 22 + 4;
  out.push(`<text class="note" x="${m.l + pw + 18}" y="${by}">${bars[0]}<tspan x="${m.l + pw + 18}" dy="14">${bars[1]}</tspan></text>`);
  if (anyFailed) {
    out.push(`<text class="note" x="${m.l - 8}" y="${m.t + ph + 42}" text-anchor="end">failed</text>`);
    const ly = m.t + 14 + info.norms.length * 22;
    const lx0 = m.l + pw + 18;
    out.push(`<path d="M${lx0 + 7} ${ly - 4}l8 8m0 -8l-8 8" stroke="#555" stroke-width="2"/><text class="legend" x="${lx0 + 30}" y="${ly + 4}">run failed</text>`);
  }
  out.push(`</svg>`);
  return out.join("\n");
}

/** Moving average over a centred window, then at most `points` evenly spaced samples. */
export function smoothCurve(values: readonly number[], points = 120): { i: number; v: number }[] {
  const n = values.length;
  if (n === 0) return [];
  const half = Math.max(0, Math.round(n / 40));
  const prefix = new Float64Array(n + 1);
  for (let i = 0; i < n; i++) prefix[i + 1] = prefix[i]! + values[i]!;
  const stride = Math.max(1, Math.ceil(n / points));
  const out: { i: number; v: number }[] = [];
  for (let i = 0; i < n; i += stride) {
    const a = Math.max(0, i - half), b = Math.min(n, i + half + 1);
    out.push({ i, v: (prefix[b]! - prefix[a]!) / (b - a) });
  }
  if (out[out.length - 1]!.i !== n - 1) {
    const a = Math.max(0, n - 1 - half);
    out.push({ i: n - 1, v: (prefix[n]! - prefix[a]!) / (n - a) });
  }
  return out;
}

/** The seeds' loss curves of one cell, cut to a common length (runs of one cell have the same step count). */
function seedCurves(runs: readonly SweepRunResult[]): number[][] {
  const curves = runs.map((r) => r.trainLoss).filter((c) => c.length > 0);
  const n = curves.length ? Math.min(...curves.map((c) => c.length)) : 0;
  return curves.map((c) => c.slice(0, n));
}

/** Mean over seeds of each step's loss. */
function meanCurve(curves: readonly number[][]): number[] {
  if (curves.length === 0) return [];
  return Array.from({ length: curves[0]!.length }, (_, i) => curves.reduce((a, c) => a + c[i]!, 0) / curves.length);
}

interface LossPoint {
  samples: number;
  loss: number;
  /** Min and max over seeds of the smoothed per-seed curves (equal to loss with one seed). */
  lo: number;
  hi: number;
}

/**
 * One small plot per mode: smoothed training loss vs samples seen, one line per
 * per-worker batch (mean over seeds), and with more than one seed a band from
 * the smallest to the largest seed's smoothed curve.
 */
export function lossPlots(rows: readonly SweepRunResult[], info: SweepReportInfo): string {
  const W = 470, H = 260;
  const m = { l: 58, r: 12, t: 28, b: 38 };
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  const curves = info.norms.map((norm) =>
    info.batches.map((b) => {
      const seeds = seedCurves(rows.filter((r) => r.norm === norm && r.perWorkerBatch === b && r.failure === null));
      const g = b * info.workers;
      const perSeed = seeds.map((c) => smoothCurve(c));
      const pts: LossPoint[] = smoothCurve(meanCurve(seeds)).map((p, k) => {
        const vs = perSeed.map((c) => c[k]?.v ?? p.v);
        return { samples: (p.i + 1) * g, loss: p.v, lo: Math.min(...vs), hi: Math.max(...vs) };
      });
      return { b, pts, seeds: seeds.length };
    }),
  );
  const allPts = curves.flat().flatMap((c) => c.pts);
  if (allPts.length === 0) return `<p class="muted">No training-loss curves (no run finished).</p>`;
  const xmax = Math.max(...allPts.map((p) => p.samples));
  const finite = allPts.map((p) => p.loss).filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  // The y range covers the curves' 1st to 98th percentile (one diverging run does not
  // flatten the rest; values beyond are drawn at the edge), in steps of 0.2.
  const lo = finite[Math.floor(finite.length * 0.01)] ?? 0;
  const hi = finite[Math.min(finite.length - 1, Math.ceil(finite.length * 0.98))] ?? 1;
  const ymin = Math.max(0, Math.floor(lo * 5) / 5 - 0.2);
  const ymax = Math.max(ymin + 0.4, Math.ceil(hi * 5) / 5);
  const x = (s: number): number => m.l + (s / xmax) * pw;
  const y = (v: number): number => m.t + ph - ((Math.min(Math.max(v, ymin), ymax) - ymin) / (ymax - ymin)) * ph;
  const figs = info.norms.map((norm, i) => {
    const out: string[] = [];
    out.push(`<svg class="plot small" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" data-mode="${esc(norm)}" role="img" aria-label="training loss, ${esc(norm)}">`);
    out.push(`<text class="title" x="${m.l}" y="16">${esc(norm)}</text>`);
    for (const t of ticks(ymin, ymax, 4)) {
      out.push(`<line class="grid" x1="${m.l}" x2="${m.l + pw}" y1="${f1(y(t))}" y2="${f1(y(t))}"/><text class="tick" x="${m.l - 6}" y="${f1(y(t) + 4)}" text-anchor="end">${t.toFixed(1)}</text>`);
    }
    for (const t of ticks(0, xmax, 3)) {
      out.push(`<text class="tick" x="${f1(x(t))}" y="${m.t + ph + 15}" text-anchor="middle">${t >= 1000 ? `${t / 1000}k` : t}</text>`);
    }
    out.push(`<line class="axis" x1="${m.l}" x2="${m.l + pw}" y1="${m.t + ph}" y2="${m.t + ph}"/><line class="axis" x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${m.t + ph}"/>`);
    out.push(`<text class="label" x="${m.l + pw / 2}" y="${H - 4}" text-anchor="middle">training samples seen</text>`);
    out.push(`<text class="label" transform="translate(14 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">training loss (cross-entropy)</text>`);
    // Bands first, so every line stays on top of every band.
    curves[i]!.forEach((c, j) => {
      if (c.seeds < 2) return;
      const upper = c.pts.map((p, k) => `${k ? "L" : "M"}${f1(x(p.samples))} ${f1(y(p.hi))}`).join("");
      const lower = [...c.pts].reverse().map((p) => `L${f1(x(p.samples))} ${f1(y(p.lo))}`).join("");
      out.push(`<path class="loss-band" data-mode="${esc(norm)}" data-batch="${c.b}" d="${upper}${lower}Z" fill="${batchColor(j)}"/>`);
    });
    curves[i]!.forEach((c, j) => {
      if (c.pts.length === 0) return;
      const d = c.pts.map((p, k) => `${k ? "L" : "M"}${f1(x(p.samples))} ${f1(y(p.loss))}`).join("");
      out.push(`<path class="loss-line" data-mode="${esc(norm)}" data-batch="${c.b}" d="${d}" stroke="${batchColor(j)}"${batchDash(j)}/>`);
    });
    const failed = curves[i]!.filter((c) => c.pts.length === 0).map((c) => c.b);
    if (failed.length) out.push(`<text class="note" x="${m.l + pw}" y="16" text-anchor="end">no curve: batch ${failed.join(", ")}</text>`);
    out.push(`</svg>`);
    return out.join("");
  });
  const legend = info.batches
    .map((b, j) => `<span class="key"><span class="swatch" style="background:${batchColor(j)}"></span>${b}/worker</span>`)
    .join("");
  return `<div class="legend-row">per-worker batch: ${legend}</div><div class="smalls">${figs.join("\n")}</div>`;
}
