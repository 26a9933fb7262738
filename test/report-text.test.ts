// The sweep report's words and its paper figure (cli/report-text.ts, the adequacy
// band of cli/report-charts.ts): the adequacy check fires when sync's spread
// across batches exceeds 1.5 points, and every number of the generated paragraph
// is computed from the runs given (made-up runs here, drawn from a seeded generator).
import { describe, expect, it } from "vitest";
import { cellsOf, renderMarkdown, renderReportHtml, type SweepReportInfo, type SweepRunResult } from "../cli/report.js";
import { BnSpreadAccumulator } from "../cli/report-bn.js";
import { ADEQUATE_SPREAD_POINTS, adequacyOf, adequacyText, studyParagraph } from "../cli/report-text.js";

const NORMS = ["local", "sync", "groupnorm:8", "renorm", "cbn:8"];
const BATCHES = [2, 4, 8, 16, 32];
const SEEDS = [1, 2, 3];
const INFO: SweepReportInfo = {
  workers: 8,
  model: "resnet:3",
  data: "fashion-mnist",
  norms: NORMS,
  batches: BATCHES,
  seeds: SEEDS,
  budget: "2 epochs of 20000 training samples",
  lrRule: "linear scaling",
  settings: [],
  date: "2026-01-01 00:00 UTC",
  machine: "test CPU",
  node: "v20.0.0",
  version: "0.0.0",
  commands: [],
  missingRuns: 0,
};

/** A small deterministic generator (mulberry32), so the made-up accuracies are not round numbers. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Runs of the whole grid: accuracy = base(norm, batch) + seed noise; sync runs carry bn lines whose spread falls as 1/√B. */
function study(base: (norm: string, batch: number) => number, seed = 7): SweepRunResult[] {
  const r = rng(seed);
  const rows: SweepRunResult[] = [];
  for (const norm of NORMS)
    for (const b of BATCHES)
      for (const s of SEEDS) {
        const acc = new BnSpreadAccumulator();
        if (norm === "sync") for (let layer = 0; layer < 3; layer++) acc.add({ type: "bn", layer, channels: 16, meanDevMean: (0.9 + 0.1 * layer + 0.05 * r()) / Math.sqrt(b), logVarMean: -0.5 });
        rows.push({ norm, perWorkerBatch: b, globalBatch: 8 * b, seed: s, testAccuracy: base(norm, b) + 0.006 * (r() - 0.5), testLoss: 0.3, trainSeconds: 10, syncWaitSeconds: 1, steps: 100, failure: null, trainLoss: [1, 0.5], bn: acc.result() });
      }
  return rows;
}

/** The published shape: local falls at small batches, GroupNorm flat, sync flat (adequate) or sloped (not). */
const shape = (syncSlope: number) => (norm: string, b: number): number => {
  const k = Math.log2(32 / b); // 4 at batch 2, 0 at 32
  if (norm === "sync") return 0.9 - syncSlope * (4 - k);
  if (norm === "groupnorm:8") return 0.885;
  if (norm === "local") return 0.9 - 0.03 * k * k;
  if (norm === "renorm") return 0.9 - 0.015 * k * k;
  return 0.9 - 0.004 * k * k; // cbn:8
};

const mean = (xs: number[]): number => xs.reduce((a, x) => a + x, 0) / xs.length;
const accOf = (rows: SweepRunResult[], norm: string, b: number): number => mean(rows.filter((r) => r.norm === norm && r.perWorkerBatch === b).map((r) => r.testAccuracy!));

describe("the adequacy check", () => {
  it("is sync's max − min of seed means across batches, and flags the study when it exceeds 1.5 points", () => {
    for (const [slope, adequate] of [[0.001, true], [0.006, false]] as const) {
      const rows = study(shape(slope));
      const syncMeans = BATCHES.map((b) => accOf(rows, "sync", b));
      const spread = 100 * (Math.max(...syncMeans) - Math.min(...syncMeans));
      expect(spread > ADEQUATE_SPREAD_POINTS).toBe(!adequate);
      const a = adequacyOf(cellsOf(rows, NORMS, BATCHES, SEEDS), NORMS)!;
      expect(a.spread).toBeCloseTo(spread, 9);
      expect(a.adequate).toBe(adequate);
      const text = adequacyText(a);
      expect(text).toContain(`spans ${spread.toFixed(1)} points across 5 per-worker batches`);
      expect(text).toContain(`(${(100 * Math.min(...syncMeans)).toFixed(1)}% at `);
      if (adequate) expect(text).toMatch(/within 1\.5: adequate/);
      else expect(text).toMatch(/^Budget adequacy: INADEQUATE: .* more than 1\.5/);
    }
  });

  it("is not checked without sync results at two batches", () => {
    const rows = study(shape(0.001)).filter((r) => r.norm !== "sync" || r.perWorkerBatch === 2);
    expect(adequacyOf(cellsOf(rows, NORMS, BATCHES, SEEDS), NORMS)).toBeNull();
    expect(adequacyText(null)).toMatch(/not checked/);
  });

  it("goes into results.md (the sweep's last stdout) and report.html, with the band on the figure coloured by the verdict", () => {
    const bad = study(shape(0.006));
    const md = renderMarkdown(bad, INFO);
    expect(md).toMatch(/\nBudget adequacy: INADEQUATE: sync BN's seed-mean accuracy spans \d+\.\d points/);
    const html = renderReportHtml(bad, INFO);
    expect(html).toMatch(/<p class="adequacy inadequate" id="adequacy">Budget adequacy: INADEQUATE/);
    expect(html).toMatch(/<rect class="adequacy-band inadequate"/);
    const good = renderReportHtml(study(shape(0.001)), INFO);
    expect(good).toMatch(/<p class="adequacy adequate" id="adequacy">/);
    expect(good).toMatch(/<rect class="adequacy-band" /);
    expect(good).toContain('error bars: min–max<tspan x="748" dy="14">over 3 seeds</tspan>');
    // Accuracies of 78–91%: the y axis starts above 0 so that a 1.5-point band shows.
    expect(good).toMatch(/test accuracy \(axis from \d+%\)/);
  });
});

describe("the generated paragraph", () => {
  const rows = study(shape(0.001), 11);
  const cells = cellsOf(rows, NORMS, BATCHES, SEEDS);
  const text = studyParagraph(cells, INFO, rows);

  it("states, from the runs, sync's accuracy at the smallest batch and each mode's loss against it, largest first", () => {
    const sync2 = accOf(rows, "sync", 2);
    const syncStd = cells[1]![0]!.std!;
    expect(text).toContain(`At the smallest per-worker batch, 2 (global 16), sync BN reaches ${(100 * sync2).toFixed(1)}% (mean of 3 seeds, std ${(100 * syncStd).toFixed(1)})`);
    const losses = ["local", "renorm", "cbn:8", "groupnorm:8"].map((n) => ({ n, loss: 100 * (sync2 - accOf(rows, n, 2)), acc: accOf(rows, n, 2) }));
    const phrases = losses.sort((a, b) => b.loss - a.loss).map((l, k) => `${l.n} ${l.loss >= 0 ? "loses" : "gains"} ${Math.abs(l.loss).toFixed(1)}${k ? "" : " points"} (${(100 * l.acc).toFixed(1)}%)`);
    expect(text).toContain(`against it ${phrases.join(", ")}.`);
  });

  it("calls GroupNorm flat by its own spread, and says from which batch each BN mode is within 1.5 points of sync", () => {
    const gn = BATCHES.map((b) => accOf(rows, "groupnorm:8", b));
    const spread = 100 * (Math.max(...gn) - Math.min(...gn));
    expect(text).toContain(`groupnorm:8 spans ${spread.toFixed(1)} points across the batches`);
    expect(text).toMatch(/groupnorm:8 spans [\d.]+ points .*: flat by the 1\.5-point margin\./);
    // The batch from which on a mode stays within 1.5 points of sync, found here by its own loop over the made-up means.
    const from = (norm: string): number => {
      let f = -1;
      for (let j = BATCHES.length - 1; j >= 0; j--) {
        if (100 * (accOf(rows, "sync", BATCHES[j]!) - accOf(rows, norm, BATCHES[j]!)) > 1.5) break;
        f = j;
      }
      return f;
    };
    // With these made-up means: local within the margin only at 32, renorm from 16 on.
    expect([from("local"), from("renorm")]).toEqual([4, 3]);
    expect(text).toContain("local only at 32 per worker");
    expect(text).toContain("renorm from 16 per worker on");
  });

  it("reports the per-worker BN statistics' spread of the sync runs at the smallest and largest batch", () => {
    const dev = (b: number): number => mean(rows.filter((r) => r.norm === "sync" && r.perWorkerBatch === b).map((r) => mean(r.bn!.map((l) => l.meanDev!))));
    expect(text).toContain(`mean over 3 BN layers and the sampled steps): a worker's batch mean lies ${dev(2).toFixed(2)} σ from the global batch's at 2 per worker and ${dev(32).toFixed(2)} σ at 32`);
  });

  it("changes its numbers with the data, says when sync has no result at the smallest batch, and when no run recorded BN statistics", () => {
    const other = study(shape(0.001), 12);
    expect(studyParagraph(cellsOf(other, NORMS, BATCHES, SEEDS), INFO, other)).not.toBe(text);
    const noSync2 = rows.filter((r) => !(r.norm === "sync" && r.perWorkerBatch === 2)).map((r) => ({ ...r, bn: [] }));
    const t = studyParagraph(cellsOf(noSync2, NORMS, BATCHES, SEEDS), INFO, noSync2);
    expect(t).toMatch(/^sync BN has no result at the smallest per-worker batch \(2\)/);
    expect(t).toContain("No run recorded the per-worker BN statistics");
  });

  it("names the modes that fail at the smallest batch", () => {
    const failed = rows.map((r) => (r.norm === "local" && r.perWorkerBatch === 2 ? { ...r, testAccuracy: null, failure: "SYNCBN_ERR_SINGLE_VALUE: one value per channel" } : r));
    const t = studyParagraph(cellsOf(failed, NORMS, BATCHES, SEEDS), INFO, failed);
    expect(t).toContain("local fails at this batch");
    expect(renderMarkdown(failed, INFO)).toContain(t);
  });
});
