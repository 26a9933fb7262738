// The coordinator's logic driven without sockets: in-memory peers feed it bytes
// and record what it sends back.
import { afterEach, describe, expect, it } from "vitest";
import { Coordinator } from "../coordinator/coordinator.js";
import { MemPeer } from "./mem-peer.js";
import { encode } from "../shared/codec.js";
import type { RunConventions } from "../shared/config.js";
import { ErrorCode } from "../shared/errors.js";
import { PROTOCOL_VERSION, type Contribution } from "../shared/protocol.js";

const CONV: RunConventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: "" };

const live: Coordinator[] = [];
afterEach(() => {
  for (const c of live.splice(0)) c.shutdown("test over");
});

function setup(world: number, opts: Partial<{ token: string; norm: string; roundTimeoutMs: number; onWorkerLoss: "abort" | "continue" }> = {}) {
  const coord = new Coordinator({
    worldSize: world,
    token: opts.token ?? "secret",
    conventions: { ...CONV, norm: opts.norm ?? "sync" },
    roundTimeoutMs: opts.roundTimeoutMs ?? 5_000,
    onWorkerLoss: opts.onWorkerLoss ?? "abort",
  });
  live.push(coord);
  const peers = Array.from({ length: world }, (_, r) => new MemPeer(`p${r}`));
  peers.forEach((p, r) => hello(coord, p, r, world, opts.token ?? "secret", opts.norm ?? "sync"));
  return { coord, peers };
}

function hello(coord: Coordinator, p: MemPeer, rank: number, world: number, token = "secret", norm = "sync", extra: Partial<RunConventions> = {}) {
  coord.receive(p, encode({ type: "hello", version: PROTOCOL_VERSION, rank, worldSize: world, token, conventions: { ...CONV, norm, ...extra } }));
}

function contrib(coord: Coordinator, p: MemPeer, c: Omit<Contribution, "type">) {
  coord.receive(p, encode({ type: "contrib", ...c }));
}

/** A fwd contribution from one slice of values (one channel). */
function fwdOf(values: number[], step = 0, layer = 0): Omit<Contribution, "type"> {
  const n = values.length;
  const mean = n ? values.reduce((a, b) => a + b, 0) / n : 0;
  const m2 = values.reduce((a, v) => a + (v - mean) ** 2, 0);
  return { step, phase: "fwd", layer, count: n, data: Float64Array.of(mean, m2) };
}

describe("coordinator admission", () => {
  it("welcomes a worker with the right version, token, rank and conventions", () => {
    const { peers } = setup(2);
    expect(peers[0]!.received[0]).toMatchObject({ type: "welcome", rank: 0, worldSize: 2 });
  });

  it("refuses a wrong token, saying so, and closes the connection", () => {
    const { coord } = setup(0 + 1, {});
    const p = new MemPeer("intruder");
    hello(coord, p, 0, 1, "wrong");
    expect(p.errors()[0]).toMatchObject({ code: ErrorCode.Token });
    expect(p.errors()[0]!.message).toMatch(/wrong run token/);
    expect(p.closed).not.toBeNull();
  });

  it("refuses a duplicate rank and a rank outside the world, naming them", () => {
    const coord = new Coordinator({ worldSize: 2, token: "", conventions: CONV, roundTimeoutMs: 1000 });
    live.push(coord);
    const a = new MemPeer("a");
    const b = new MemPeer("b");
    const c = new MemPeer("c");
    hello(coord, a, 1, 2, "");
    hello(coord, b, 1, 2, "");
    hello(coord, c, 2, 2, "");
    expect(b.errors()[0]).toMatchObject({ code: ErrorCode.DuplicateRank });
    expect(b.errors()[0]!.message).toMatch(/rank 1 is already taken/);
    expect(c.errors()[0]).toMatchObject({ code: ErrorCode.Rank });
    expect(c.errors()[0]!.message).toMatch(/rank 2 of world size 2/);
    expect(a.closed).toBeNull();
  });

  it("refuses a different protocol version and different conventions, naming the field", () => {
    const coord = new Coordinator({ worldSize: 2, token: "", conventions: CONV, roundTimeoutMs: 1000 });
    live.push(coord);
    const v = new MemPeer("v");
    coord.receive(v, encode({ type: "hello", version: PROTOCOL_VERSION + 1, rank: 0, worldSize: 2, token: "", conventions: CONV }));
    expect(v.errors()[0]).toMatchObject({ code: ErrorCode.Version });
    const e = new MemPeer("e");
    hello(coord, e, 0, 2, "", "sync", { eps: 1e-3 });
    expect(e.errors()[0]).toMatchObject({ code: ErrorCode.Conventions });
    expect(e.errors()[0]!.message).toMatch(/eps: run has 0.00001, worker has 0.001/);
    const t = new MemPeer("t");
    hello(coord, t, 0, 2, "", "sync", { training: JSON.stringify({ lr: 0.1 }) });
    expect(t.errors()[0]!.message).toMatch(/lr: run has undefined, worker has 0.1/);
  });

  it("says \"training settings differ\" for a different --lr, and keeps \"BN conventions differ\" for a different eps", () => {
    const coord = new Coordinator({ worldSize: 3, token: "", conventions: { ...CONV, training: JSON.stringify({ lr: 0.05 }) }, roundTimeoutMs: 1000 });
    live.push(coord);
    const lr = new MemPeer("lr");
    hello(coord, lr, 0, 3, "", "sync", { training: JSON.stringify({ lr: 0.1 }) });
    expect(lr.errors()[0]!.message).toMatch(/training settings differ from the run's: lr: run has 0.05, worker has 0.1/);
    expect(lr.errors()[0]!.message).not.toMatch(/BN conventions/);
    const eps = new MemPeer("eps");
    hello(coord, eps, 1, 3, "", "sync", { eps: 1e-3, training: JSON.stringify({ lr: 0.05 }) });
    expect(eps.errors()[0]!.message).toMatch(/BN conventions differ from the run's: eps: run has 0.00001, worker has 0.001$/);
    const both = new MemPeer("both");
    hello(coord, both, 2, 3, "", "sync", { momentum: 0.2, training: JSON.stringify({ lr: 0.1 }) });
    expect(both.errors()[0]!.message).toMatch(/BN conventions and training settings differ from the run's: momentum: run has 0.1, worker has 0.2; lr: run has 0.05, worker has 0.1/);
  });

  it("adopts the first worker's conventions when started without any, then holds the others to them", () => {
    const coord = new Coordinator({ worldSize: 2, token: "", conventions: null, roundTimeoutMs: 1000 });
    live.push(coord);
    const a = new MemPeer("a");
    const b = new MemPeer("b");
    hello(coord, a, 0, 2, "", "local");
    hello(coord, b, 1, 2, "", "sync");
    expect(a.last()).toMatchObject({ type: "welcome" });
    expect(b.errors()[0]!.message).toMatch(/norm: run has local, worker has sync/);
  });

  it("refuses undecodable bytes with a bad-message error", () => {
    const { coord } = setup(1);
    const p = new MemPeer("garbage");
    coord.receive(p, Uint8Array.of(0xc1, 0xff, 0x00));
    expect(p.errors()[0]).toMatchObject({ code: ErrorCode.BadMessage });
    expect(p.closed).not.toBeNull();
  });
});

describe("coordinator rounds", () => {
  it("merges in rank order, so the result does not depend on arrival order", () => {
    const slices = [[1, 2, 3], [], [10, 20], [7]];
    const results: Float64Array[] = [];
    for (const order of [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]]) {
      const { coord, peers } = setup(4);
      for (const r of order) contrib(coord, peers[r]!, fwdOf(slices[r]!));
      const res = peers[1]!.last();
      expect(res).toMatchObject({ type: "result", step: 0, phase: "fwd", layer: 0, count: 6 });
      results.push((res as { data: Float64Array }).data);
    }
    const all = slices.flat();
    const mean = all.reduce((a, b) => a + b, 0) / all.length;
    const variance = all.reduce((a, v) => a + (v - mean) ** 2, 0) / all.length;
    expect(results[0]![0]).toBeCloseTo(mean, 12);
    expect(results[0]![1]).toBeCloseTo(variance, 10);
    expect(Array.from(results[1]!)).toEqual(Array.from(results[0]!));
    expect(Array.from(results[2]!)).toEqual(Array.from(results[0]!));
  });

  it("sums gradients in float64 and returns float32, with extras and one result to everyone", () => {
    const { coord, peers } = setup(3);
    peers.forEach((p, r) => contrib(coord, p, { step: 0, phase: "grad", layer: -1, count: 2, data: Float32Array.of(r, 1), extra: Float64Array.of(r * 0.5) }));
    for (const p of peers) {
      const res = p.last() as { data: Float32Array; extra: Float64Array; count: number };
      expect(Array.from(res.data)).toEqual([3, 3]);
      expect(res.data).toBeInstanceOf(Float32Array);
      expect(Array.from(res.extra)).toEqual([1.5]);
      expect(res.count).toBe(6);
    }
  });

  it("keeps the authoritative running statistics from the global batch, committed when the step's gradient round completes", () => {
    const { coord, peers } = setup(2);
    contrib(coord, peers[0]!, fwdOf([1, 3]));
    contrib(coord, peers[1]!, fwdOf([5, 7]));
    expect(coord.runningStats.layers.get(0)).toBeUndefined();
    for (const p of peers) contrib(coord, p, { step: 0, phase: "grad", layer: -1, count: 2, data: new Float32Array(1) });
    const s = coord.runningStats.layers.get(0)!;
    // mean 4, biased var 5, unbiased 20/3: r = 0.9·r + 0.1·batch
    expect(s.mean[0]).toBeCloseTo(0.4, 14);
    expect(s.var[0]).toBeCloseTo(0.9 + 0.1 * (20 / 3), 14);
    expect(s.tracked).toBe(1);
  });

  it("updates a layer configured with its own momentum (an ONNX node's) with that one, the others with the run's", () => {
    const { coord, peers } = setup(2);
    coord.runningStats.configureLayer(1, { eps: 1e-5, momentum: 0.01, momentumStyle: "torch", unbiasedRunningVar: true });
    for (const layer of [0, 1]) {
      contrib(coord, peers[0]!, fwdOf([1, 3], 0, layer));
      contrib(coord, peers[1]!, fwdOf([5, 7], 0, layer));
    }
    for (const p of peers) contrib(coord, p, { step: 0, phase: "grad", layer: -1, count: 2, data: new Float32Array(1) });
    expect(coord.runningStats.layers.get(0)!.mean[0]).toBeCloseTo(0.4, 14); // 0.9·0 + 0.1·4
    expect(coord.runningStats.layers.get(1)!.mean[0]).toBeCloseTo(0.04, 14); // 0.99·0 + 0.01·4
    expect(coord.runningStats.layers.get(1)!.var[0]).toBeCloseTo(0.99 + 0.01 * (20 / 3), 14);
  });

  it("fails the round for everyone when a worker skips to another layer, naming rank, step, layer and phase", () => {
    const { coord, peers } = setup(2);
    contrib(coord, peers[0]!, fwdOf([1, 2], 4, 1));
    contrib(coord, peers[1]!, fwdOf([1, 2], 4, 2));
    for (const p of peers) {
      const e = p.errors()[0]!;
      expect(e.code).toBe(ErrorCode.RoundKey);
      expect(e.message).toMatch(/rank 1, step 4, layer 2, phase fwd/);
      expect(e.message).toMatch(/waiting for its step 4 fwd layer 1/);
    }
  });

  it("fails on a channel count that differs from the other workers'", () => {
    const { coord, peers } = setup(2);
    contrib(coord, peers[0]!, { step: 0, phase: "fwd", layer: 0, count: 2, data: new Float64Array(4) });
    contrib(coord, peers[1]!, { step: 0, phase: "fwd", layer: 0, count: 2, data: new Float64Array(6) });
    const e = peers[0]!.errors()[0]!;
    expect(e.code).toBe(ErrorCode.Shape);
    expect(e.message).toMatch(/3 channels, expected 2/);
    expect(e.rank).toBe(1);
  });

  it("stops the run when the replicas' parameter checksums differ, naming the odd rank", () => {
    const { coord, peers } = setup(3);
    peers.forEach((p, r) => contrib(coord, p, { step: 50, phase: "grad", layer: -1, count: 2, data: new Float32Array(1), checksum: r === 2 ? 7 : 5 }));
    const e = peers[0]!.errors()[0]!;
    expect(e.code).toBe(ErrorCode.Diverged);
    expect(e.message).toMatch(/checksum of rank\(s\) 2 differs from rank 0's/);
  });

  it("fails on NaN or Inf statistics, naming the sender", () => {
    const { coord, peers } = setup(2);
    contrib(coord, peers[1]!, { step: 2, phase: "bwd", layer: 0, count: 2, data: Float64Array.of(1, Number.POSITIVE_INFINITY) });
    const e = peers[0]!.errors()[0]!;
    expect(e.code).toBe(ErrorCode.NonFinite);
    expect(e.message).toMatch(/rank 1, step 2, layer 0, phase bwd/);
  });

  it("fails when the global batch has one value per channel in training", () => {
    const { coord, peers } = setup(2);
    contrib(coord, peers[0]!, fwdOf([5]));
    contrib(coord, peers[1]!, fwdOf([]));
    expect(peers[0]!.errors()[0]!.code).toBe(ErrorCode.SingleValue);
  });

  it("names the ranks that missed the deadline", async () => {
    const { coord, peers } = setup(3, { roundTimeoutMs: 50 });
    contrib(coord, peers[1]!, fwdOf([1, 2], 7, 0));
    await new Promise((r) => setTimeout(r, 120));
    const e = peers[1]!.errors()[0]!;
    expect(e.code).toBe(ErrorCode.Timeout);
    expect(e.rank).toEqual([0, 2]);
    expect(e.message).toMatch(/rank\(s\) 0,2, step 7, layer 0, phase fwd/);
  });

  it("fails every pending round at once when a worker disconnects, naming it", () => {
    const { coord, peers } = setup(3);
    contrib(coord, peers[0]!, fwdOf([1, 2], 3, 1));
    coord.disconnected(peers[2]!, "close code 1006");
    for (const p of [peers[0]!, peers[1]!]) {
      const e = p.errors()[0]!;
      expect(e.code).toBe(ErrorCode.WorkerLost);
      expect(e.message).toMatch(/rank 2, step 3, layer 1, phase fwd/);
    }
    expect(coord.failed?.code).toBe(ErrorCode.WorkerLost);
  });

  it("does not treat the disconnect of a worker that said bye as a failure", () => {
    const { coord, peers } = setup(2);
    coord.receive(peers[0]!, encode({ type: "bye" }));
    coord.disconnected(peers[0]!, "close code 1000");
    expect(coord.failed).toBeNull();
  });

  it("reduces BN rounds within contiguous groups of K workers in group mode", () => {
    const { coord, peers } = setup(4, { norm: "group:2" });
    contrib(coord, peers[0]!, fwdOf([0, 2]));
    contrib(coord, peers[2]!, fwdOf([100, 104]));
    contrib(coord, peers[1]!, fwdOf([4, 6]));
    expect(peers[0]!.last()).toMatchObject({ type: "result", count: 4 });
    expect((peers[0]!.last() as { data: Float64Array }).data[0]).toBe(3);
    expect(peers[2]!.last()).toMatchObject({ type: "welcome" });
    contrib(coord, peers[3]!, fwdOf([96, 100]));
    expect((peers[3]!.last() as { data: Float64Array }).data[0]).toBe(100);
  });

  it("lets one group run ahead into the gradient round while another is still in forward", () => {
    const { coord, peers } = setup(4, { norm: "group:2" });
    contrib(coord, peers[0]!, fwdOf([0, 2]));
    contrib(coord, peers[1]!, fwdOf([4, 6]));
    contrib(coord, peers[0]!, { step: 0, phase: "grad", layer: -1, count: 2, data: new Float32Array(2) });
    contrib(coord, peers[2]!, fwdOf([1, 2]));
    expect(coord.failed).toBeNull();
  });
});

describe("coordinator layer names (protocol LayerNames)", () => {
  it("keeps the first worker's BN layer names and ignores later lists, the run going on", () => {
    const { coord, peers } = setup(2);
    expect(coord.layerNames).toBeNull();
    coord.receive(peers[1]!, encode({ type: "layers", names: ["bn1", "layer1.0.bn1"] }));
    coord.receive(peers[0]!, encode({ type: "layers", names: ["other"] }));
    expect(coord.layerNames).toEqual(["bn1", "layer1.0.bn1"]);
    expect(coord.failed).toBeNull();
    // The run goes on: the list is not a round.
    contrib(coord, peers[0]!, fwdOf([1, 2]));
    contrib(coord, peers[1]!, fwdOf([3]));
    expect(peers[0]!.last()).toMatchObject({ type: "result", phase: "fwd", count: 3 });
  });

  it("fails the run on a list beyond the bounds (4,096 names, 200 characters), naming the rank", () => {
    for (const names of [Array.from({ length: 4097 }, () => "x"), ["ok", "y".repeat(201)], [1, 2]]) {
      const { coord, peers } = setup(2);
      coord.receive(peers[1]!, encode({ type: "layers", names } as never));
      expect(coord.layerNames).toBeNull();
      expect(coord.failed?.code).toBe(ErrorCode.BadMessage);
      expect(coord.failed?.message).toMatch(/rank 1/);
      expect(coord.failed?.message).toMatch(/layers/);
    }
  });
});

describe("coordinator in elastic mode (--on-worker-loss continue)", () => {
  it("drops a lost worker, voids the open round, and tells the others to redo the step without it", () => {
    const { coord, peers } = setup(3, { onWorkerLoss: "continue" });
    // step 0 completes with everyone
    peers.forEach((p, r) => contrib(coord, p, fwdOf([r, r + 2])));
    peers.forEach((p) => contrib(coord, p, { step: 0, phase: "grad", layer: -1, count: 2, data: new Float32Array(1) }));
    // step 1: rank 0 contributes, then rank 2 dies
    contrib(coord, peers[0]!, fwdOf([1, 2], 1));
    coord.disconnected(peers[2]!, "close code 1006");
    expect(coord.failed).toBeNull();
    for (const p of [peers[0]!, peers[1]!]) expect(p.last()).toMatchObject({ type: "resync", active: [0, 1], step: 1, lost: [2] });
    expect(coord.lostWorkers).toEqual([{ rank: 2, step: 1, reason: "disconnected (close code 1006)" }]);
  });

  it("ignores contributions sent before the resync was acknowledged, then reduces exactly over the remaining workers", () => {
    const { coord, peers } = setup(3, { onWorkerLoss: "continue" });
    contrib(coord, peers[0]!, fwdOf([1, 2], 0));
    coord.disconnected(peers[1]!, "close code 1006");
    const resync = peers[0]!.last() as { generation: number };
    // rank 2 had already sent its (now void) contribution before it saw the resync
    contrib(coord, peers[2]!, fwdOf([100, 200], 0));
    expect(peers[2]!.received.filter((m) => m.type === "result")).toHaveLength(0);
    for (const r of [0, 2]) coord.receive(peers[r]!, encode({ type: "resync-ack", generation: resync.generation }));
    contrib(coord, peers[0]!, fwdOf([1, 3], 0));
    contrib(coord, peers[2]!, fwdOf([5, 7], 0));
    const res = peers[2]!.last() as { type: string; count: number; data: Float64Array };
    expect(res.type).toBe("result");
    expect(res.count).toBe(4); // counts, not a fixed batch size: exact over the 4 remaining values
    expect(Array.from(res.data)).toEqual([4, 5]);
  });

  it("drops a worker that misses the deadline instead of failing the run", async () => {
    const { coord, peers } = setup(3, { onWorkerLoss: "continue", roundTimeoutMs: 50 });
    contrib(coord, peers[0]!, fwdOf([1, 2], 2));
    contrib(coord, peers[1]!, fwdOf([1, 2], 2));
    await new Promise((r) => setTimeout(r, 120));
    expect(coord.failed).toBeNull();
    expect(peers[2]!.closed).not.toBeNull();
    expect(peers[0]!.last()).toMatchObject({ type: "resync", active: [0, 1], lost: [2] });
    expect(coord.lostWorkers[0]!.reason).toMatch(/missed the 50 ms deadline of step 2 fwd layer 0/);
  });

  it("fails the run when the last worker is lost", () => {
    const { coord, peers } = setup(1, { onWorkerLoss: "continue" });
    coord.disconnected(peers[0]!, "close code 1006");
    expect(coord.failed?.code).toBe(ErrorCode.WorkerLost);
  });
});

describe("coordinator join window (--join-timeout)", () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  /** A coordinator of `world` ranks with a 50 ms round deadline and the given join window; only `joined` ranks say hello. */
  function windowed(world: number, joinWindowMs: number, joined: number[], onWorkerLoss: "abort" | "continue" = "abort") {
    const coord = new Coordinator({ worldSize: world, token: "secret", conventions: CONV, roundTimeoutMs: 50, joinWindowMs, onWorkerLoss });
    live.push(coord);
    const peers = Array.from({ length: world }, (_, r) => new MemPeer(`p${r}`));
    for (const r of joined) hello(coord, peers[r]!, r, world);
    return { coord, peers };
  }

  it("tells each joining worker how long the window is still open, and nothing without a window", () => {
    const { peers } = windowed(2, 60_000, [0, 1]);
    const w = peers[0]!.received[0] as { type: string; joinWaitMs?: number };
    expect(w.type).toBe("welcome");
    expect(w.joinWaitMs).toBeGreaterThan(59_000);
    expect(w.joinWaitMs).toBeLessThanOrEqual(60_000);
    const plain = setup(2);
    expect(plain.peers[0]!.received[0]).not.toHaveProperty("joinWaitMs");
  });

  it("holds a round for a rank that has not joined past the round deadline, then gives it a whole deadline from its join", async () => {
    const { coord, peers } = windowed(3, 2_000, [0, 1]);
    contrib(coord, peers[0]!, fwdOf([1, 2]));
    contrib(coord, peers[1]!, fwdOf([3, 4]));
    await sleep(150); // three round deadlines
    expect(coord.failed).toBeNull();
    hello(coord, peers[2]!, 2, 3);
    await sleep(20);
    contrib(coord, peers[2]!, fwdOf([5, 6]));
    for (const p of peers) expect(p.results()).toHaveLength(1);
    expect(Array.from(peers[0]!.results()[0]!.data)).toEqual([3.5, 17.5 / 6]); // mean and biased variance of 1..6
  });

  it("fails a rank that joined late and then missed the round deadline, saying so, before the window closes", async () => {
    const { coord, peers } = windowed(3, 5_000, [0, 1]);
    contrib(coord, peers[0]!, fwdOf([1, 2], 0, 0));
    contrib(coord, peers[1]!, fwdOf([3, 4], 0, 0));
    await sleep(80);
    hello(coord, peers[2]!, 2, 3);
    await sleep(150);
    const e = peers[0]!.errors()[0]!;
    expect(e.code).toBe(ErrorCode.Timeout);
    expect(e.rank).toEqual([2]);
    expect(e.message).toMatch(/round deadline of 50 ms passed without a contribution from rank\(s\) 2: \(frozen, overloaded or crashed\?\)/);
  });

  it("does not hold a round for a rank that joined and is late", async () => {
    const { coord, peers } = windowed(3, 5_000, [0, 1, 2]);
    contrib(coord, peers[0]!, fwdOf([1, 2], 4, 1));
    contrib(coord, peers[1]!, fwdOf([3, 4], 4, 1));
    await sleep(150);
    expect(coord.failed?.code).toBe(ErrorCode.Timeout);
    expect(peers[0]!.errors()[0]!.message).toMatch(/rank\(s\) 2, step 4, layer 1, phase fwd\] round deadline of 50 ms passed/);
  });

  it("fails at the window's end, naming the window and the rank that never joined", async () => {
    const { coord, peers } = windowed(2, 300, [0]);
    contrib(coord, peers[0]!, fwdOf([1, 2]));
    await sleep(150);
    expect(coord.failed).toBeNull();
    await sleep(300);
    const e = peers[0]!.errors()[0]!;
    expect(e.code).toBe(ErrorCode.Timeout);
    expect(e.rank).toEqual([1]);
    expect(e.message).toMatch(/the 300 ms join window passed without a contribution from rank\(s\) 1: rank 1 never joined \(not started/);
  });

  it("drops a rank that never joined by the window's end in elastic mode, and the others go on", async () => {
    const { coord, peers } = windowed(3, 300, [0, 1], "continue");
    contrib(coord, peers[0]!, fwdOf([1, 2]));
    contrib(coord, peers[1]!, fwdOf([3, 4]));
    await sleep(150);
    expect(coord.lostWorkers).toHaveLength(0);
    await sleep(300);
    expect(coord.failed).toBeNull();
    expect(peers[0]!.last()).toMatchObject({ type: "resync", active: [0, 1], lost: [2] });
    expect(coord.lostWorkers[0]!.reason).toMatch(/had not joined by the end of the 300 ms join window, during step 0 fwd layer 0 \(rank 2 never joined/);
  });
});

