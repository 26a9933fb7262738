// The thread transport's worker end (worker/port-link.ts) against the real
// in-process coordinator (coordinator/threads.ts), in one thread: a result decoded
// into the caller's buffer gives its frame's memory to the next contribution, a
// result comes back in the memory of the worker's own contribution (so the
// coordinator's thread keeps none of it), and nothing the caller was handed
// points into memory that is reused.

import { describe, expect, it } from "vitest";
import type { CompletedRound } from "../coordinator/coordinator-api.js";
import { startThreadCoordinator } from "../coordinator/threads.js";
import { CoordinatorClient } from "../worker/client.js";
import { portLink } from "../worker/port-link.js";

const conventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "local", training: "" } as const;

describe("gradient rounds over a MessagePort", () => {
  it("return each round's own sums and extras, bit for bit, while the result frames' memory carries the next contributions", async () => {
    const tc = startThreadCoordinator({ worldSize: 1, token: "", conventions: null, roundTimeoutMs: 10_000 });
    const client = await CoordinatorClient.overLink(portLink(tc.connect("t0")), {
      url: "in-process", rank: 0, worldSize: 1, token: "", conventions, connectTimeoutMs: 10_000, roundTimeoutMs: 10_000, maxPayload: 0,
    });
    expect(client.reusesResultFrames).toBe(true);
    const n = 1001;
    const into = new Float32Array(n);
    const extras: Float64Array[] = [];
    // Breaking the observers' contract on purpose: keep a contribution past its round, to see its memory leave.
    const kept: (Float64Array | Float32Array)[] = [];
    tc.coordinator.observers.push({ afterRound: (r: CompletedRound) => kept.push(r.parts[0]!.data) });
    for (let step = 0; step < 4; step++) {
      const grads = new Float32Array(n).map((_, i) => Math.sin(i + 10 * step));
      grads[7] = -0;
      const r = await client.roundInto(into, step, "grad", -1, 8, grads, Float64Array.of(step, step + 0.5));
      expect(r.data).toBe(into);
      // One worker: its own float32 values, −0 summed to +0.
      const want = grads.map((v) => 0 + v);
      expect(Array.from(into)).toEqual(Array.from(want));
      expect(Object.is(into[7], 0)).toBe(true);
      extras.push(r.extra!);
      // The result went back in this contribution's memory: transferred, so detached on the coordinator's side.
      expect(kept[step]!.length).toBe(0);
    }
    // Every extra handed out is still its round's, though later rounds reused the frames it arrived in.
    expect(extras.map((e) => Array.from(e))).toEqual([0, 1, 2, 3].map((s) => [s, s + 0.5]));
    await client.bye();
    await tc.close();
  });

  it("carry a BN result back in the larger memory of a 2-rank block's contribution, while results handed out earlier stay intact", async () => {
    const tc = startThreadCoordinator({ worldSize: 2, token: "", conventions: null, roundTimeoutMs: 10_000 });
    const client = await CoordinatorClient.overLink(portLink(tc.connect("t0")), {
      url: "in-process", rank: 0, ranks: 2, worldSize: 2, token: "", conventions: { ...conventions, norm: "sync" }, connectTimeoutMs: 10_000, roundTimeoutMs: 10_000, maxPayload: 0,
    });
    const kept: (Float64Array | Float32Array)[] = [];
    tc.coordinator.observers.push({ afterRound: (r: CompletedRound) => kept.push(r.parts[0]!.data) });
    const results: Float64Array[] = [];
    for (let step = 0; step < 5; step++) {
      // Two ranks of 4 samples, the same [mean(3), M2(3)] each: the merge is exact, mean as sent, var = M2 / 4.
      const seg = [1 + step, -2, 0.5, 8, 4 * (step + 1), 0];
      const r = await client.round(step, "fwd", 0, 4, Float64Array.from([...seg, ...seg]));
      expect(r.count).toBe(8);
      results.push(r.data as Float64Array);
      expect(kept[step]!.length, "the contribution's memory went back to the worker").toBe(0);
    }
    // Every result is its own round's, though each later one arrived in memory a contribution had used.
    expect(results.map((d) => Array.from(d))).toEqual([0, 1, 2, 3, 4].map((s) => [1 + s, -2, 0.5, 2, s + 1, 0]));
    await tc.close();
  });
});
