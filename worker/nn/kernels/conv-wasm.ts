// Conv2d's WebAssembly SIMD path: im2col, GEMM and col2im in the layer's own wasm
// memory, with the same contract as the plain TypeScript path in conv2d.ts (its
// reference twin, see test/kernels.test.ts). With compute threads (--threads) the
// memory is shared and the per-sample work of a pass (conv-parts.ts) is split over
// them, with the same bits. Not a layer: Conv2d owns the params and picks this or
// the JS path.

import type { ConvGeometry, ConvKernel } from "../conv2d.js";
import { addSegment, beginSegments, endSegments, segmentLength, type RankSegments } from "../layer.js";
import { WasmArena } from "./arena.js";
import { CONV_TASK_WORDS, convPart, KIND_BACKWARD, KIND_FORWARD, W } from "./conv-parts.js";
import { computeThreads, registerMemory, runParts } from "./threads.js";
import { KERNEL_SLACK_FLOATS } from "./wasm-kernels.js";

/** Float offsets of the regions, for a capacity of N samples; R = cin·k·k, P = outH·outW. */
interface ConvRegions {
  w: number; // (cout, R), copied from the param on every pass
  xdx: number; // (N, cin, inH, inW): x staged by forward, dx built by backward
  cols: number; // (N, R, P): every training sample's columns, kept for backward
  y: number; // (N, cout, P)
  dy: number; // (N, cout, P)
  dySums: number; // (N, cout): Σ over P of dy, per sample and channel
  dcols: number; // (R, P) per compute thread, one sample; also the columns of an eval forward
  dw: number; // (cout, R), one sample's product in float32
  dw64: number; // (cout, R) float64 (2 floats each): Σ over samples of dw
}

export class ConvWasm implements ConvKernel {
  /** Compute threads this layer's passes split over (threads.ts); 1: this thread alone. */
  private readonly parts: number;
  private readonly arena: WasmArena;
  /** The task words of the last pass (threads.ts), refilled per pass. */
  private readonly task = new Int32Array(CONV_TASK_WORDS);
  /** Floats between two compute threads' dcols scratch blocks. */
  private readonly dcolsStride: number;
  private readonly rows: number; // R
  private readonly plane: number; // P
  private readonly inSize: number;
  private capacity = 0;
  private at!: ConvRegions;
  /** Samples whose columns the last training forward kept (0: none). */
  private savedN = 0;
  /** Views of this layout: the float64 dW sum, and the outputs handed out per batch size. */
  private dw64View!: Float64Array;
  private readonly yViews = new Map<number, Float32Array>();
  private readonly dxViews = new Map<number, Float32Array>();

  /**
   * `parts`: the compute threads to split over, the run's by default; 1 keeps the kernel on this thread with its own
   * unshared memory (the same bits: the split never changes them).
   */
  constructor(private readonly g: ConvGeometry, parts = computeThreads()) {
    this.parts = parts;
    this.arena = new WasmArena(parts > 1);
    this.rows = g.cin * g.kernel * g.kernel;
    this.plane = g.outH * g.outW;
    this.inSize = g.cin * g.inH * g.inW;
    this.dcolsStride = Math.ceil((this.rows * this.plane + KERNEL_SLACK_FLOATS) / 4) * 4;
    this.task[W.memory] = this.parts > 1 ? registerMemory(this.arena.memory) : 0;
    this.task[W.parts] = this.parts;
    for (const [key, v] of [["cin", g.cin], ["inH", g.inH], ["inW", g.inW], ["kernel", g.kernel], ["stride", g.stride], ["padding", g.padding], ["outH", g.outH], ["outW", g.outW], ["cout", g.cout]] as const) this.task[W[key]] = v;
    this.reserve(1);
  }

  private reserve(n: number): void {
    if (n <= this.capacity) return;
    const { cout } = this.g;
    const R = this.rows, P = this.plane;
    const oldCols = this.at?.cols ?? 0;
    this.at = this.arena.layout({
      w: cout * R, xdx: n * this.inSize, cols: n * R * P, y: n * cout * P,
      dy: n * cout * P, dySums: n * cout, dcols: this.dcolsStride * this.parts, dw: cout * R, dw64: 2 * cout * R,
    });
    // Keep the last training forward's columns: an eval forward may come before its backward.
    this.arena.f32.copyWithin(this.at.cols, oldCols, oldCols + this.savedN * R * P);
    this.capacity = n;
    this.dw64View = new Float64Array(this.arena.f32.buffer, this.at.dw64 * 4, cout * R);
    this.yViews.clear();
    this.dxViews.clear();
  }

  /**
   * Per sample: im2col, y = W·cols + b. 2·n·cout·R·P flops. Training keeps
   * every sample's columns; an eval forward uses a scratch block per compute thread instead.
   */
  forward(x: Float32Array, n: number, train: boolean, w: Float32Array, b: Float32Array): Float32Array {
    this.reserve(n);
    const cout = this.g.cout, P = this.plane, at = this.at;
    const f32 = this.arena.f32;
    f32.set(w, at.w);
    this.arena.copyIn(x, n * this.inSize, at.xdx);
    for (let i = 0; i < n; i++) {
      const y = at.y + i * cout * P;
      for (let co = 0; co < cout; co++) f32.fill(b[co]!, y + co * P, y + (co + 1) * P);
    }
    // Per sample: im2col, y += W·cols (see convPart), split over the compute threads.
    this.run(KIND_FORWARD, n, train, "forward");
    if (train) this.savedN = n;
    return this.arena.cachedView(this.yViews, at.y, n * cout * P, n);
  }

  /** One pass of convPart over n samples: here alone, or here and on the compute threads. */
  private run(kind: number, n: number, train: boolean, phase: string): void {
    const t = this.task, at = this.at;
    t[W.kind] = kind;
    t[W.n] = n;
    t[W.train] = train ? 1 : 0;
    t[W.w] = at.w; t[W.xdx] = at.xdx; t[W.cols] = at.cols; t[W.y] = at.y; t[W.dy] = at.dy; t[W.dw] = at.dw;
    t[W.dcols] = at.dcols; t[W.dcolsStride] = this.dcolsStride; t[W.dw64] = at.dw64;
    const k = this.arena.kernels;
    if (this.parts === 1 || n === 0) convPart(k, t, 0);
    else runParts(t, (p) => convPart(k, t, p), `a ${this.g.cin}→${this.g.cout} convolution's ${phase}`);
  }

  /**
   * Per sample: dW += dy·colsᵀ (each sample's product in float32, summed in
   * float64), dcols = Wᵀ·dy, dx = col2im(dcols); db = Σ dy (per-row float32 sums,
   * added up in float64). 4·n·cout·R·P flops. With rank segments, dW and db
   * restart at each segment's first sample and, rounded to float32 as one rank's
   * would be, are added into seg in float64 at its last, so each is what its
   * samples alone give.
   */
  backward(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): Float32Array {
    const { cin, cout, kernel, stride, padding, inH, inW, outH, outW } = this.g;
    const R = this.rows, P = this.plane, k = this.arena.kernels, at = this.at;
    const f32 = this.arena.f32;
    const b = segmentLength("conv", n, seg);
    f32.set(w, at.w);
    this.arena.copyIn(dy, n * cout * P, at.dy);
    k.row_sums(at.dySums, at.dy, n * cout, P);
    f32.fill(0, at.xdx, at.xdx + n * this.inSize);
    if (!seg) {
      // dW and dx per sample (see convPart), split over the compute threads.
      this.run(KIND_BACKWARD, n, true, "backward");
      this.sumBias(db, 0, n);
      if (n === 0) dw.fill(0);
      else dw.set(this.dw64View);
      return this.arena.cachedView(this.dxViews, at.xdx, n * this.inSize, n);
    }
    beginSegments(seg);
    for (let i = 0; i < n; i++) {
      const dyi = at.dy + i * cout * P;
      k.gemm_nt(at.dw, R, dyi, P, at.cols + i * R * P, P, cout, R, P, 0);
      k.add_f32_f64(at.dw64, at.dw, cout * R, i % b > 0 ? 1 : 0);
      k.gemm_tn(at.dcols, P, at.w, R, dyi, P, R, P, cout, 0);
      k.col2im_add(at.dcols, at.xdx + i * this.inSize, cin, inH, inW, kernel, stride, padding, outH, outW);
      if (i % b === b - 1) {
        this.sumBias(db, i + 1 - b, b);
        dw.set(this.dw64View);
        addSegment(seg, dw, db);
      }
    }
    endSegments(seg, dw, db);
    return this.arena.cachedView(this.dxViews, at.xdx, n * this.inSize, n);
  }

  /**
   * CBN's sums from the columns and outputs the last training forward kept: per
   * sample y·colsᵀ in float32 (as dW) widened into float64, and the columns' row
   * sums. Uses the dw, dw64 and dcols scratch, which backward overwrites; this thread alone.
   */
  statsSums(colSums: Float64Array, yColSums: Float64Array, first: number, n: number): void {
    const cout = this.g.cout, R = this.rows, P = this.plane, k = this.arena.kernels, at = this.at;
    colSums.fill(0);
    yColSums.fill(0);
    for (let i = first; i < first + n; i++) {
      const cols = at.cols + i * R * P;
      k.gemm_nt(at.dw, R, at.y + i * cout * P, P, cols, P, cout, R, P, 0);
      k.add_f32_f64(at.dw64, at.dw, cout * R, i > first ? 1 : 0);
      k.row_sums(at.dcols, cols, R, P);
      const f32 = this.arena.f32;
      for (let r = 0; r < R; r++) colSums[r]! += f32[at.dcols + r]!;
    }
    if (n > 0) yColSums.set(this.dw64View);
  }

  /** db[co] ← Σ over samples first..first+count−1 of their per-row sums, in float64. */
  private sumBias(db: Float32Array, first: number, count: number): void {
    const cout = this.g.cout, f32 = this.arena.f32, sums = this.at.dySums;
    for (let co = 0; co < cout; co++) {
      let s = 0;
      for (let i = first; i < first + count; i++) s += f32[sums + i * cout + co]!;
      db[co] = s;
    }
  }
}
