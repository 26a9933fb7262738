// What a run reports, without processes: the coordinator's measure of how long
// members waited for a round's last contribution, and the monitor's
// metrics.jsonl lines (numbering, start-up, the timing split), progress line and summary
// fed with the round events a real run produces.
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { Coordinator, type Peer, type RoundEvent } from "../coordinator/coordinator.js";
import { RunMonitor, clock, formatSummary } from "../cli/monitor.js";
import { encode } from "../shared/codec.js";
import type { RunConventions } from "../shared/config.js";
import { GradExtra, PROTOCOL_VERSION, SumRound } from "../shared/protocol.js";

const TMP = mkdtempSync(join(tmpdir(), "syncbn-monitor-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

const CONV: RunConventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "local", training: "" };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const quietPeer = (label: string): Peer => ({ label, send: () => {}, close: () => {} });

describe("the coordinator's waiting-for-other-ranks measure", () => {
  const live: Coordinator[] = [];
  afterEach(() => {
    for (const c of live.splice(0)) c.shutdown("test over");
  });

  it("reports with each gradient round how long its members waited for the last contribution, counting each rank's first round as start-up", async () => {
    const coord = new Coordinator({ worldSize: 2, token: "t", conventions: CONV, roundTimeoutMs: 10_000 });
    live.push(coord);
    const events: RoundEvent[] = [];
    coord.events.onRound = (ev) => events.push({ ...ev });
    const peers = [quietPeer("p0"), quietPeer("p1")];
    peers.forEach((p, rank) => coord.receive(p, encode({ type: "hello", version: PROTOCOL_VERSION, rank, worldSize: 2, token: "t", conventions: CONV })));
    const grad = (rank: number, step: number): void =>
      coord.receive(peers[rank]!, encode({ type: "contrib", step, phase: "grad", layer: -1, count: 4, data: new Float32Array(3), extra: new Float64Array(GradExtra.length) }));
    for (const step of [0, 1]) {
      grad(0, step);
      await sleep(60); // rank 0 waits for rank 1 at least this long
      grad(1, step);
    }
    expect(events.map((e) => e.step)).toEqual([0, 1]);
    // Step 0 is each rank's first round: it also waits for the others' start-up, so it is not counted.
    expect(events[0]!.waitOtherRanksMs).toBe(0);
    // Step 1: rank 0 waited ≥ 60 ms, rank 1 (the last) not at all; the sum over members is what is reported.
    expect(events[1]!.waitOtherRanksMs).toBeGreaterThanOrEqual(55);
  });
});

/** The grad round's extra as the coordinator sums it over W workers. */
function gradExtra(W: number, batch: number, lossPerSample: number, syncWaitMs: number, totalSteps: number, stepsPerEpoch: number): Float64Array {
  const e = new Float64Array(GradExtra.length);
  e[GradExtra.lossSum] = lossPerSample * W * batch;
  e[GradExtra.correct] = W * batch * 0.5;
  e[GradExtra.count] = W * batch;
  e[GradExtra.syncWaitMs] = W * syncWaitMs;
  e[GradExtra.totalSteps] = W * totalSteps;
  e[GradExtra.stepsPerEpoch] = W * stepsPerEpoch;
  return e;
}

describe("RunMonitor", () => {
  it("numbers steps and epochs from 1 in step and eval lines alike, writes start-up apart, and splits each step's time in sync rounds", () => {
    const out = join(TMP, "run");
    mkdirSync(out, { recursive: true });
    const printed: string[] = [];
    const W = 2, B = 4;
    const m = new RunMonitor({ worldSize: W, perWorkerBatch: B, norm: "sync", model: "mlp", data: "synthetic", outDir: out, totalSteps: null, stepsPerEpoch: null, startStep: 0, tty: false, print: (l) => printed.push(l), status: () => {} });
    const grad = (step: number, loss: number, reportedWaitMs: number, otherRanksSum: number): void =>
      m.onRound({ step, phase: "grad", layer: -1, count: W * B, data: new Float32Array(1), extra: gradExtra(W, B, loss, reportedWaitMs, 3, 2), waitOtherRanksMs: otherRanksSum });
    // Three steps, two per epoch; an evaluation after the second. Workers report a step's
    // time in sync rounds with the next step's gradient round (here 10 and 12 ms).
    grad(0, 2.0, 0, 6); // 3 ms per worker waiting for other ranks
    grad(1, 1.5, 10, 8);
    m.onRound({ step: 1, phase: "sum", layer: SumRound.Eval, count: 0, data: Float64Array.of(50, 30, 100), extra: undefined });
    grad(2, 1.0, 12, 2);
    const s = m.summary();
    m.writeSummary(s);

    const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.map((l) => l.type)).toEqual(["start", "step", "step", "eval", "step"]);
    expect(lines[0]).toMatchObject({ type: "start", step: 0, workers: 2 });
    expect(typeof lines[0]!.startupSeconds).toBe("number");
    const steps = lines.filter((l) => l.type === "step");
    expect(steps.map((l) => [l.step, l.epoch])).toEqual([[1, 1], [2, 1], [3, 2]]);
    expect(lines[3]).toMatchObject({ type: "eval", step: 2, epoch: 1, testAccuracy: 0.3, testLoss: 0.5, testSamples: 100 });
    // Step 1: 10 ms in rounds, of which 3 waiting for other ranks, so 7 round trip.
    expect(steps[0]).toMatchObject({ loss: 2.0, syncWaitMs: 10, waitOtherRanksMs: 3, roundTripMs: 7, msPerStep: null });
    expect(steps[1]).toMatchObject({ loss: 1.5, syncWaitMs: 12, waitOtherRanksMs: 4, roundTripMs: 8 });
    // The last step's time in rounds would come with a next step: there is none.
    expect(steps[2]).toMatchObject({ loss: 1.0, syncWaitMs: null, waitOtherRanksMs: 1, roundTripMs: null });

    expect(s.finalTrainLoss).toBe(1.0);
    expect(s.startupSeconds).toBe(lines[0]!.startupSeconds);
    const text = formatSummary(s).join("\n");
    expect(text).toMatch(/last-batch train loss 1\.0000 \(step 3, not smoothed\)/);
    expect(text).toMatch(/in sync rounds .* ms\/step: waiting for other ranks .* ms \(the slowest rank's compute; includes CPU contention when workers share cores\), round trip .* ms/);
    expect(text).toMatch(/start-up \d+\.\d s/);
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as Record<string, unknown>;
    for (const k of ["syncWaitMsPerStep", "waitOtherRanksMsPerStep", "roundTripMsPerStep", "startupSeconds"]) expect(summary, k).toHaveProperty(k);

    // Progress: a legend once, then lines that name the smoothing and show elapsed time and an ETA.
    expect(printed[0]).toMatch(/^progress: loss = mean training loss of the last 20 steps; sync = ms per step a worker spends in sync rounds, of which waiting for other ranks/);
    const progress = printed.filter((l) => l.startsWith("step "));
    expect(progress[0]).toMatch(/^step 1\/3 epoch 1\/2 · loss \(avg 1 step\) 2\.0000 · 0:\d\d elapsed, ETA 0:\d\d$/);
    expect(progress[progress.length - 1]).toMatch(/^step 3\/3 epoch 2\/2 · loss \(avg 3 steps\) 1\.5000 .*elapsed, ETA 0:00$/);
    expect(printed).toContain("eval after step 2 (epoch 1): test accuracy 30.00%, test loss 0.5000 (100 samples)");
  });

  it("writes a step line still waiting for its timing when the run stops, so a failed run keeps its history", () => {
    const out = join(TMP, "stopped");
    mkdirSync(out, { recursive: true });
    const m = new RunMonitor({ worldSize: 1, perWorkerBatch: 2, norm: "sync", model: "mlp", data: "synthetic", outDir: out, totalSteps: null, stepsPerEpoch: null, startStep: 4, tty: false, print: () => {}, status: () => {} });
    m.onRound({ step: 4, phase: "grad", layer: -1, count: 2, data: new Float32Array(1), extra: gradExtra(1, 2, 0.7, 0, 10, 5) });
    expect(readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n")).toHaveLength(2); // the resume and start lines
    m.flush();
    const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    // Resumed after 4 steps: the start line says so, and the first step line is step 5 of epoch 1.
    expect(lines).toMatchObject([{ type: "resume", step: 4 }, { type: "start", step: 4 }, { type: "step", step: 5, epoch: 1, loss: 0.7, syncWaitMs: null }]);
  });

  it("formats durations as m:ss, and h:mm:ss past an hour", () => {
    expect([clock(0), clock(59.6), clock(61), clock(3600 + 62)]).toEqual(["0:00", "1:00", "1:01", "1:01:02"]);
  });
});
