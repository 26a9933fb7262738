// The thread transport's worker end (worker/port-link.ts) against the real
// in-process coordinator (coordinator/threads.ts), in one thread: a result decoded
// into the caller's buffer gives its frame's memory to the next contribution, and
// nothing the caller was handed points into that memory.

import { describe, expect, it } from "vitest";
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
    }
    // Every extra handed out is still its round's, though later rounds reused the frames it arrived in.
    expect(extras.map((e) => Array.from(e))).toEqual([0, 1, 2, 3].map((s) => [s, s + 0.5]));
    await client.bye();
    await tc.close();
  });
});
