// The BN-spread statistics (coordinator/bn-spread.ts) against numbers worked out
// by hand on two ranks with known slices, and the tracker fed by a real
// (socket-free) Coordinator through in-memory peers.
import { describe, expect, it } from "vitest";
import { BnSpreadTracker, layerSpread, rankSpread, runningGap, type BnSpreadRecord, type RankMoments } from "../coordinator/bn-spread.js";
import { Coordinator, type Peer } from "../coordinator/coordinator.js";
import { encode } from "../shared/codec.js";
import type { RunConventions } from "../shared/config.js";
import { GradExtra, PROTOCOL_VERSION } from "../shared/protocol.js";

/** (n, mean, M2) per channel of a slice given as values[channel][sample]. */
function moments(values: number[][]): RankMoments {
  const count = values[0]!.length;
  const mean = Float64Array.from(values, (v) => v.reduce((a, b) => a + b, 0) / (v.length || 1));
  const m2 = Float64Array.from(values, (v, c) => v.reduce((a, x) => a + (x - mean[c]!) ** 2, 0));
  return { count, mean, m2 };
}

// Channel 0: rank 0 has [1, 3] (μ0 = 2, σ0² = 1), rank 1 has [5, 7] (μ1 = 6, σ1² = 1);
//   together [1, 3, 5, 7]: μ = 4, σ² = (9 + 1 + 1 + 9)/4 = 5.
// Channel 1: rank 0 has [0, 0] (μ0 = 0, σ0² = 0), rank 1 has [2, 2] (μ1 = 2, σ1² = 0);
//   together μ = 1, σ² = 1.
const RANK0 = moments([[1, 3], [0, 0]]);
const RANK1 = moments([[5, 7], [2, 2]]);
const GLOBAL = { mean: Float64Array.of(4, 1), var: Float64Array.of(5, 1) };
const EPS = 0.01;

describe("BN spread of local against global statistics", () => {
  it("matches the hand computation for two ranks with known slices", () => {
    // |2 − 4|/√5.01 and |0 − 1|/√1.01, averaged over the two channels; rank 1 is the mirror image.
    const dev = (2 / Math.sqrt(5.01) + 1 / Math.sqrt(1.01)) / 2;
    // ln((1 + .01)/(5 + .01)) and ln((0 + .01)/(1 + .01)): the zero variance stays finite through eps.
    const logVar = (Math.log(1.01 / 5.01) + Math.log(0.01 / 1.01)) / 2;
    for (const r of [RANK0, RANK1]) {
      const s = rankSpread(r, GLOBAL, EPS)!;
      expect(s.meanDev).toBeCloseTo(dev, 12);
      expect(s.logVar).toBeCloseTo(logVar, 12);
    }
    expect(dev).toBeCloseTo(0.94427, 4);
    expect(logVar).toBeCloseTo(-3.1083, 3);
  });

  it("measures running statistics against the batch: |0 − 4|/√5.01, |0 − 1|/√1.01 and ln(1.01/5.01), ln(1.01/1.01)", () => {
    const g = runningGap({ mean: Float64Array.of(0, 0), var: Float64Array.of(1, 1) }, GLOBAL, EPS);
    expect(g.meanGap).toBeCloseTo((4 / Math.sqrt(5.01) + 1 / Math.sqrt(1.01)) / 2, 12);
    expect(g.logVar).toBeCloseTo(Math.log(1.01 / 5.01) / 2, 12);
  });

  it("leaves out ranks with no samples or one value per channel, and summarizes the rest", () => {
    const one = moments([[4], [1]]);
    const none: RankMoments = { count: 0, mean: new Float64Array(2), m2: new Float64Array(2) };
    const wide = moments([[0, 8], [1, 1]]); // |0|... μ = (4, 1): meanDev 0, σ² = (16, 0)
    const r = layerSpread(30, 2, [RANK0, none, one, wide, null], [GLOBAL], [0, 0, 0, 0, 0], null, EPS);
    expect(r.n).toEqual([2, 0, 1, 2, null]);
    expect(r.meanDev[1]).toBeNull();
    expect(r.meanDev[2]).toBeNull();
    expect(r.meanDev[4]).toBeNull();
    expect(r.meanDev[3]).toBeCloseTo(0, 12);
    const lw = (Math.log(16.01 / 5.01) + Math.log(0.01 / 1.01)) / 2;
    expect(r.logVar[3]).toBeCloseTo(lw, 12);
    expect(r.meanDevMean).toBeCloseTo(r.meanDev[0]! / 2, 12);
    expect(r.meanDevMax).toBeCloseTo(r.meanDev[0]!, 12);
    expect(r.logVarMean).toBeCloseTo((r.logVar[0]! + lw) / 2, 12);
    expect(r.logVarMaxAbs).toBeCloseTo(Math.max(Math.abs(r.logVar[0]!), Math.abs(lw)), 12);
    expect(r.runningMeanGap).toBeNull();
    expect(r).toMatchObject({ type: "bn", step: 30, layer: 2, channels: 2 });
  });
});

const CONV: RunConventions = { eps: EPS, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: "" };

class MemPeer implements Peer {
  constructor(readonly label: string) {}
  send(): void {}
  close(): void {}
}

describe("BnSpreadTracker on a real Coordinator", () => {
  it("emits, every N steps after the gradient round, the hand-computed spread and the running statistics from before the step's update", async () => {
    const coord = new Coordinator({ worldSize: 2, token: "t", conventions: CONV, roundTimeoutMs: 5_000 });
    const records: BnSpreadRecord[] = [];
    coord.observers.push(new BnSpreadTracker(coord, (r) => records.push(r), 2));
    const peers = [new MemPeer("a"), new MemPeer("b")];
    peers.forEach((p, rank) => coord.receive(p, encode({ type: "hello", version: PROTOCOL_VERSION, rank, worldSize: 2, token: "t", conventions: CONV })));
    const extra = new Float64Array(GradExtra.length);
    for (let step = 0; step < 3; step++) {
      [RANK0, RANK1].forEach((m, r) => {
        const data = new Float64Array(4);
        data.set(m.mean, 0);
        data.set(m.m2, 2);
        coord.receive(peers[r]!, encode({ type: "contrib", step, phase: "fwd", layer: 0, count: m.count, data }));
      });
      for (let r = 0; r < 2; r++) coord.receive(peers[r]!, encode({ type: "contrib", step, phase: "bwd", layer: 0, count: 2, data: new Float64Array(4) }));
      for (let r = 0; r < 2; r++) coord.receive(peers[r]!, encode({ type: "contrib", step, phase: "grad", layer: -1, count: 2, data: new Float32Array(3), extra }));
    }
    await new Promise((r) => setImmediate(r));
    expect(coord.failed).toBeNull();
    expect(records.map((r) => r.step)).toEqual([1, 2]);
    const dev = (2 / Math.sqrt(5.01) + 1 / Math.sqrt(1.01)) / 2;
    for (const r of records) {
      expect(r.n).toEqual([2, 2]);
      expect(r.meanDev[0]).toBeCloseTo(dev, 12);
      expect(r.meanDev[1]).toBeCloseTo(dev, 12);
    }
    // Step 1 (the first round): the initial running statistics (mean 0, var 1), as in the hand case above.
    expect(records[0]!.runningMeanGap).toBeCloseTo((4 / Math.sqrt(5.01) + 1 / Math.sqrt(1.01)) / 2, 12);
    // Step 2 (the second round): after one torch-style update (momentum 0.1, unbiased var 4/3·σ²) from the first.
    const m = [0.1 * 4, 0.1 * 1];
    const v = [0.9 + 0.1 * (20 / 3), 0.9 + 0.1 * (4 / 3)];
    expect(records[1]!.runningMeanGap).toBeCloseTo((Math.abs(m[0]! - 4) / Math.sqrt(5.01) + Math.abs(m[1]! - 1) / Math.sqrt(1.01)) / 2, 12);
    expect(records[1]!.runningLogVar).toBeCloseTo((Math.log((v[0]! + EPS) / 5.01) + Math.log((v[1]! + EPS) / 1.01)) / 2, 12);
    coord.shutdown("test over");
  });
});
