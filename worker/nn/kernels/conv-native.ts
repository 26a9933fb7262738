// Conv2d's native path (SYNCBN_KERNELS=native): im2col, FMA GEMMs (several samples
// per GEMM on small planes) and col2im, or for most stride-1 convs the direct path
// without them (native/direct.cc), run by the N-API addon (native.ts) directly
// on these Float32Array/Float64Array buffers. dW is each sample's float32 product
// summed in float64 across samples, as ConvWasm; every element is one FMA chain in
// a fixed order, so y, dx and dW are the twins' values within float32 rounding (not
// their bits) and the same bits run to run (test/native-kernels.test.ts). Each pass
// is one addon call (native/passes.cc), split over --threads threads of the addon's
// persistent pool with the same bits for any number. Not a layer: Conv2d owns the
// params and picks this path.

import type { ConvGeometry, ConvKernel } from "../conv2d.js";
import { addSegment, beginSegments, endSegments, BatchBuffer, segmentLength, type RankSegments } from "../layer.js";
import type { NativeKernels } from "./native.js";
import { requestedComputeThreads } from "./threads.js";

const EMPTY = new Float32Array(0), EMPTY64 = new Float64Array(0);
/**
 * A training forward keeps its columns (n, R, P) for backward when they take at most this many
 * bytes, else keeps a copy of x and backward makes the columns again (docs/native-kernels.md).
 */
export const KEEP_COLUMNS_BYTES = 8 * 2 ** 20;

export class ConvNative implements ConvKernel {
  private readonly rows: number; // R = cin·k·k
  private readonly plane: number; // P = outH·outW
  private readonly inSize: number;
  private readonly y: BatchBuffer; // (N, cout, P)
  private readonly dx: BatchBuffer; // (N, cin, inH, inW)
  /** The last training input, copied by the forward pass when its columns are not kept: backward and statsSums make them again from it. */
  private readonly xSaved: BatchBuffer; // (N, cin, inH, inW)
  /** The last training forward's columns, when they fit in KEEP_COLUMNS_BYTES. */
  private readonly cols: BatchBuffer; // (N, R, P)
  /** Whether the last training forward kept its columns (else x). */
  private kept = false;
  /** Whether this geometry takes the addon's direct path (no im2col: the columns are never kept). */
  private readonly direct: boolean;
  private readonly dw64: Float64Array; // (cout, R): Σ over samples
  /** statsSums' zero weights (the pass checks w; no dx is made), made at its first call (only CBN calls it). */
  private statsW: Float32Array | null = null;

  /**
   * `threads`: the passes' parts on the addon's pool (--threads; the same bits for any number);
   * `keepBytes`: the largest columns a training forward keeps (the same bits either way; tests use 0 and Infinity).
   */
  constructor(private readonly g: ConvGeometry, private readonly k: NativeKernels, private readonly threads = requestedComputeThreads(),
    private readonly keepBytes = KEEP_COLUMNS_BYTES) {
    this.rows = g.cin * g.kernel * g.kernel;
    this.plane = g.outH * g.outW;
    this.inSize = g.cin * g.inH * g.inW;
    this.y = new BatchBuffer(g.cout * this.plane);
    this.dx = new BatchBuffer(this.inSize);
    this.xSaved = new BatchBuffer(this.inSize);
    this.cols = new BatchBuffer(this.rows * this.plane);
    this.dw64 = new Float64Array(g.cout * this.rows);
    this.direct = k.convDirect(g.cin, g.inH, g.inW, g.kernel, g.stride, g.padding, g.outH, g.outW);
  }

  /**
   * Per sample: im2col, y = b + W·cols (the addon fills in the bias), the samples split over the threads.
   * Training keeps the columns when they take at most keepBytes (then likelier still in the last-level
   * cache at backward), else makes them in a per-thread scratch and keeps a copy of x. 2·n·cout·R·P flops.
   * On the addon's direct path (most stride-1 convs: native/direct.cc) there are no columns: the GEMM
   * reads x from zero-padded planes, and training keeps a copy of x.
   */
  forward(x: Float32Array, n: number, train: boolean, w: Float32Array, b: Float32Array): Float32Array {
    const g = this.g;
    const y = this.y.view(n);
    // An eval forward leaves the saved training input and columns alone.
    const keep = train && !this.direct && n * this.rows * this.plane * 4 <= this.keepBytes;
    if (train) this.kept = keep;
    this.k.convForward(y, x, train && !keep ? this.xSaved.view(n) : EMPTY, keep ? this.cols.view(n) : EMPTY, w, b,
      g.cin, g.inH, g.inW, g.kernel, g.stride, g.padding, g.outH, g.outW, g.cout, n, this.threads);
    return y;
  }

  /**
   * Per sample: cols kept, or im2col(x) again (per thread, its dW rows only), dW += f64(dy·colsᵀ), dcols = Wᵀ·dy, dx = col2im(dcols); db = Σ dy
   * in float64 (rowSum per row, ConvWasm's order); all in the addon's one pass per segment. 4·n·cout·R·P flops, dW's rows and dx's samples split over the
   * threads. With rank segments, dW and db restart at each segment's first sample
   * and, rounded to float32, are added into seg in float64 at its last, so each is
   * what its samples alone give (as ConvWasm).
   */
  backward(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): Float32Array {
    const dx = this.dx.view(n);
    this.segmentPasses(dx, dy, n, w, dw, db, seg);
    return dx;
  }

  /** backward's dx alone (the addon's pass without dW: an empty dw64), the same bits. */
  backwardDx(dy: Float32Array, n: number, w: Float32Array): Float32Array {
    const g = this.g;
    const dx = this.dx.view(n);
    if (n === 0) return dx;
    const [x, cols] = this.saved(n);
    this.k.convBackward(dx, dy, x, cols, w, EMPTY64, EMPTY, EMPTY, EMPTY64, g.cin, g.inH, g.inW, g.kernel, g.stride, g.padding, g.outH, g.outW,
      g.cout, 0, n, this.threads);
    return dx;
  }

  /** backward's dw and db alone (the addon's pass without dx; w is not read), per rank segment as backward; the same bits. */
  backwardParams(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): void {
    this.segmentPasses(EMPTY, dy, n, w, dw, db, seg);
  }

  /** One addon pass per rank segment: dx's samples of the segment (unless dx is empty), dw, db, summed into seg. */
  private segmentPasses(dx: Float32Array, dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): void {
    const g = this.g;
    const [x, cols] = this.saved(n);
    const b = segmentLength("conv", n, seg);
    beginSegments(seg);
    if (n === 0) {
      dw.fill(0);
      db.fill(0);
    }
    for (let first = 0; first < n; first += b) {
      // dx's samples first..first+b−1 zeroed and made, dw = float32(dw64), db = Σ_i rowSum in float64, in the addon.
      this.k.convBackward(dx, dy, x, cols, w, this.dw64, dw, db, EMPTY64, g.cin, g.inH, g.inW, g.kernel, g.stride, g.padding, g.outH, g.outW,
        g.cout, first, b, this.threads);
      addSegment(seg, dw, db);
    }
    endSegments(seg, dw, db);
  }

  /** The last training forward's saved x or kept columns over n samples (the other one empty). */
  private saved(n: number): [Float32Array, Float32Array] {
    return this.kept ? [EMPTY, this.cols.view(n)] : [this.xSaved.view(n), EMPTY];
  }

  /**
   * CBN's sums (ConvKernel.statsSums), one addon pass without dx: yColSums is the dW
   * pass run with dy := y (Σ f64(y_i·cols_iᵀ), each sample's product an FMA GEMM),
   * colSums each row's float32 rowSum summed in float64 in sample order (ConvWasm's
   * bits), taken while the dW pass has the columns' block (made again from x) in cache.
   */
  statsSums(colSums: Float64Array, yColSums: Float64Array, first: number, n: number): void {
    colSums.fill(0);
    yColSums.fill(0);
    if (n === 0) return;
    const g = this.g;
    this.statsW ??= new Float32Array(g.cout * this.rows);
    this.k.convBackward(EMPTY, this.y.view(first + n), ...this.saved(first + n), this.statsW, yColSums, EMPTY, EMPTY, colSums,
      g.cin, g.inH, g.inW, g.kernel, g.stride, g.padding, g.outH, g.outW, g.cout, first, n, this.threads);
  }
}

/**
 * Σ a[off..off+len−1] in float32 in the WebAssembly row_sums order (wasm-kernels.ts):
 * 4 lanes over the first len − len mod 4 (lane l over indices ≡ l mod 4), then
 * (l0 + l1) + (l2 + l3), then the rest one by one. The same bits as ConvWasm's db (and the
 * addon's, native/passes.cc, which sums db's rows in this order).
 */
export function rowSum(a: Float32Array, off: number, len: number): number {
  const f = Math.fround, end = off + (len & ~3);
  let l0 = 0, l1 = 0, l2 = 0, l3 = 0, j = off;
  for (; j < end; j += 4) {
    l0 = f(l0 + a[j]!);
    l1 = f(l1 + a[j + 1]!);
    l2 = f(l2 + a[j + 2]!);
    l3 = f(l3 + a[j + 3]!);
  }
  let s = f(f(l0 + l1) + f(l2 + l3));
  for (; j < off + len; j++) s = f(s + a[j]!);
  return s;
}
