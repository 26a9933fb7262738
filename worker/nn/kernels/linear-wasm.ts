// Linear's WebAssembly SIMD path: the three products of y = x·Wᵀ + b and its
// backward as GEMMs in the layer's own wasm memory, with the contract of the
// plain TypeScript path in linear.ts (its reference twin, test/kernels.test.ts).
// Not a layer: Linear owns the params and picks this or the JS path.

import type { LinearKernel } from "../linear.js";
import { addToSum, segmentLength, type RankSegments } from "../layer.js";
import { WasmArena } from "./arena.js";

/** Float offsets of the regions, for a capacity of N samples. */
interface LinearRegions {
  w: number; // (out, in), copied from the param on every pass (~7 µs for 1568→64: ~4% of its pass at batch 8)
  x: number; // (N, in): the last training input, kept for dW
  y: number; // (N, out)
  dy: number; // (N, out)
  dx: number; // (N, in); also stages an eval forward's input
  dw: number; // (out, in)
  dw64: number; // (out, in) float64 (2 floats each): a rank block's Σ of its ranks' dW; empty unless enableSegments()
}

export class LinearWasm implements LinearKernel {
  private readonly arena = new WasmArena();
  private capacity = 0;
  private at!: LinearRegions;
  /** Samples of the last training input kept in x (0: none). */
  private savedN = 0;
  /** Views of this layout: dW, and the outputs handed out per batch size. */
  private dwView!: Float32Array;
  /** Laid out only for a rank block with --rank-grads exact (enableSegments): 8 bytes per weight. */
  private dw64View: Float64Array | null = null;
  private readonly yViews = new Map<number, Float32Array>();
  private readonly dxViews = new Map<number, Float32Array>();

  constructor(private readonly inF: number, private readonly outF: number) {
    this.reserve(1);
  }

  /** Lays the regions out for n samples (and the float64 dW region when `dw64`), if the current layout is short of either. */
  private reserve(n: number, dw64 = this.dw64View !== null): void {
    if (n <= this.capacity && dw64 === (this.dw64View !== null)) return;
    n = Math.max(n, this.capacity);
    const inF = this.inF, outF = this.outF;
    const oldX = this.at?.x ?? 0;
    this.at = this.arena.layout({
      w: outF * inF, x: n * inF, y: n * outF, dy: n * outF, dx: n * inF, dw: outF * inF, dw64: dw64 ? 2 * outF * inF : 0,
    });
    // The last training input survives: an eval forward may come before backward.
    this.arena.f32.copyWithin(this.at.x, oldX, oldX + this.savedN * inF);
    this.capacity = n;
    this.dwView = this.arena.f32.subarray(this.at.dw, this.at.dw + outF * inF);
    this.dw64View = dw64 ? new Float64Array(this.arena.f32.buffer, this.at.dw64 * 4, outF * inF) : null;
    this.yViews.clear();
    this.dxViews.clear();
  }

  /** y = x·Wᵀ + b: 2·n·out·in flops, rows of x against rows of W. */
  forward(x: Float32Array, n: number, train: boolean, w: Float32Array, b: Float32Array): Float32Array {
    this.reserve(n);
    const inF = this.inF, outF = this.outF, at = this.at, k = this.arena.kernels;
    const f32 = this.arena.f32;
    const xs = train ? at.x : at.dx;
    f32.set(w, at.w);
    this.arena.copyIn(x, n * inF, xs);
    k.gemm_nt(at.y, outF, xs, inF, at.w, inF, n, outF, inF, 0);
    const y = this.arena.cachedView(this.yViews, at.y, n * outF, n);
    for (let i = 0; i < n; i++) for (let o = 0; o < outF; o++) y[i * outF + o]! += b[o]!;
    if (train) this.savedN = n;
    return y;
  }

  /** The float64 dW region of a rank block, laid out once, when the block is set up. */
  enableSegments(): void {
    this.reserve(this.capacity, true);
  }

  /**
   * dx = dy·W and dW = dyᵀ·x (2·n·out·in flops each), db = Σ dy in float64. With
   * rank segments, dW and db per segment as a batch of its samples alone, added
   * into seg in float64 (dW: gemm_tn_seg, the R products summed in one pass).
   */
  backward(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): Float32Array {
    const b = segmentLength("linear", n, seg);
    if (seg && this.dw64View === null) throw new RangeError("linear: rank segments without enableSegments()");
    const inF = this.inF, outF = this.outF, at = this.at, k = this.arena.kernels;
    this.arena.f32.set(w, at.w);
    this.arena.copyIn(dy, n * outF, at.dy);
    k.gemm_nn(at.dx, inF, at.dy, outF, at.w, inF, n, inF, outF, 0);
    seg?.db.fill(0);
    for (let r = 0; r < (seg?.count ?? 1); r++) {
      const first = r * b;
      for (let o = 0; o < outF; o++) {
        let s = 0;
        for (let i = first; i < first + b; i++) s += dy[i * outF + o]!;
        db[o] = s;
      }
      if (seg) addToSum(seg.db, db);
    }
    if (seg) {
      k.gemm_tn_seg(at.dw64, inF, at.dy, outF, at.x, inF, outF, inF, n, b);
      seg.dw.set(this.dw64View!);
      dw.set(seg.dw);
      db.set(seg.db);
    } else {
      k.gemm_tn(at.dw, inF, at.dy, outF, at.x, inF, outF, inF, n, 0);
      dw.set(this.dwView);
    }
    return this.arena.cachedView(this.dxViews, at.dx, n * inF, n);
  }
}
