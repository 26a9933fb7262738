// One worker process of the conformance runner: joins the coordinator, drives
// one sync-BN layer through the case's steps with its own slice, sums dγ/dβ in a
// gradient round, and reports what it computed to the parent over IPC.
// argv: CASE_FILE RANK URL TOKEN ROUND_TIMEOUT_MS

import { BatchNorm } from "../worker/nn/batchnorm.js";
import { CoordinatorClient } from "../worker/client.js";
import { RoundSync } from "../worker/sync.js";
import { caseConventions, loadCase } from "./conformance-case.js";
import { runChildMain } from "./procs.js";

export interface WorkerReport {
  type: "report";
  rank: number;
  steps: {
    y: number[];
    dx: number[];
    dgamma: number[];
    dbeta: number[];
    mean: number[];
    var: number[];
    runningMean: number[];
    runningVar: number[];
  }[];
  evalY: number[];
}

async function main(): Promise<WorkerReport> {
  const [file, rankText, url, token, timeoutText] = process.argv.slice(2);
  const rank = Number(rankText);
  const c = loadCase(file!);
  const worldSize = c.steps[0]!.workers.length;
  const conventions = caseConventions(c);
  const roundTimeoutMs = Number(timeoutText);
  const client = await CoordinatorClient.connect({
    url: url!,
    rank,
    worldSize,
    token: token!,
    conventions,
    connectTimeoutMs: 15_000,
    roundTimeoutMs: roundTimeoutMs + 5_000,
    maxPayload: 64 * 1024 * 1024,
  });
  const sync = new RoundSync(client);
  const bn = new BatchNorm("bn", 0, [c.channels, ...c.spatial], conventions, sync);
  bn.gamma.value.set(c.gamma);
  bn.beta.value.set(c.beta);
  const chans = c.channels;
  const report: WorkerReport = { type: "report", rank, steps: [], evalY: [] };
  for (let i = 0; i < c.steps.length; i++) {
    sync.step = i;
    const w = c.steps[i]!.workers[rank]!;
    const n = w.shape[0]!;
    const y = Array.from(await bn.forward(Float32Array.from(w.x), n, true));
    const dx = Array.from(await bn.backward(Float32Array.from(w.dy), n));
    // The data-parallel gradient round: every worker's share of dγ, dβ, summed.
    const grads = new Float32Array(2 * chans);
    grads.set(bn.gamma.grad, 0);
    grads.set(bn.beta.grad, chans);
    const g = (await client.round(i, "grad", -1, n, grads)).data;
    report.steps.push({
      y,
      dx,
      dgamma: Array.from(g.subarray(0, chans)),
      dbeta: Array.from(g.subarray(chans)),
      mean: Array.from(bn.batchMean),
      var: Array.from(bn.batchVar),
      runningMean: Array.from(bn.runningMean),
      runningVar: Array.from(bn.runningVar),
    });
  }
  const ev = c.eval;
  report.evalY = Array.from(await bn.forward(Float32Array.from(ev.x), ev.shape[0]!, false));
  await client.bye();
  return report;
}

runChildMain(main);
