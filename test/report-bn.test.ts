// The sweep report's BN-spread view (cli/report-bn.ts): bn lines of metrics.jsonl
// averaged per layer, one plot and table per mode that sends statistics, and a
// sentence for each mode that does not.
import { describe, expect, it } from "vitest";
import { BnSpreadAccumulator, bnSection } from "../cli/report-bn.js";
import type { SweepReportInfo, SweepRunResult } from "../cli/report.js";

const INFO: SweepReportInfo = {
  workers: 4,
  model: "mlp",
  data: "synthetic",
  norms: ["local", "sync", "group:2"],
  batches: [2, 8],
  seeds: [1],
  budget: "1 epoch of 256 training samples",
  lrRule: "linear scaling",
  settings: [],
  date: "2026-01-01 00:00 UTC",
  machine: "test CPU",
  node: "v20.0.0",
  missingRuns: 0,
};

function run(norm: string, batch: number, bnLines: object[]): SweepRunResult {
  const acc = new BnSpreadAccumulator();
  for (const l of bnLines) acc.add(l);
  return { norm, perWorkerBatch: batch, globalBatch: 4 * batch, seed: 1, testAccuracy: 0.5, testLoss: 1, trainSeconds: 1, syncWaitSeconds: 0, steps: 10, failure: null, trainLoss: [], bn: acc.result() };
}

const line = (step: number, layer: number, meanDevMean: number, logVarMean: number): object => ({ type: "bn", step, layer, channels: 16, meanDevMean, logVarMean, runningMeanGap: 0.1 });

describe("the sweep report's BN spread", () => {
  it("averages a run's bn lines per layer over the sampled steps, ignoring other lines", () => {
    const acc = new BnSpreadAccumulator();
    for (const l of [line(0, 1, 0.5, -1), line(10, 1, 0.3, -0.5), line(0, 0, 0.2, 0), { type: "step", step: 0, loss: 2 }]) acc.add(l);
    expect(acc.result()).toEqual([
      { layer: 0, channels: 16, samples: 1, meanDev: 0.2, logVar: 0, runningMeanGap: 0.1 },
      { layer: 1, channels: 16, samples: 2, meanDev: 0.4, logVar: -0.75, runningMeanGap: 0.1 },
    ]);
  });

  it("draws one plot and table per mode with statistics, one line per layer, and says why local has none", () => {
    const rows = [
      run("local", 2, []),
      run("local", 8, []),
      run("sync", 2, [line(0, 0, 0.8, -1.2), line(0, 1, 0.7, -1)]),
      run("sync", 8, [line(0, 0, 0.4, -0.3), line(0, 1, 0.35, -0.2)]),
      run("group:2", 2, [line(0, 0, 0.6, -1)]),
      run("group:2", 8, []),
    ];
    const html = bnSection(rows, INFO);
    expect(html.match(/class="plot bn-plot"/g)).toHaveLength(2);
    expect(html).toContain('data-mode="sync"');
    expect(html.match(/class="bn-layer-line"/g)).toHaveLength(3); // sync: 2 layers, group:2: 1
    expect(html).toContain("<td>0.800 <span class=\"sub\">-1.200</span></td>");
    expect(html).toContain("<td>– <span class=\"sub\">–</span></td>"); // group:2 at batch 8: no data
    expect(html).toMatch(/<code>local<\/code>: --norm local: each worker normalizes with statistics of its own batch/);
  });
});
