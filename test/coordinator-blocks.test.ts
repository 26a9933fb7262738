// The coordinator with worker processes that host blocks of consecutive ranks
// (--ranks-per-proc), driven without sockets: a block's BN segments reduce
// exactly as its ranks would one process each, grad rounds take one part per
// process, every result goes once to each process, and a lost process loses
// all of its ranks, named in the error.
import { afterEach, describe, expect, it } from "vitest";
import { Coordinator, type CompletedRound } from "../coordinator/coordinator.js";
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

/** A coordinator of `world` ranks and one peer per block: blocks = [first, size] pairs. */
function setup(world: number, blocks: [number, number][], opts: Partial<{ norm: string; onWorkerLoss: "abort" | "continue"; roundTimeoutMs: number }> = {}) {
  const coord = new Coordinator({
    worldSize: world,
    token: "t",
    conventions: { ...CONV, norm: opts.norm ?? "sync" },
    roundTimeoutMs: opts.roundTimeoutMs ?? 5_000,
    onWorkerLoss: opts.onWorkerLoss ?? "abort",
  });
  live.push(coord);
  const peers = blocks.map(([first, size]) => {
    const p = new MemPeer(`p${first}`);
    hello(coord, p, first, size, world, opts.norm ?? "sync");
    return p;
  });
  return { coord, peers };
}

function hello(coord: Coordinator, p: MemPeer, rank: number, ranks: number, world: number, norm = "sync") {
  coord.receive(p, encode({ type: "hello", version: PROTOCOL_VERSION, rank, ranks, worldSize: world, token: "t", conventions: { ...CONV, norm } }));
}

function contrib(coord: Coordinator, p: MemPeer, c: Omit<Contribution, "type">) {
  coord.receive(p, encode({ type: "contrib", ...c }));
}

/** [mean, M2] per channel of one rank's values, two channels: values and values·3 − 1. */
function moments(values: number[]): number[] {
  const out: number[] = [];
  for (const f of [(v: number) => v, (v: number) => v * 3 - 1]) {
    const xs = values.map(f);
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    out.push(mean, xs.reduce((a, v) => a + (v - mean) ** 2, 0));
  }
  // layout [mean(C), M2(C)]
  return [out[0]!, out[2]!, out[1]!, out[3]!];
}

/** Per-rank samples: irregular so that merge order matters in the last bits. */
const SLICES = [
  [0.1, 0.7],
  [1e3 + 0.3, 1e3 - 0.2],
  [-5.5, 2.25],
  [1 / 3, 2 / 3],
  [7.125, 7.1],
  [-0.001, 0.002],
];

function fwdOfRanks(ranks: number[], step = 0, layer = 0): Omit<Contribution, "type"> {
  return { step, phase: "fwd", layer, count: 2, data: Float64Array.from(ranks.flatMap((r) => moments(SLICES[r]!))) };
}

describe("coordinator with processes hosting blocks of ranks", () => {
  it("merges a block's per-rank segments in rank order: the result is bit-identical to one process per rank", () => {
    const single = setup(6, [0, 1, 2, 3, 4, 5].map((r) => [r, 1]));
    for (const r of [5, 2, 0, 4, 1, 3]) contrib(single.coord, single.peers[r]!, fwdOfRanks([r]));
    const want = single.peers[0]!.results()[0]!;

    const packed = setup(6, [[0, 4], [4, 2]]);
    contrib(packed.coord, packed.peers[1]!, fwdOfRanks([4, 5]));
    expect(packed.peers[0]!.results()).toHaveLength(0);
    contrib(packed.coord, packed.peers[0]!, fwdOfRanks([0, 1, 2, 3]));
    for (const p of packed.peers) {
      expect(p.results()).toHaveLength(1); // once per process, not once per rank
      const got = p.results()[0]!;
      expect(got.count).toBe(12);
      expect(Array.from(got.data)).toEqual(Array.from(want.data));
    }
  });

  it("takes one gradient contribution per process for all its ranks and adds it once", () => {
    const { coord, peers } = setup(5, [[0, 3], [3, 2]]);
    contrib(coord, peers[0]!, { step: 0, phase: "grad", layer: -1, count: 6, data: Float32Array.of(1, 2), extra: Float64Array.of(0.5) });
    expect(peers[0]!.results()).toHaveLength(0);
    contrib(coord, peers[1]!, { step: 0, phase: "grad", layer: -1, count: 4, data: Float32Array.of(10, 20), extra: Float64Array.of(0.25) });
    for (const p of peers) {
      expect(p.results()).toHaveLength(1);
      const r = p.results()[0]!;
      expect(Array.from(r.data)).toEqual([11, 22]);
      expect(r.count).toBe(10);
      expect(Array.from(r.extra!)).toEqual([0.75]);
    }
    expect(coord.failed).toBeNull();
  });

  it("shows observers each rank's BN segment, and one gradient part per process at its first rank", () => {
    const { coord, peers } = setup(4, [[0, 2], [2, 2]]);
    const seen: { phase: string; parts: (number | null)[] }[] = [];
    coord.observers.push({
      afterRound: (r: CompletedRound) => seen.push({ phase: r.phase, parts: r.parts.map((p) => (p ? p.data[0]! : null)) }),
    });
    contrib(coord, peers[0]!, fwdOfRanks([0, 1]));
    contrib(coord, peers[1]!, fwdOfRanks([2, 3]));
    contrib(coord, peers[0]!, { step: 0, phase: "grad", layer: -1, count: 4, data: Float32Array.of(1) });
    contrib(coord, peers[1]!, { step: 0, phase: "grad", layer: -1, count: 4, data: Float32Array.of(2) });
    expect(seen[0]!.parts).toEqual([0, 1, 2, 3].map((r) => moments(SLICES[r]!)[0]));
    expect(seen[1]).toEqual({ phase: "grad", parts: [1, null, 2, null] });
    expect(coord.blockOf(3)).toEqual({ first: 2, size: 2 });
  });

  it("reduces group:K rounds of blocks inside one group with the other blocks of that group", () => {
    const { coord, peers } = setup(4, [[0, 1], [1, 1], [2, 2]], { norm: "group:2" });
    contrib(coord, peers[0]!, fwdOfRanks([0]));
    contrib(coord, peers[1]!, fwdOfRanks([1]));
    expect(peers[0]!.results()).toHaveLength(1);
    expect(peers[2]!.results()).toHaveLength(0);
    expect(coord.failed).toBeNull();
  });

  it("refuses BN rounds from a block whose ranks lie in two statistics groups, naming the ranks", () => {
    const { coord, peers } = setup(4, [[0, 1], [1, 2], [3, 1]], { norm: "group:2" });
    contrib(coord, peers[1]!, fwdOfRanks([1, 2]));
    expect(coord.failed?.code).toBe(ErrorCode.BadMessage);
    expect(coord.failed?.message).toMatch(/ranks 1–2 sent a BN round, but its ranks lie in more than one statistics group/);
    expect(coord.failed?.context.rank).toEqual([1, 2]);
  });

  it("refuses a block that overlaps a taken rank or runs past the world, naming the ranks", () => {
    const { coord } = setup(4, [[0, 2]]);
    const overlap = new MemPeer("overlap");
    hello(coord, overlap, 1, 2, 4);
    expect(overlap.errors()[0]).toMatchObject({ code: ErrorCode.DuplicateRank, rank: [1, 2] });
    expect(overlap.errors()[0]!.message).toMatch(/rank 1 is already taken/);
    const past = new MemPeer("past");
    hello(coord, past, 2, 3, 4);
    expect(past.errors()[0]).toMatchObject({ code: ErrorCode.Rank });
    expect(past.errors()[0]!.message).toMatch(/ranks 2–4 of world size 4/);
    const ok = new MemPeer("ok");
    hello(coord, ok, 2, 2, 4);
    expect(ok.received[0]).toMatchObject({ type: "welcome", rank: 2, ranks: 2 });
  });

  it("fails the run naming every rank of a process that disconnects", () => {
    const { coord, peers } = setup(4, [[0, 2], [2, 2]]);
    contrib(coord, peers[0]!, fwdOfRanks([0, 1]));
    coord.disconnected(peers[1]!, "close code 1006");
    expect(coord.failed?.code).toBe(ErrorCode.WorkerLost);
    expect(coord.failed?.context.rank).toEqual([2, 3]);
    expect(coord.failed?.message).toMatch(/process of ranks 2–3 disconnected/);
    expect(peers[0]!.errors()).toHaveLength(1); // told once, not once per rank
  });

  it("in elastic mode loses all ranks of a lost process and redoes the step with the others exactly", () => {
    const { coord, peers } = setup(6, [[0, 2], [2, 2], [4, 2]], { onWorkerLoss: "continue" });
    contrib(coord, peers[0]!, fwdOfRanks([0, 1]));
    coord.disconnected(peers[1]!, "close code 1006");
    expect(coord.failed).toBeNull();
    expect(coord.lostWorkers.map((l) => l.rank)).toEqual([2, 3]);
    for (const p of [peers[0]!, peers[2]!]) {
      const resyncs = p.received.filter((m) => m.type === "resync");
      expect(resyncs).toEqual([expect.objectContaining({ active: [0, 1, 4, 5], lost: [2, 3], step: 0 })]);
      coord.receive(p, encode({ type: "resync-ack", generation: (resyncs[0] as { generation: number }).generation }));
    }
    contrib(coord, peers[2]!, fwdOfRanks([4, 5]));
    contrib(coord, peers[0]!, fwdOfRanks([0, 1]));
    const single = setup(4, [0, 1, 2, 3].map((r) => [r, 1]));
    [0, 1, 4, 5].forEach((r, i) => contrib(single.coord, single.peers[i]!, fwdOfRanks([r])));
    expect(Array.from(peers[2]!.results()[0]!.data)).toEqual(Array.from(single.peers[0]!.results()[0]!.data));
    // A lost rank cannot come back, alone or in a block.
    const back = new MemPeer("back");
    hello(coord, back, 2, 2, 6);
    expect(back.errors()[0]).toMatchObject({ code: ErrorCode.WorkerLost });
  });

  it("finishes the run when each process says bye once for all its ranks", () => {
    const { coord, peers } = setup(4, [[0, 3], [3, 1]]);
    let done = 0;
    coord.events.onDone = () => done++;
    coord.receive(peers[0]!, encode({ type: "bye" }));
    expect(done).toBe(0);
    coord.receive(peers[1]!, encode({ type: "bye" }));
    expect(done).toBe(1);
    coord.disconnected(peers[0]!, "normal");
    expect(coord.failed).toBeNull();
  });

  it("names every missing rank of a process that misses a deadline", async () => {
    const { coord, peers } = setup(4, [[0, 2], [2, 2]], { roundTimeoutMs: 50 });
    contrib(coord, peers[0]!, fwdOfRanks([0, 1]));
    await new Promise((r) => setTimeout(r, 150));
    expect(coord.failed?.code).toBe(ErrorCode.Timeout);
    expect(coord.failed?.context.rank).toEqual([2, 3]);
  });
});
