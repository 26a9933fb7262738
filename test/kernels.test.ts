// Tests for the WebAssembly SIMD kernels against their plain TypeScript twins:
// the raw GEMMs on shapes that are not multiples of the 4×8 register block, then
// Conv2d and Linear on both backends (y, dx, dW, db) over kernel sizes, strides,
// padding, odd channel counts and batches of 1 and 32. Finite differences of
// both backends live in nn-layers.test.ts. Not a benchmark: see bench/kernels.ts.

import { describe, expect, it } from "vitest";
import { Rng } from "../shared/rng.js";
import { Conv2d } from "../worker/nn/conv2d.js";
import { WasmArena } from "../worker/nn/kernels/arena.js";
import { kernelBackend, setKernelBackend } from "../worker/nn/kernels/backend.js";
import { kernelModuleBytes } from "../worker/nn/kernels/wasm-kernels.js";
import { Linear } from "../worker/nn/linear.js";
import { MaxPool2d } from "../worker/nn/maxpool.js";
import { ReLU } from "../worker/nn/relu.js";
import { expectClose, maxAbs, normals } from "./compare.js";

describe("the WebAssembly kernel module", () => {
  it("is valid WebAssembly with SIMD and assembles to the same bytes every time", () => {
    const bytes = kernelModuleBytes();
    expect(WebAssembly.validate(bytes)).toBe(true);
    expect(Array.from(kernelModuleBytes())).toEqual(Array.from(bytes));
    expect(kernelBackend()).toBe("wasm");
  });

  type Layout = "nn" | "tn" | "nt";
  /** Where A[i, t] and B[t, j] live for each layout: nn row-major, tn A stored transposed, nt B stored transposed. */
  const aAt = (l: Layout, lda: number, i: number, t: number): number => (l === "tn" ? t * lda + i : i * lda + t);
  const bAt = (l: Layout, ldb: number, t: number, j: number): number => (l === "nt" ? j * ldb + t : t * ldb + j);

  // C (+)= A·B in float64 from the same float32 inputs.
  function gemmRef(l: Layout, c: Float64Array, a: Float32Array, lda: number, b: Float32Array, ldb: number, m: number, n: number, k: number, ldc: number): void {
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = c[i * ldc + j];
        for (let t = 0; t < k; t++) s += a[aAt(l, lda, i, t)] * b[bAt(l, ldb, t, j)];
        c[i * ldc + j] = s;
      }
    }
  }

  for (const layout of ["nn", "tn", "nt"] as const) {
    it(`computes gemm_${layout} for every m, n, k up to 2 blocks past the edges, overwriting or accumulating, and writes nothing outside C`, () => {
      const rng = new Rng(61 + layout.length + layout.charCodeAt(0));
      const arena = new WasmArena();
      const at = arena.layout({ a: 20 * 20, b: 20 * 24, c: 13 * 24 });
      const f32 = arena.f32;
      for (const m of [1, 3, 4, 5, 9]) {
        for (const n of [1, 4, 7, 8, 9, 17]) {
          for (const k of [0, 1, 2, 5, 16]) {
            for (const accumulate of [0, 1]) {
              const lda = (layout === "tn" ? m : k) + 1, ldb = (layout === "nt" ? k : n) + 2, ldc = n + 3;
              f32.set(normals(rng, 20 * 20), at.a);
              f32.set(normals(rng, 20 * 24), at.b);
              const c0 = normals(rng, 13 * 24);
              f32.set(c0, at.c);
              const ref = new Float64Array(c0.length);
              for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) ref[i * ldc + j] = accumulate ? c0[i * ldc + j] : 0;
              gemmRef(layout, ref, f32.subarray(at.a), lda, f32.subarray(at.b), ldb, m, n, k, ldc);
              const gemm = arena.kernels[`gemm_${layout}`];
              gemm(at.c, ldc, at.a, lda, at.b, ldb, m, n, k, accumulate);
              const got = f32.slice(at.c, at.c + c0.length);
              // Outside the m × n block (row padding, rows past m) C must be untouched.
              for (let i = 0; i < got.length; i++) {
                const inside = Math.floor(i / ldc) < m && i % ldc < n;
                if (!inside) ref[i] = c0[i];
              }
              expectClose(`m=${m} n=${n} k=${k} acc=${accumulate}`, got, ref, 1e-6);
            }
          }
        }
      }
    });
  }

  it("gives gemm_nt a zero, not NaN, where rows end in k mod 4 and Inf or NaN follows", () => {
    const arena = new WasmArena();
    const at = arena.layout({ a: 8, b: 8, c: 1 });
    // Rows of 5: the masked tail step loads floats 4..7 of each row, 5..7 are not in it.
    arena.f32.set([1, 1, 1, 1, 1, Infinity, NaN, -Infinity], at.a);
    arena.f32.set([1, 2, 3, 4, 5, NaN, Infinity, NaN], at.b);
    arena.kernels.gemm_nt(at.c, 1, at.a, 8, at.b, 8, 1, 1, 5, 0);
    expect(arena.f32[at.c]).toBe(15);
  });

  it("sums rows of every length, tail included", () => {
    const rng = new Rng(63);
    const arena = new WasmArena();
    for (const len of [0, 1, 3, 4, 5, 11, 784]) {
      const at = arena.layout({ dst: 3, src: 3 * len });
      const src = normals(rng, 3 * len);
      arena.f32.set(src, at.src);
      arena.kernels.row_sums(at.dst, at.src, 3, len);
      const ref = [0, 1, 2].map((r) => src.subarray(r * len, (r + 1) * len).reduce((s, v) => s + v, 0));
      expectClose(`len ${len}`, arena.f32.slice(at.dst, at.dst + 3), ref, 1e-6);
    }
  });
});

interface ConvCase {
  label: string;
  n: number;
  cin: number;
  cout: number;
  k: number;
  stride: number;
  padding: number;
  h: number;
  w: number;
}

const convCases: ConvCase[] = [
  { label: "the cnn's conv1 (1→16, 3×3, pad 1, 28×28) at batch 8", n: 8, cin: 1, cout: 16, k: 3, stride: 1, padding: 1, h: 28, w: 28 },
  { label: "the cnn's conv2 (16→32, 3×3, pad 1, 14×14) at batch 32", n: 32, cin: 16, cout: 32, k: 3, stride: 1, padding: 1, h: 14, w: 14 },
  { label: "k=1 stride 1 with odd channels at batch 1", n: 1, cin: 3, cout: 5, k: 1, stride: 1, padding: 0, h: 6, w: 7 },
  { label: "k=3 stride 2 padding 1, 7 output channels", n: 3, cin: 5, cout: 7, k: 3, stride: 2, padding: 1, h: 9, w: 11 },
  { label: "k=5 stride 2 padding 2 at batch 1", n: 1, cin: 3, cout: 9, k: 5, stride: 2, padding: 2, h: 13, w: 10 },
  { label: "k=5 stride 1 padding 0, 13 output channels", n: 2, cin: 2, cout: 13, k: 5, stride: 1, padding: 0, h: 9, w: 9 },
  { label: "k=4 stride 1 padding 3 (rows entirely in the padding)", n: 2, cin: 2, cout: 3, k: 4, stride: 1, padding: 3, h: 3, w: 4 },
  { label: "k=2 stride 3 padding 1 (stride larger than the kernel)", n: 2, cin: 2, cout: 6, k: 2, stride: 3, padding: 1, h: 7, w: 5 },
  { label: "k=1 stride 2 (resnet's 16→32 shortcut, 28×28) at batch 4", n: 4, cin: 16, cout: 32, k: 1, stride: 2, padding: 0, h: 28, w: 28 },
  { label: "k=1 stride 2 on odd sizes with odd channels", n: 3, cin: 5, cout: 7, k: 1, stride: 2, padding: 0, h: 9, w: 7 },
  { label: "k=3 stride 2 padding 1 (resnet's 32→64 first block, 14×14) at batch 2", n: 2, cin: 32, cout: 64, k: 3, stride: 2, padding: 1, h: 14, w: 14 },
];

/** The same layer on both backends, same seed, so the same weights. */
function convPair(c: ConvCase, seed: number): [Conv2d, Conv2d] {
  const make = (backend: "js" | "wasm"): Conv2d =>
    new Conv2d("conv", c.cin, c.cout, c.k, c.stride, c.padding, c.h, c.w, new Rng(seed), backend);
  return [make("js"), make("wasm")];
}

describe("Conv2d on WebAssembly", () => {
  it.each(convCases)("gives the JS twin's y, dx, dW and db for $label", (c) => {
    const [js, wasm] = convPair(c, 71);
    const g = js.geometry;
    const rng = new Rng(72);
    const x = normals(rng, c.n * c.cin * c.h * c.w);
    const dy = normals(rng, c.n * c.cout * g.outH * g.outW);
    expectClose("y", wasm.forward(x, c.n, true), js.forward(x, c.n, true));
    expectClose("dx", wasm.backward(dy, c.n), js.backward(dy, c.n));
    expectClose("dW", wasm.weight.grad, js.weight.grad);
    expectClose("db", wasm.bias.grad, js.bias.grad);
  });

  it("keeps a training forward's columns through a larger eval forward that grows its memory", () => {
    const c = convCases[3];
    const [js, wasm] = convPair(c, 73);
    const g = js.geometry;
    const rng = new Rng(74);
    const x = normals(rng, c.n * c.cin * c.h * c.w);
    const dy = normals(rng, c.n * c.cout * g.outH * g.outW);
    const big = normals(rng, 40 * c.cin * c.h * c.w);
    js.forward(x, c.n, true);
    wasm.forward(x, c.n, true);
    expectClose("eval y", wasm.forward(big, 40, false), js.forward(big, 40, false));
    expectClose("dx", wasm.backward(dy, c.n), js.backward(dy, c.n));
    expectClose("dW", wasm.weight.grad, js.weight.grad);
  });

  it("uses the weights as they are at each forward, not as they were at construction", () => {
    const c = convCases[2];
    const [js, wasm] = convPair(c, 75);
    const rng = new Rng(76);
    const x = normals(rng, c.n * c.cin * c.h * c.w);
    wasm.forward(x, c.n, false);
    const w = normals(rng, js.weight.value.length);
    js.weight.value.set(w);
    wasm.weight.value.set(w);
    expectClose("y", wasm.forward(x, c.n, false), js.forward(x, c.n, false));
  });

  it("zeroes its grads and returns empty views for an empty batch", () => {
    const [, wasm] = convPair(convCases[3], 77);
    const rng = new Rng(78);
    const c = convCases[3], g = wasm.geometry;
    wasm.forward(normals(rng, 2 * c.cin * c.h * c.w), 2, true);
    wasm.backward(normals(rng, 2 * c.cout * g.outH * g.outW), 2);
    expect(wasm.forward(new Float32Array(0), 0, true).length).toBe(0);
    expect(wasm.backward(new Float32Array(0), 0).length).toBe(0);
    expect(maxAbs(wasm.weight.grad)).toBe(0);
    expect(maxAbs(wasm.bias.grad)).toBe(0);
  });
});

const linearCases = [
  { label: "the cnn's 1568→64 at batch 8", n: 8, inF: 1568, outF: 64 },
  { label: "the cnn's 64→10 at batch 32", n: 32, inF: 64, outF: 10 },
  { label: "odd 37→13 at batch 1", n: 1, inF: 37, outF: 13 },
  { label: "odd 5→3 at batch 11", n: 11, inF: 5, outF: 3 },
  { label: "1→1 at batch 2", n: 2, inF: 1, outF: 1 },
];

describe("Linear on WebAssembly", () => {
  it.each(linearCases)("gives the JS twin's y, dx, dW and db for $label", (c) => {
    const js = new Linear("fc", c.inF, c.outF, new Rng(81), "js");
    const wasm = new Linear("fc", c.inF, c.outF, new Rng(81), "wasm");
    const rng = new Rng(82);
    const x = normals(rng, c.n * c.inF);
    const dy = normals(rng, c.n * c.outF);
    expectClose("y", wasm.forward(x, c.n, true), js.forward(x, c.n, true));
    expectClose("dx", wasm.backward(dy, c.n), js.backward(dy, c.n));
    expectClose("dW", wasm.weight.grad, js.weight.grad);
    expectClose("db", wasm.bias.grad, js.bias.grad);
  });

  it("keeps a training input through a larger eval forward that grows its memory", () => {
    const js = new Linear("fc", 9, 6, new Rng(83), "js");
    const wasm = new Linear("fc", 9, 6, new Rng(83), "wasm");
    const rng = new Rng(84);
    const x = normals(rng, 3 * 9), dy = normals(rng, 3 * 6), big = normals(rng, 100 * 9);
    js.forward(x, 3, true);
    wasm.forward(x, 3, true);
    expectClose("eval y", wasm.forward(big, 100, false), js.forward(big, 100, false));
    expectClose("dx", wasm.backward(dy, 3), js.backward(dy, 3));
    expectClose("dW", wasm.weight.grad, js.weight.grad);
  });
});

describe("ReLU on WebAssembly", () => {
  /** The raw bits of every element: NaN payloads and −0 compared exactly. */
  const bits = (a: Float32Array): number[] => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
  const specials = [0, -0, Number.NaN, -Number.NaN, Infinity, -Infinity, 1e-45, -1e-45, 3.4e38, -3.4e38];

  it.each([1, 3, 4, 5, 7, 33])("gives the JS twin's y and dx bit for bit, special values included, for %i values per sample", (size) => {
    const js = new ReLU("relu", [size], "js");
    const wasm = new ReLU("relu", [size], "wasm");
    const rng = new Rng(85 + size);
    for (const n of [1, 2, 5, 3]) {
      const x = normals(rng, n * size), dy = normals(rng, n * size);
      specials.forEach((v, i) => { if (i < x.length) x[(i * 7) % x.length] = v; });
      dy[0] = Number.NaN;
      // A NaN with a payload and the sign bit set, as x86 makes 0/0.
      new Uint32Array(x.buffer)[x.length - 1] = 0xffc00001;
      expect(bits(wasm.forward(x, n, true)), `y, n=${n}`).toEqual(bits(js.forward(x, n, true)));
      expect(bits(wasm.backward(dy, n)), `dx, n=${n}`).toEqual(bits(js.backward(dy, n)));
    }
  });

  it("keeps its last training batch's mask through a smaller training forward that reuses its memory", () => {
    const js = new ReLU("relu", [6], "js");
    const wasm = new ReLU("relu", [6], "wasm");
    const rng = new Rng(91);
    const big = normals(rng, 4 * 6), small = normals(rng, 6), dy = normals(rng, 6);
    js.forward(big, 4, true);
    wasm.forward(big, 4, true);
    expect(bits(wasm.forward(small, 1, true))).toEqual(bits(js.forward(small, 1, true)));
    expect(bits(wasm.backward(dy, 1))).toEqual(bits(js.backward(dy, 1)));
  });
});

describe("MaxPool2d on WebAssembly", () => {
  const bits = (a: Float32Array): number[] => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
  const cases = [
    { label: "the cnn's pool (k 2, s 2) on 16×28×28", c: 16, h: 28, w: 28, k: 2, s: 2 },
    { label: "overlapping windows (k 3, s 2) on 3×7×9", c: 3, h: 7, w: 9, k: 3, s: 2 },
    { label: "k 3, s 1 on 2×5×6", c: 2, h: 5, w: 6, k: 3, s: 1 },
    { label: "odd size, floor (k 2, s 2) on 1×5×5", c: 1, h: 5, w: 5, k: 2, s: 2 },
  ];

  it.each(cases)("gives the JS twin's y and dx bit for bit for $label, with ties, NaN and ±Inf among the inputs", (c) => {
    const js = new MaxPool2d("pool", c.c, c.h, c.w, c.k, c.s, "js");
    const wasm = new MaxPool2d("pool", c.c, c.h, c.w, c.k, c.s, "wasm");
    const rng = new Rng(95);
    for (const n of [3, 1, 4]) {
      // Rounded to a few values: many ties within windows.
      const x = normals(rng, n * c.c * c.h * c.w).map((v) => Math.round(v * 2) / 2);
      for (let i = 0; i < x.length; i += 37) x[i] = [Number.NaN, Infinity, -Infinity][(i / 37) % 3]!;
      const yJs = js.forward(x, n, true), yWasm = wasm.forward(x, n, true);
      expect(bits(yWasm), `y, n=${n}`).toEqual(bits(yJs));
      const dy = normals(rng, yJs.length);
      expect(bits(wasm.backward(dy, n)), `dx, n=${n}`).toEqual(bits(js.backward(dy, n)));
    }
  });
});

describe("the kernel backend switch", () => {
  it("builds layers on the JS path after setKernelBackend('js') and on WASM after setKernelBackend('wasm')", () => {
    try {
      setKernelBackend("js");
      expect(new Linear("fc", 2, 2, new Rng(1)).backend).toBe("js");
      expect(new Conv2d("conv", 1, 1, 1, 1, 0, 2, 2, new Rng(1)).backend).toBe("js");
    } finally {
      setKernelBackend("wasm");
    }
    expect(new Linear("fc", 2, 2, new Rng(1)).backend).toBe("wasm");
  });
});
