// What `syncbn sweep` writes from its results: results.csv, the markdown table
// and the self-contained report.html (inline CSS and SVG, no scripts, no fonts,
// no network). Pure functions from results to strings: no I/O, no clock, so the
// report can be tested without running anything or opening a browser. The SVG
// figures themselves are drawn in report-charts.ts.

import { accuracyPlot, cellText, esc, lossPlots, modeColors } from "./report-charts.js";
import { bnSection, type BnLayerSpread } from "./report-bn.js";
import { adequacyOf, adequacyText, studyParagraph } from "./report-text.js";

// Part of this module's API before the figures moved out; sweep.test.ts imports smoothCurve from here.
export { accuracyPlot, lossPlots, modeColors, smoothCurve } from "./report-charts.js";

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
  /** Per-BN-layer spread of local vs global statistics from metrics.jsonl (cli/report-bn.ts); absent/empty when none. */
  bn?: BnLayerSpread[];
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
  /** syncbn's version (package.json). */
  version: string;
  /** The commands that made this sweep folder, oldest first (the last one made this report). */
  commands: string[];
  /** Runs still missing (interrupted sweep); 0 when complete. */
  missingRuns: number;
  /** The preset that set parts of the grid, in words (cli/study-preset.ts), when one did. */
  preset?: string;
}

export const CSV_HEADER = "norm,perWorkerBatch,globalBatch,seed,status,testAccuracy,testLoss,trainSeconds,syncWaitSeconds,error";

const fixed = (v: number | null, digits: number): string => (v === null || !Number.isFinite(v) ? "" : v.toFixed(digits));

function csvField(s: string): string {
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** One row per run, in the order given: status ok or failed; a failed run has empty metrics and its reason in `error`. */
export function renderCsv(rows: readonly SweepRunResult[]): string {
  const lines = [CSV_HEADER];
  for (const r of rows) {
    const status = r.failure === null ? "ok" : "failed";
    lines.push(
      [
        csvField(r.norm),
        r.perWorkerBatch,
        r.globalBatch,
        r.seed,
        status,
        fixed(r.testAccuracy, 4),
        fixed(r.testLoss, 4),
        fixed(r.trainSeconds, 2),
        fixed(r.syncWaitSeconds, 2),
        csvField(r.failure ?? ""),
      ].join(","),
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
    `Learning rate: ${info.lrRule}. Budget: ${info.budget}.${info.preset ? ` Preset: ${info.preset}.` : ""}`,
    "",
    head,
    rule,
    ...body,
    ...(failures.length ? ["", "Failed runs:", ...failures.map((f) => `- ${f}`)] : []),
    ...(info.missingRuns > 0 ? ["", `Incomplete: ${info.missingRuns} run(s) not done yet; re-run the same command to finish.`] : []),
    "",
    adequacyText(adequacyOf(cells, info.norms)),
    "",
    studyParagraph(cells, info, rows),
    "",
  ].join("\n");
}

function failureLines(rows: readonly SweepRunResult[]): string[] {
  return rows.filter((r) => r.failure !== null).map((r) => `${r.norm}, per-worker batch ${r.perWorkerBatch}, seed ${r.seed}: ${r.failure}`);
}

// ---------------------------------------------------------------- HTML

/** A failure reason without code and context, cut at its first clause: for captions. */
export function shortReason(reason: string): string {
  return reason.replace(/^SYNCBN_ERR_\w+: (\[[^\]]*\] )?/, "").split(/[;(]/)[0]!.trim();
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
        `<tr><td><code>${esc(r.norm)}</code></td><td>${r.perWorkerBatch}</td><td>${r.globalBatch}</td><td>${r.seed}</td><td>${r.failure === null ? "ok" : "failed"}</td><td>${r.steps ?? ""}</td><td>${pct(r.testAccuracy)}</td><td>${fixed(r.testLoss, 4)}</td><td>${fixed(r.trainSeconds, 1)}</td><td>${fixed(r.syncWaitSeconds, 1)}</td><td class="why">${esc(r.failure ?? "")}</td></tr>`,
    )
    .join("\n");
  return `<table class="runs"><thead><tr><th>norm</th><th>per-worker batch</th><th>global batch</th><th>seed</th><th>status</th><th>steps</th><th>test accuracy</th><th>test loss</th><th>run seconds</th><th>sync wait seconds</th><th>failure</th></tr></thead><tbody>${body}</tbody></table>`;
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
.spread{stroke-width:1.6;opacity:.8}.loss-band{opacity:.18;stroke:none}
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
.adequacy{padding:8px 12px;border-radius:8px;font-size:14px}.adequacy.adequate{background:#e8f5ec}.adequacy.inadequate{background:#fdecea;color:#8c1d18;font-weight:600}.adequacy.unchecked{background:#f1f3f6}
.summary{font-size:14.5px;max-width:78ch}
.plot .adequacy-band{fill:#0072B2;opacity:.12}.plot .adequacy-band.inadequate{fill:#D55E00;opacity:.16}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
code.cmd{white-space:pre-wrap;word-break:break-all}
details summary{cursor:pointer;color:var(--muted)}
`;

/** The whole report.html: accuracy plot, loss curves, results table, settings. */
export function renderReportHtml(rows: readonly SweepRunResult[], info: SweepReportInfo): string {
  const cells = cellsOf(rows, info.norms, info.batches, info.seeds);
  const adequacy = adequacyOf(cells, info.norms);
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
    ...(info.preset ? ([["preset", info.preset]] as [string, string][]) : []),
    ["budget per run", info.budget],
    ["learning rate", info.lrRule],
    ...info.settings,
    ["date", info.date],
    ["machine", info.machine],
    ["Node.js", info.node],
    ["syncbn", info.version],
  ];
  // The exact command (every one, when later commands extended the sweep), copyable as typed.
  const commands = info.commands.length
    ? `<tr><th>${info.commands.length > 1 ? "commands (oldest first)" : "command"}</th><td>${info.commands.map((c) => `<code class="cmd">${esc(c)}</code>`).join("<br>")}</td></tr>`
    : "";
  const spread = info.seeds.length > 1 ? `Points are the mean over seeds ${info.seeds.join(", ")}; error bars span min to max over the seeds.` : `One seed (${info.seeds[0]}).`;
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
<p class="adequacy ${adequacy === null ? "unchecked" : adequacy.adequate ? "adequate" : "inadequate"}" id="adequacy">${esc(adequacyText(adequacy))}</p>
<p class="summary" id="summary">${esc(studyParagraph(cells, info, rows))}</p>
<ul class="findings">${findings(cells, info).map((l) => `<li>${l}</li>`).join("")}</ul>
</section>
<section class="card">
<h2 style="margin-top:0">Training loss</h2>
${lossPlots(rows, info)}
<p class="caption">Training loss (cross-entropy, mean over the global batch), moving average over 1/20 of each run${info.seeds.length > 1 ? `, mean over seeds ${esc(info.seeds.join(", "))}; the shaded band spans the smallest to the largest seed's curve (min to max)` : ` (seed ${esc(info.seeds.join(", "))})`}; x is samples seen, so runs with different batches line up by data consumed.</p>
</section>
${bnSection(rows, info)}
<section class="card">
<h2 style="margin-top:0">Results</h2>
${resultsTable(cells, info)}
<p class="caption">Mean test accuracy${info.seeds.length > 1 ? " ± sample standard deviation over seeds" : ""}. The per-run numbers are in <a href="results.csv">results.csv</a> (this table as markdown: <a href="results.md">results.md</a>).</p>
${failures.length ? `<p><strong>Failed runs</strong></p><ul>${failures.map((f) => `<li>${esc(f)}</li>`).join("")}</ul>` : ""}
<details><summary>Every run</summary>${runsTable(rows)}</details>
</section>
<section class="card">
<h2 style="margin-top:0">Settings</h2>
<table class="settings">${commands}${settings.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("")}</table>
</section>
</main>
</body>
</html>
`;
}
