// SegmentedNorm's fused path (worker/nn/segmented-fused.ts) against the copies one
// by one: two processes' blocks of R ranks (two clients of this thread) on the real
// in-process coordinator, sync BN over their 2R ranks, several steps. y, dx, dγ and
// dβ (float32 and their float64 sums), and every copy's running statistics, bit for
// bit, on the native and the TypeScript passes; the path is taken exactly where it
// applies. Whole runs with it (2 ranks per process against 1): ranks-per-proc.test.ts.

import { afterEach, describe, expect, it } from "vitest";
import { startThreadCoordinator } from "../coordinator/threads.js";
import { Rng } from "../shared/rng.js";
import { BlockSync } from "../worker/block-sync.js";
import { CoordinatorClient } from "../worker/client.js";
import { BatchNorm } from "../worker/nn/batchnorm.js";
import { setKernelBackend, type KernelBackend } from "../worker/nn/kernels/backend.js";
import { disableNative } from "../worker/nn/kernels/native.js";
import { SegmentedNorm, useFusedBlockNorm } from "../worker/nn/segmented.js";
import { portLink } from "../worker/port-link.js";
import { expectBits } from "./step-kernels.js";

const off = process.env.SYNCBN_NATIVE === "off";
if (off) disableNative("SYNCBN_NATIVE=off");
const BACKENDS: KernelBackend[] = off ? ["js"] : ["native", "js"];

const R = 3; // ranks per block
const B = 2; // samples per rank
const SHAPE = [5, 3, 4]; // C, H, W
const BN = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true } as const;
const CONVENTIONS = { ...BN, norm: "sync", training: "" } as const;

afterEach(() => {
  useFusedBlockNorm(true);
  setKernelBackend("wasm");
});

interface Block {
  norm: SegmentedNorm;
  clock: { step: number };
  client: CoordinatorClient;
}

/** Two blocks of R ranks (ranks 0..R−1 and R..2R−1) on one in-process coordinator, sync over all 2R. */
async function twoBlocks(groupSize = 2 * R): Promise<{ blocks: Block[]; close(): Promise<void> }> {
  const tc = startThreadCoordinator({ worldSize: 2 * R, token: "", conventions: null, roundTimeoutMs: 10_000 });
  const blocks = await Promise.all(
    [0, R].map(async (first) => {
      const client = await CoordinatorClient.overLink(portLink(tc.connect(`block ${first}`)), {
        url: "in-process", rank: first, ranks: R, worldSize: 2 * R, token: "", conventions: CONVENTIONS, connectTimeoutMs: 10_000, roundTimeoutMs: 10_000, maxPayload: 0,
      });
      const clock = { step: 0 };
      const sync = new BlockSync(client, first, R, groupSize, clock);
      const norm = new SegmentedNorm(sync.facades.map((f) => new BatchNorm("bn", 0, SHAPE, BN, f)));
      // γ, β of the layer (copy 0's), not 1 and 0.
      const rng = new Rng(3);
      for (const p of norm.params()) for (let i = 0; i < p.value.length; i++) p.value[i] = 0.5 + rng.normal();
      return { norm, clock, client };
    }),
  );
  return {
    blocks,
    close: async () => {
      for (const b of blocks) await b.client.bye();
      await tc.close();
    },
  };
}

/** Three training steps of both blocks (forward, then backward), every output and statistic copied out, in order. */
async function train(fused: boolean, backend: KernelBackend): Promise<{ fusedPath: boolean[]; out: Float32Array[]; stats: Float64Array[] }> {
  setKernelBackend(backend);
  useFusedBlockNorm(fused);
  const { blocks, close } = await twoBlocks();
  const per = SHAPE.reduce((a, b) => a * b, 1);
  const n = R * B;
  const rng = new Rng(7);
  const out: Float32Array[] = [];
  const stats: Float64Array[] = [];
  for (let step = 1; step <= 3; step++) {
    const xs = blocks.map(() => Float32Array.from({ length: n * per }, () => 2 * rng.normal() + 0.3));
    const dys = blocks.map(() => Float32Array.from({ length: n * per }, () => rng.normal()));
    for (const b of blocks) b.clock.step = step;
    const ys = await Promise.all(blocks.map((b, i) => b.norm.forward(xs[i]!, n, true)));
    out.push(...ys.map((y) => y.slice()));
    const dxs = await Promise.all(blocks.map((b, i) => b.norm.backward(dys[i]!, n)));
    out.push(...dxs.map((dx) => dx.slice()));
    for (const b of blocks) {
      for (const p of b.norm.params()) {
        out.push(p.grad.slice());
        stats.push(p.grad64!.slice());
      }
      for (const c of b.norm.copies) stats.push(c.runningMean.slice(), c.runningVar.slice(), Float64Array.of(c.tracked));
    }
  }
  const fusedPath = blocks.map((b) => b.norm.fusedPath);
  await close();
  return { fusedPath, out, stats };
}

describe("a block of BatchNorm copies in one sync group", () => {
  for (const backend of BACKENDS) {
    it(`gives the same bits fused as copy by copy over 3 steps (${backend} passes)`, async () => {
      const fused = await train(true, backend);
      const copies = await train(false, backend);
      expect(fused.fusedPath).toEqual([true, true]);
      expect(copies.fusedPath).toEqual([false, false]);
      expect(fused.out.length).toBe(copies.out.length);
      fused.out.forEach((a, i) => expectBits(`output ${i}`, a, copies.out[i]!));
      fused.stats.forEach((a, i) => expect(Array.from(a), `statistic ${i}`).toEqual(Array.from(copies.stats[i]!)));
      // The steps did something: statistics moved, and grads are not all zero.
      expect(fused.stats.some((s) => s.length === 1 && s[0] === 3)).toBe(true);
      expect(fused.out.some((a) => a.some((v) => v !== 0))).toBe(true);
    });
  }

  it("is not taken for the WebAssembly passes, nor by a block that merges its whole group itself", async () => {
    setKernelBackend("wasm");
    const wasm = await twoBlocks();
    expect(wasm.blocks.map((b) => b.norm.fusedPath)).toEqual([false, false]);
    await wasm.close();
    setKernelBackend(BACKENDS[0]!);
    const whole = await twoBlocks(R); // group:R, each block one whole group: no rounds
    expect(whole.blocks.map((b) => b.norm.fusedPath)).toEqual([false, false]);
    await whole.close();
  });
});
