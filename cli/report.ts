// What `syncbn sweep` writes from its results: results.csv, the markdown table
// and the self-contained report.html (inline CSS and SVG, no scripts, no fonts,
// no network). Pure functions from results to strings: no I/O, no clock, so the
// report can be tested without running anything or opening a browser.

export interface SweepRunResult {
  norm: string;
  perWorkerBatch: number;
  globalBatch: number;
  seed: number;
  /** 0..1; null when the run failed. */
  testAccuracy: number | null;
  testLoss: number | null;
  /** Wall time of the run (spawn, data, training, eval). */
  trainSeconds: number | null;
  /** Total time an average worker waited in sync rounds. */
  syncWaitSeconds: number | null;
  steps: number | null;
  /** Why the run failed (one line), or null. */
  failure: string | null;
  /** Training loss (mean over the global batch) per step, in step order; empty when unknown. */
  trainLoss: number[];
}

export interface SweepReportInfo {
  workers: number;
  model: string;
  data: string;
  norms: string[];
  batches: number[];
  seeds: number[];
  /** e.g. "1 epoch of 4096 samples" or "200 steps per run". */
  budget: string;
  /** The learning-rate rule in words, with its numbers. */
  lrRule: string;
  /** Everything else worth stating: name → value. */
  settings: [string, string][];
  date: string;
  machine: string;
  node: string;
  /** Runs still missing (interrupted sweep); 0 when complete. */
  missingRuns: number;
}

export const CSV_HEADER = "norm,perWorkerBatch,globalBatch,seed,testAccuracy,testLoss,trainSeconds,syncWaitSeconds";

const fixed = (v: number | null, digits: number): string => (v === null || !Number.isFinite(v) ? "" : v.toFixed(digits));

function csvField(s: string): string {
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** One row per run, in the order given; failed runs have empty metric fields. */
export function renderCsv(rows: readonly SweepRunResult[]): string {
  const lines = [CSV_HEADER];
  for (const r of rows) {
    lines.push(
      [csvField(r.norm), r.perWorkerBatch, r.globalBatch, r.seed, fixed(r.testAccuracy, 4), fixed(r.testLoss, 4), fixed(r.trainSeconds, 2), fixed(r.syncWaitSeconds, 2)].join(","),
    );
  }
  return `${lines.join("\n")}\n`;
}

/** One (norm, per-worker batch) cell: accuracy over the seeds that finished. */
export interface Cell {
  norm: string;
  perWorkerBatch: number;
  globalBatch: number;
  /** Test accuracies of the finished seeds. */
  accuracies: number[];
  mean: number | null;
  /** Sample standard deviation over seeds (0 with one seed), null without any. */
  std: number | null;
  min: number | null;
  max: number | null;
  failed: SweepRunResult[];
  /** Seeds with no result at all (not run yet). */
  missing: number;
}

export function cellsOf(rows: readonly SweepRunResult[], norms: readonly string[], batches: readonly number[], seeds: readonly number[]): Cell[][] {
  return norms.map((norm) =>
    batches.map((b) => {
      const runs = rows.filter((r) => r.norm === norm && r.perWorkerBatch === b);
      const accuracies = runs.filter((r) => r.testAccuracy !== null).map((r) => r.testAccuracy!);
      const n = accuracies.length;
      const mean = n ? accuracies.reduce((a, v) => a + v, 0) / n : null;
      const std = n && mean !== null ? (n > 1 ? Math.sqrt(accuracies.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1)) : 0) : null;
      return {
        norm,
        perWorkerBatch: b,
        globalBatch: runs[0]?.globalBatch ?? 0,
        accuracies,
        mean,
        std,
        min: n ? Math.min(...accuracies) : null,
        max: n ? Math.max(...accuracies) : null,
        failed: runs.filter((r) => r.failure !== null),
        missing: seeds.length - runs.length,
      };
    }),
  );
}

function cellText(c: Cell, seeds: number): string {
  if (c.mean === null) return c.failed.length ? "failed" : "–";
  let t = `${(100 * c.mean).toFixed(1)}%`;
  if (c.accuracies.length > 1) t += ` ± ${(100 * c.std!).toFixed(1)}`;
  const short = seeds - c.accuracies.length;
  if (short > 0) t += ` (${c.accuracies.length} of ${seeds} seeds)`;
  return t;
}

/** Markdown: rows = norm mode, columns = per-worker batch, cells = mean test accuracy ± std over seeds. */
export function renderMarkdown(rows: readonly SweepRunResult[], info: SweepReportInfo): string {
  const cells = cellsOf(rows, info.norms, info.batches, info.seeds);
  const head = `| norm \\ per-worker batch | ${info.batches.map((b) => `${b} (global ${b * info.workers})`).join(" | ")} |`;
  const rule = `|---|${info.batches.map(() => "---:").join("|")}|`;
  const body = cells.map((row, i) => `| \`${info.norms[i]}\` | ${row.map((c) => cellText(c, info.seeds.length)).join(" | ")} |`);
  const failures = failureLines(rows);
  const spread = info.seeds.length > 1 ? `, ± sample standard deviation over seeds ${info.seeds.join(", ")}` : ` (seed ${info.seeds.join(", ")})`;
  return [
    `Test accuracy, ${info.model} on ${info.data}, ${info.workers} workers; mean${spread}.`,
    `Learning rate: ${info.lrRule}. Budget: ${info.budget}.`,
    "",
    head,
    rule,
    ...body,
    ...(failures.length ? ["", "Failed runs:", ...failures.map((f) => `- ${f}`)] : []),
    ...(info.missingRuns > 0 ? ["", `Incomplete: ${info.missingRuns} run(s) not done yet; re-run the same command to finish.`] : []),
    "",
  ].join("\n");
}

function failureLines(rows: readonly SweepRunResult[]): string[] {
  return rows.filter((r) => r.failure !== null).map((r) => `${r.norm}, per-worker batch ${r.perWorkerBatch}, seed ${r.seed}: ${r.failure}`);
}

// ---------------------------------------------------------------- HTML + SVG

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

const MODE_COLORS: Record<string, string> = {
  sync: "#1f63c6",
  local: "#d9481c",
  group: "#0e8f8a",
  ghost: "#9a6a14",
  renorm: "#7a3fc0",
  groupnorm: "#2e8b3a",
  none: "#6b6b6b",
};
const SPARE_COLORS = ["#c2185b", "#455a64", "#8d6e63", "#00838f", "#5d4037"];

/** A stable colour per norm string: by kind, spares for repeated kinds (group:2 and group:4). */
export function modeColors(norms: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  const used = new Set<string>();
  let spare = 0;
  for (const n of norms) {
    const kind = n.split(":")[0]!;
    let c = MODE_COLORS[kind];
    if (!c || used.has(c)) c = SPARE_COLORS[spare++ % SPARE_COLORS.length]!;
    used.add(c);
    out.set(n, c);
  }
  return out;
}

// Sequential palette (plasma-like, without its pale yellow end): orange for the
// smallest per-worker batch through magenta to dark blue for the largest.
const BATCH_STOPS = [
  [240, 140, 40],
  [220, 80, 80],
  [170, 45, 140],
  [100, 40, 170],
  [25, 45, 120],
];

function batchColor(i: number, n: number): string {
  const t = n <= 1 ? 1 : i / (n - 1);
  const x = t * (BATCH_STOPS.length - 1);
  const k = Math.min(BATCH_STOPS.length - 2, Math.floor(x));
  const a = BATCH_STOPS[k]!, b = BATCH_STOPS[k + 1]!, u = x - k;
  const c = a.map((v, j) => Math.round(v + (b[j]! - v) * u));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

/** A failure reason without code and context, cut at its first clause: for captions. */
export function shortReason(reason: string): string {
  return reason.replace(/^SYNCBN_ERR_\w+: (\[[^\]]*\] )?/, "").split(/[;(]/)[0]!.trim();
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
  const y = (a: number): number => m.t + ph - (a / ymax) * ph;
  const out: string[] = [];
  out.push(`<svg class="plot" id="accuracy-plot" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="test accuracy versus per-worker batch, one line per normalization mode">`);
  for (const t of ticks(0, ymax, 5)) {
    out.push(`<line class="grid" x1="${m.l}" x2="${m.l + pw}" y1="${f1(y(t))}" y2="${f1(y(t))}"/>`);
    out.push(`<text class="tick" x="${m.l - 8}" y="${f1(y(t) + 4)}" text-anchor="end">${Math.round(t * 100)}%</text>`);
  }
  for (const b of bs) {
    out.push(`<line class="grid" x1="${f1(x(b))}" x2="${f1(x(b))}" y1="${m.t}" y2="${m.t + ph}"/>`);
    out.push(`<text class="tick" x="${f1(x(b))}" y="${m.t + ph + 18}" text-anchor="middle">${b}</text>`);
  }
  out.push(`<line class="axis" x1="${m.l}" x2="${m.l + pw}" y1="${m.t + ph}" y2="${m.t + ph}"/><line class="axis" x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${m.t + ph}"/>`);
  if (0.1 < ymax) {
    out.push(`<line class="chance" x1="${m.l}" x2="${m.l + pw}" y1="${f1(y(0.1))}" y2="${f1(y(0.1))}"/>`);
    out.push(`<text class="note" x="${m.l + pw - 4}" y="${f1(y(0.1) - 5)}" text-anchor="end">chance (10 classes)</text>`);
  }
  out.push(`<text class="label" x="${m.l + pw / 2}" y="${H - 10}" text-anchor="middle">samples per worker per step (log₂ scale; global batch = ${info.workers} × this)</text>`);
  out.push(`<text class="label" transform="translate(16 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">test accuracy</text>`);
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
      if (c.min !== null && c.max !== null && c.max > c.min) {
        out.push(`<line class="spread" x1="${cx}" x2="${cx}" y1="${f1(y(c.min))}" y2="${f1(y(c.max))}" stroke="${color}"/>`);
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

/** Mean over seeds of each step's loss (runs of one cell have the same step count). */
function meanCurve(runs: readonly SweepRunResult[]): number[] {
  const curves = runs.map((r) => r.trainLoss).filter((c) => c.length > 0);
  if (curves.length === 0) return [];
  const n = Math.min(...curves.map((c) => c.length));
  return Array.from({ length: n }, (_, i) => curves.reduce((a, c) => a + c[i]!, 0) / curves.length);
}

/** One small plot per mode: smoothed training loss vs samples seen, one line per per-worker batch. */
export function lossPlots(rows: readonly SweepRunResult[], info: SweepReportInfo): string {
  const W = 470, H = 260;
  const m = { l: 46, r: 12, t: 28, b: 38 };
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  const curves = info.norms.map((norm) =>
    info.batches.map((b) => {
      const runs = rows.filter((r) => r.norm === norm && r.perWorkerBatch === b && r.failure === null);
      const g = b * info.workers;
      return { b, pts: smoothCurve(meanCurve(runs)).map((p) => ({ samples: (p.i + 1) * g, loss: p.v })) };
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
    curves[i]!.forEach((c, j) => {
      if (c.pts.length === 0) return;
      const d = c.pts.map((p, k) => `${k ? "L" : "M"}${f1(x(p.samples))} ${f1(y(p.loss))}`).join("");
      out.push(`<path class="loss-line" data-mode="${esc(norm)}" data-batch="${c.b}" d="${d}" stroke="${batchColor(j, info.batches.length)}"/>`);
    });
    const failed = curves[i]!.filter((c) => c.pts.length === 0).map((c) => c.b);
    if (failed.length) out.push(`<text class="note" x="${m.l + pw}" y="16" text-anchor="end">no curve: batch ${failed.join(", ")}</text>`);
    out.push(`</svg>`);
    return out.join("");
  });
  const legend = info.batches
    .map((b, j) => `<span class="key"><span class="swatch" style="background:${batchColor(j, info.batches.length)}"></span>${b}/worker</span>`)
    .join("");
  return `<div class="legend-row">per-worker batch: ${legend}</div><div class="smalls">${figs.join("\n")}</div>`;
}

/** Heat-tinted HTML table of the cells; failed cells say so, with the reason on hover. */
function resultsTable(cells: Cell[][], info: SweepReportInfo): string {
  const best = Math.max(0, ...cells.flat().map((c) => c.mean ?? 0));
  const head = `<tr><th>norm \\ per-worker batch</th>${info.batches.map((b) => `<th>${b}<span class="sub">global ${b * info.workers}</span></th>`).join("")}</tr>`;
  const body = cells
    .map((row, i) => {
      const tds = row
        .map((c) => {
          if (c.mean === null) {
            const why = c.failed[0]?.failure;
            return why ? `<td class="failed" title="${esc(why)}">failed</td>` : `<td class="missing">–</td>`;
          }
          const t = best > 0 ? c.mean / best : 0;
          const bg = `hsla(145, 55%, 45%, ${(0.08 + 0.42 * t * t).toFixed(2)})`;
          return `<td style="background:${bg}">${esc(cellText(c, info.seeds.length))}</td>`;
        })
        .join("");
      return `<tr data-mode="${esc(info.norms[i]!)}"><th><code>${esc(info.norms[i]!)}</code></th>${tds}</tr>`;
    })
    .join("\n");
  return `<table class="results" id="results-table"><thead>${head}</thead><tbody>${body}</tbody></table>`;
}

function runsTable(rows: readonly SweepRunResult[]): string {
  const pct = (v: number | null): string => (v === null ? "" : `${(100 * v).toFixed(2)}%`);
  const body = rows
    .map(
      (r) =>
        `<tr><td><code>${esc(r.norm)}</code></td><td>${r.perWorkerBatch}</td><td>${r.globalBatch}</td><td>${r.seed}</td><td>${r.steps ?? ""}</td><td>${pct(r.testAccuracy)}</td><td>${fixed(r.testLoss, 4)}</td><td>${fixed(r.trainSeconds, 1)}</td><td>${fixed(r.syncWaitSeconds, 1)}</td><td class="why">${esc(r.failure ?? "")}</td></tr>`,
    )
    .join("\n");
  return `<table class="runs"><thead><tr><th>norm</th><th>per-worker batch</th><th>global batch</th><th>seed</th><th>steps</th><th>test accuracy</th><th>test loss</th><th>run seconds</th><th>sync wait seconds</th><th>failure</th></tr></thead><tbody>${body}</tbody></table>`;
}

/** Plain-language observations computed from the cells (no interpretation the numbers do not carry). */
function findings(cells: Cell[][], info: SweepReportInfo): string[] {
  const out: string[] = [];
  cells.forEach((row, i) => {
    const done = row.filter((c) => c.mean !== null);
    const failed = row.filter((c) => c.mean === null && c.failed.length).map((c) => c.perWorkerBatch);
    if (done.length === 0 && failed.length === 0) return;
    let s = `<code>${esc(info.norms[i]!)}</code>: `;
    if (done.length) {
      const lo = done.reduce((a, c) => (c.mean! < a.mean! ? c : a));
      const hi = done.reduce((a, c) => (c.mean! > a.mean! ? c : a));
      s += done.length > 1 ? `${(100 * lo.mean!).toFixed(1)}% (batch ${lo.perWorkerBatch}) to ${(100 * hi.mean!).toFixed(1)}% (batch ${hi.perWorkerBatch})` : `${(100 * lo.mean!).toFixed(1)}% at batch ${lo.perWorkerBatch}`;
    }
    if (failed.length) s += `${done.length ? "; " : ""}<strong>failed</strong> at per-worker batch ${failed.join(", ")} (${esc(shortReason(row.find((c) => c.failed.length)!.failed[0]!.failure!))})`;
    out.push(s);
  });
  return out;
}

const CSS = `
:root{--ink:#1d2330;--muted:#5d6678;--line:#d9dee7;--bg:#f6f7f9}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1080px;margin:0 auto;padding:28px 28px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px}
.lead{color:var(--muted);margin:0 0 18px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin:14px 0}
.muted,.caption{color:var(--muted);font-size:13.5px}
.plot{max-width:100%;height:auto;font-size:12px}
.plot .grid{stroke:#e7eaf0;stroke-width:1}.plot .axis{stroke:#8a93a3;stroke-width:1}
.plot .tick{fill:#5d6678}.plot .label{fill:#3b4252;font-size:12.5px}.plot .legend{fill:#1d2330;font-size:13px}
.plot .title{fill:#1d2330;font-size:13.5px;font-weight:600;font-family:ui-monospace,Menlo,Consolas,monospace}
.plot .note{fill:#8a93a3;font-size:11px}.plot .chance{stroke:#9aa3b2;stroke-dasharray:4 4}
.mode-line{fill:none;stroke-width:2.6;stroke-linejoin:round;stroke-linecap:round}
.loss-line{fill:none;stroke-width:1.8;stroke-linejoin:round}
.spread{stroke-width:1.5;opacity:.55}
.smalls{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px 22px}.smalls svg{width:100%;height:auto}
#accuracy-plot{width:100%;height:auto}
.legend-row{font-size:13px;color:var(--muted);margin-bottom:6px}
.key{display:inline-flex;align-items:center;margin-left:12px}.swatch{width:18px;height:4px;border-radius:2px;margin-right:5px;display:inline-block}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
.results th,.results td{border:1px solid var(--line);padding:7px 12px;text-align:right;white-space:nowrap}
.results thead th{background:#eef1f5;font-weight:600}.results tbody th{text-align:left;background:#fafbfc}
.results .sub{display:block;font-weight:400;font-size:11.5px;color:var(--muted)}
.results td.failed{color:#b3261e;background:#fdecea;font-weight:600}.results td.missing{color:#8a93a3}
.runs{font-size:12.5px;width:100%}.runs th,.runs td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:right}
.runs td:first-child,.runs th:first-child,.runs .why{text-align:left}.runs .why{color:#b3261e;max-width:380px}
.settings{font-size:13.5px}.settings th{text-align:left;color:var(--muted);font-weight:500;padding:3px 18px 3px 0;vertical-align:top;white-space:nowrap}.settings td{padding:3px 0}
ul.findings{margin:6px 0 0;padding-left:20px}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
details summary{cursor:pointer;color:var(--muted)}
`;

/** The whole report.html: accuracy plot, loss curves, results table, settings. */
export function renderReportHtml(rows: readonly SweepRunResult[], info: SweepReportInfo): string {
  const cells = cellsOf(rows, info.norms, info.batches, info.seeds);
  const colors = modeColors(info.norms);
  const failures = failureLines(rows);
  const title = `syncbn sweep: ${info.model} on ${info.data}, ${info.workers} workers`;
  const settings: [string, string][] = [
    ["workers", String(info.workers)],
    ["model", info.model],
    ["data", info.data],
    ["norm modes", info.norms.join(", ")],
    ["per-worker batches", info.batches.join(", ")],
    ["seeds", info.seeds.join(", ")],
    ["budget per run", info.budget],
    ["learning rate", info.lrRule],
    ...info.settings,
    ["date", info.date],
    ["machine", info.machine],
    ["Node.js", info.node],
  ];
  const spread = info.seeds.length > 1 ? `Points are the mean over seeds ${info.seeds.join(", ")}; vertical bars span min to max.` : `One seed (${info.seeds[0]}).`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${CSS}</style>
</head>
<body>
<main>
<h1>${esc(title)}</h1>
<p class="lead">How test accuracy changes as each worker's batch shrinks, for each normalization mode. Runs: ${rows.length} (${info.norms.length} modes × ${info.batches.length} batches × ${info.seeds.length} seed${info.seeds.length > 1 ? "s" : ""})${info.missingRuns > 0 ? `; <strong>${info.missingRuns} not done yet</strong> (re-run the same command to finish)` : ""}. Generated ${esc(info.date)}.</p>
<section class="card">
<h2 style="margin-top:0">Test accuracy vs per-worker batch</h2>
${accuracyPlot(cells, info, colors)}
<p class="caption">${esc(spread)} Every run sees the same number of training samples (${esc(info.budget)}); the learning rate follows ${esc(info.lrRule)}. A cross in the strip under the x axis marks a run that failed (hover for the reason).</p>
<ul class="findings">${findings(cells, info).map((l) => `<li>${l}</li>`).join("")}</ul>
</section>
<section class="card">
<h2 style="margin-top:0">Training loss</h2>
${lossPlots(rows, info)}
<p class="caption">Training loss over the global batch, moving average over 1/20 of each run, mean over seeds; x is samples seen, so runs with different batches line up by data consumed.</p>
</section>
<section class="card">
<h2 style="margin-top:0">Results</h2>
${resultsTable(cells, info)}
<p class="caption">Mean test accuracy${info.seeds.length > 1 ? " ± sample standard deviation over seeds" : ""}. The per-run numbers are in <a href="results.csv">results.csv</a> (this table as markdown: <a href="results.md">results.md</a>).</p>
${failures.length ? `<p><strong>Failed runs</strong></p><ul>${failures.map((f) => `<li>${esc(f)}</li>`).join("")}</ul>` : ""}
<details><summary>Every run</summary>${runsTable(rows)}</details>
</section>
<section class="card">
<h2 style="margin-top:0">Settings</h2>
<table class="settings">${settings.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("")}</table>
</section>
</main>
</body>
</html>
`;
}
