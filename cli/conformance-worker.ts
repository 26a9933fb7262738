// One worker process of the conformance runner: joins the coordinator, drives
// one sync-BN layer per rank it hosts (a block of consecutive ranks, one by
// default) through the case's steps with each rank's own slice, sums dγ/dβ in a
// gradient round, and reports what each rank computed to the parent over IPC.
// argv: CASE_FILE FIRST_RANK URL TOKEN ROUND_TIMEOUT_MS [RANKS]

import { BatchNorm, type BnSync } from "../worker/nn/batchnorm.js";
import { BlockSync } from "../worker/block-sync.js";
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

async function main(): Promise<WorkerReport[]> {
  const [file, rankText, url, token, timeoutText, ranksText] = process.argv.slice(2);
  const first = Number(rankText);
  const size = Number(ranksText ?? "1");
  const c = loadCase(file!);
  const worldSize = c.steps[0]!.workers.length;
  const conventions = caseConventions(c);
  const roundTimeoutMs = Number(timeoutText);
  const client = await CoordinatorClient.connect({
    url: url!,
    rank: first,
    ranks: size,
    worldSize,
    token: token!,
    conventions,
    connectTimeoutMs: 15_000,
    roundTimeoutMs: roundTimeoutMs + 5_000,
    maxPayload: 64 * 1024 * 1024,
  });
  const sync = new RoundSync(client);
  // A block: one BN per rank, each with its rank's facade of the block's collective (rank order within one loop).
  const syncs: BnSync[] = size === 1 ? [sync] : new BlockSync(client, first, size, worldSize, sync).facades;
  const bns = syncs.map((s) => {
    const bn = new BatchNorm("bn", 0, [c.channels, ...c.spatial], conventions, s);
    bn.gamma.value.set(c.gamma);
    bn.beta.value.set(c.beta);
    return bn;
  });
  const chans = c.channels;
  const reports: WorkerReport[] = bns.map((_, k) => ({ type: "report", rank: first + k, steps: [], evalY: [] }));
  const grads64 = new Float64Array(2 * chans);
  for (let i = 0; i < c.steps.length; i++) {
    sync.step = i;
    const slices = bns.map((_, k) => c.steps[i]!.workers[first + k]!);
    const ys = await Promise.all(bns.map((bn, k) => bn.forward(Float32Array.from(slices[k]!.x), slices[k]!.shape[0]!, true)));
    const dxs = await Promise.all(bns.map((bn, k) => bn.backward(Float32Array.from(slices[k]!.dy), slices[k]!.shape[0]!)));
    // The data-parallel gradient round: one share per process, its ranks' dγ, dβ summed in float64 (the coordinator adds the shares and rounds once).
    grads64.fill(0);
    for (const bn of bns) {
      for (let ch = 0; ch < chans; ch++) {
        grads64[ch]! += bn.gamma.grad[ch]!;
        grads64[chans + ch]! += bn.beta.grad[ch]!;
      }
    }
    const n = slices.reduce((a, w) => a + w.shape[0]!, 0);
    const g = (await client.round(i, "grad", -1, n, grads64)).data;
    bns.forEach((bn, k) =>
      reports[k]!.steps.push({
        y: Array.from(ys[k]!),
        dx: Array.from(dxs[k]!),
        dgamma: Array.from(g.subarray(0, chans)),
        dbeta: Array.from(g.subarray(chans)),
        mean: Array.from(bn.batchMean),
        var: Array.from(bn.batchVar),
        runningMean: Array.from(bn.runningMean),
        runningVar: Array.from(bn.runningVar),
      }),
    );
  }
  const ev = c.eval;
  for (const [k, bn] of bns.entries()) reports[k]!.evalY = Array.from(await bn.forward(Float32Array.from(ev.x), ev.shape[0]!, false));
  await client.bye();
  return reports;
}

runChildMain(main);
