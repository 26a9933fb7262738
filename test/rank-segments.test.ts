// Per-rank parameter gradients of a process hosting R ranks (Layer.setRankSegments):
// one backward over the block's R·B samples gives, for Linear, Conv2d (stride 2,
// 1×1, no bias) and GroupNorm on both kernel backends, exactly the float32 grads
// R separate layers compute from their B samples each, summed in float64 in rank
// order (Param.grad64), and exactly their dx. What makes a rank block's run equal
// the run of one process per rank; the whole runs are in ranks-per-proc.test.ts.

import { afterEach, describe, expect, it } from "vitest";
import { Rng } from "../shared/rng.js";
import { Conv2d } from "../worker/nn/conv2d.js";
import { GroupNorm } from "../worker/nn/groupnorm.js";
import { setKernelBackend, type KernelBackend } from "../worker/nn/kernels/backend.js";
import type { Layer } from "../worker/nn/layer.js";
import { Linear } from "../worker/nn/linear.js";

const R = 3;
const B = 4;

function normals(rng: Rng, len: number): Float32Array {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = rng.normal();
  return a;
}

/** Indices where a and b differ bit-wise (Object.is), at most 5. */
function differing(a: ArrayLike<number>, b: ArrayLike<number>): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.max(a.length, b.length) && out.length < 5; i++) if (!Object.is(a[i], b[i])) out.push(i);
  return out;
}

interface Case {
  label: string;
  /** A fresh layer; every call builds the same weights. */
  make: () => Layer;
}

const cases: Case[] = [
  { label: "Linear 37 → 9", make: () => new Linear("fc", 37, 9, new Rng(11)) },
  { label: "Conv2d 3×3, stride 1, pad 1, with bias", make: () => new Conv2d("conv", 3, 5, 3, 1, 1, 7, 7, new Rng(12)) },
  { label: "Conv2d 3×3, stride 2, no bias", make: () => new Conv2d("conv", 3, 6, 3, 2, 1, 8, 8, new Rng(13), undefined, false) },
  { label: "Conv2d 1 → 16, 3×3 on 28×28 (cnn's conv1)", make: () => new Conv2d("conv", 1, 16, 3, 1, 1, 28, 28, new Rng(16)) },
  { label: "Conv2d 1×1, stride 2, no bias", make: () => new Conv2d("conv", 4, 8, 1, 2, 0, 6, 6, new Rng(14), undefined, false) },
  {
    label: "GroupNorm C=6, G=3",
    make: () => {
      const l = new GroupNorm("gn", [6, 3, 3], 3, 1e-5);
      const rng = new Rng(15);
      for (const p of l.params()) p.value.set(normals(rng, p.value.length));
      return l;
    },
  },
];

/** One backward of `make()` over R·B samples with R rank segments against R layers alone on B each: dx, grad64 and grad bit for bit. */
async function expectBlockEqualsRanks(make: () => Layer, r: number, b: number): Promise<void> {
  const probe = make();
  const inLen = probe.inShape.reduce((x, d) => x * d, 1);
  const outLen = probe.outShape.reduce((x, d) => x * d, 1);
  const rng = new Rng(99);
  const x = normals(rng, r * b * inLen);
  const dy = normals(rng, r * b * outLen);

  // R layers alone, one per rank, each on its B samples.
  const want = probe.params().map((p) => new Float64Array(p.grad.length));
  const wantDx: number[] = [];
  for (let k = 0; k < r; k++) {
    const alone = make();
    await alone.forward(x.subarray(k * b * inLen, (k + 1) * b * inLen), b, true);
    wantDx.push(...(await alone.backward(dy.subarray(k * b * outLen, (k + 1) * b * outLen), b)));
    alone.params().forEach((p, i) => {
      for (let j = 0; j < p.grad.length; j++) want[i]![j]! += p.grad[j]!;
    });
  }

  const block = make();
  block.setRankSegments!(r);
  await block.forward(x, r * b, true);
  const dx = await block.backward(dy, r * b);
  expect(differing(dx, wantDx), "dx").toEqual([]);
  block.params().forEach((p, i) => {
    expect(differing(p.grad64!, want[i]!), `${p.name} grad64`).toEqual([]);
    expect(differing(p.grad, Float32Array.from(want[i]!)), `${p.name} grad`).toEqual([]);
  });
  // A second step reuses the sums: they restart, not accumulate.
  await block.forward(x, r * b, true);
  await block.backward(dy, r * b);
  block.params().forEach((p, i) => expect(differing(p.grad64!, want[i]!), `${p.name} grad64, second step`).toEqual([]));
}

describe("per-rank gradients of a rank block", () => {
  afterEach(() => setKernelBackend("wasm"));

  for (const backend of ["wasm", "js"] as KernelBackend[]) {
    for (const c of cases) {
      it(`gives ${c.label} (${backend} kernels) the R ranks' own grads summed in float64 and their dx, bit for bit`, async () => {
        setKernelBackend(backend);
        await expectBlockEqualsRanks(c.make, R, B);
      });
    }
  }

  // gemm_tn_seg: whole 4 × 8 blocks, edge rows and columns, one sample per rank, one rank.
  it.each([
    { inF: 64, outF: 32, r: 8, b: 1 },
    { inF: 37, outF: 9, r: 2, b: 7 },
    { inF: 16, outF: 5, r: 5, b: 3 },
    { inF: 784, outF: 256, r: 32, b: 2 },
  ])("gives Linear $inF → $outF with $r ranks of $b samples on WebAssembly the ranks' own dW summed in float64", async ({ inF, outF, r, b }) => {
    await expectBlockEqualsRanks(() => new Linear("fc", inF, outF, new Rng(21)), r, b);
  });

  it("refuses a batch that does not split into the R rank segments", async () => {
    const l = new Linear("fc", 3, 2, new Rng(1));
    l.setRankSegments(2);
    await l.forward(new Float32Array(9), 3, true);
    expect(() => l.backward(new Float32Array(6), 3)).toThrow(/batch of 3 samples does not split into 2 rank segments/);
  });
});
