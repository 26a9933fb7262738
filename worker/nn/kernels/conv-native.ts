// Conv2d's native path (SYNCBN_KERNELS=native): the same per-sample im2col, GEMM
// and col2im as ConvWasm, run by the N-API addon (native.ts) directly on these
// Float32Array/Float64Array buffers, with the same numerics contract: dW is each
// sample's float32 product summed in float64 across samples. Every sum runs in
// the wasm kernels' order with no FMA, so y, dx, dW and db are ConvWasm's bits
// (test/native-kernels.test.ts). One thread. Not a layer: Conv2d owns the params and picks this path.

import type { ConvGeometry, ConvKernel } from "../conv2d.js";
import { addToSum, BatchBuffer, segmentLength, type RankSegments } from "../layer.js";
import type { NativeKernels } from "./native.js";

export class ConvNative implements ConvKernel {
  private readonly rows: number; // R = cin·k·k
  private readonly plane: number; // P = outH·outW
  private readonly inSize: number;
  private readonly y: BatchBuffer; // (N, cout, P)
  private readonly dx: BatchBuffer; // (N, cin, inH, inW)
  /** Every training sample's columns, kept for backward. */
  private readonly cols: BatchBuffer; // (N, R, P)
  private readonly dcols: Float32Array; // (R, P): one sample's, also an eval forward's columns
  private readonly dw32: Float32Array; // (cout, R): one sample's product
  private readonly dw64: Float64Array; // (cout, R): Σ over samples
  private readonly geo: readonly number[];

  constructor(private readonly g: ConvGeometry, private readonly k: NativeKernels) {
    this.rows = g.cin * g.kernel * g.kernel;
    this.plane = g.outH * g.outW;
    this.inSize = g.cin * g.inH * g.inW;
    this.y = new BatchBuffer(g.cout * this.plane);
    this.dx = new BatchBuffer(this.inSize);
    this.cols = new BatchBuffer(this.rows * this.plane);
    this.dcols = new Float32Array(this.rows * this.plane);
    this.dw32 = new Float32Array(g.cout * this.rows);
    this.dw64 = new Float64Array(g.cout * this.rows);
    this.geo = [g.cin, g.inH, g.inW, g.kernel, g.stride, g.padding, g.outH, g.outW];
  }

  /** Per sample: im2col, y = W·cols + b. 2·n·cout·R·P flops. */
  forward(x: Float32Array, n: number, train: boolean, w: Float32Array, b: Float32Array): Float32Array {
    const { cin, inH, inW, kernel, stride, padding, outH, outW, cout } = this.g;
    const R = this.rows, P = this.plane, k = this.k;
    const y = this.y.view(n);
    const cols = train ? this.cols.view(n) : this.dcols;
    for (let i = 0; i < n; i++) {
      const c = train ? i * R * P : 0;
      k.im2col(cols, c, x, i * this.inSize, cin, inH, inW, kernel, stride, padding, outH, outW);
      const yOff = i * cout * P;
      for (let co = 0; co < cout; co++) y.fill(b[co]!, yOff + co * P, yOff + (co + 1) * P);
      k.gemmNN(y, yOff, w, 0, cols, c, cout, P, R, 1);
    }
    return y;
  }

  /**
   * Per sample: dW += f64(dy·colsᵀ), dcols = Wᵀ·dy, dx = col2im(dcols); db = Σ dy
   * in float64. 4·n·cout·R·P flops. With rank segments, dW and db restart at each
   * segment's first sample and, rounded to float32, are added into seg in float64
   * at its last, so each is what its samples alone give (as ConvWasm).
   */
  backward(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): Float32Array {
    const { cin, inH, inW, kernel, stride, padding, outH, outW, cout } = this.g;
    const R = this.rows, P = this.plane, k = this.k;
    const cols = this.cols.view(n);
    const dx = this.dx.view(n);
    const b = segmentLength("conv", n, seg);
    dx.fill(0);
    seg?.dw.fill(0);
    seg?.db.fill(0);
    if (n === 0) {
      dw.fill(0);
      db.fill(0);
    }
    for (let i = 0; i < n; i++) {
      const dyi = i * cout * P;
      k.gemmNTWiden(this.dw64, 0, this.dw32, 0, dy, dyi, cols, i * R * P, cout, R, P, i % b > 0 ? 1 : 0);
      k.gemmTN(this.dcols, 0, w, 0, dy, dyi, R, P, cout, 0);
      k.col2imAdd(dx, i * this.inSize, this.dcols, 0, cin, inH, inW, kernel, stride, padding, outH, outW);
      if (i % b === b - 1) {
        this.sumBias(db, dy, i + 1 - b, b);
        for (let t = 0; t < dw.length; t++) dw[t] = this.dw64[t]!;
        if (seg) {
          addToSum(seg.dw, dw);
          addToSum(seg.db, db);
        }
      }
    }
    if (seg) {
      dw.set(seg.dw);
      db.set(seg.db);
    }
    return dx;
  }

  /** db[co] ← Σ over samples first..first+count−1 of each row's float32 sum (rowSum), in float64 (as ConvWasm). */
  private sumBias(db: Float32Array, dy: Float32Array, first: number, count: number): void {
    const cout = this.g.cout, P = this.plane;
    for (let co = 0; co < cout; co++) {
      let s = 0;
      for (let i = first; i < first + count; i++) s += rowSum(dy, (i * cout + co) * P, P);
      db[co] = s;
    }
  }
}

/**
 * Σ a[off..off+len−1] in float32 in the WebAssembly row_sums order (wasm-kernels.ts):
 * 4 lanes over the first len − len mod 4 (lane l over indices ≡ l mod 4), then
 * (l0 + l1) + (l2 + l3), then the rest one by one. The same bits as ConvWasm's db.
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
