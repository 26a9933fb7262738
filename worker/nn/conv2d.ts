// 2-D convolution over NCHW batches, weights (cout, cin, k, k), square kernel,
// symmetric zero padding, with or without bias, PyTorch default init. Two paths behind one layer: the
// WebAssembly SIMD one (kernels/conv-wasm.ts, default) and its plain TypeScript
// twin here (im2col + row-update matmul per sample); a naive direct-convolution
// twin of both is kept for tests. Not dilated, grouped or transposed convolution.

import type { Rng } from "../../shared/rng.js";
import { convKernelBackend, type KernelBackend } from "./kernels/backend.js";
import { ConvNative } from "./kernels/conv-native.js";
import { ConvWasm } from "./kernels/conv-wasm.js";
import { requireNative } from "./kernels/native.js";
import { addSegment, beginSegments, endSegments, BatchBuffer, segmentLength, type Layer, type Param, type RankSegments } from "./layer.js";
import { initFanInUniform, rankSegments, requireInt, requireLength, requireSaved } from "./linear.js";

/** Arrays the naive twins accept: float32 for the product, float64 for test references. */
export type Floats = Float32Array | Float64Array;

export interface ConvGeometry {
  readonly cin: number;
  readonly cout: number;
  readonly kernel: number;
  readonly stride: number;
  readonly padding: number;
  readonly inH: number;
  readonly inW: number;
  /** ⌊(inH + 2·padding − kernel)/stride⌋ + 1, as PyTorch. */
  readonly outH: number;
  readonly outW: number;
}

export function convGeometry(
  name: string, cin: number, cout: number, kernel: number, stride: number, padding: number, inH: number, inW: number,
): ConvGeometry {
  requireInt(name, "cin", cin, 1);
  requireInt(name, "cout", cout, 1);
  requireInt(name, "kernel", kernel, 1);
  requireInt(name, "stride", stride, 1);
  requireInt(name, "padding", padding, 0);
  requireInt(name, "inH", inH, 1);
  requireInt(name, "inW", inW, 1);
  const outH = Math.floor((inH + 2 * padding - kernel) / stride) + 1;
  const outW = Math.floor((inW + 2 * padding - kernel) / stride) + 1;
  requireInt(name, "output height (inH + 2·padding − kernel)/stride + 1", outH, 1);
  requireInt(name, "output width (inW + 2·padding − kernel)/stride + 1", outW, 1);
  return { cin, cout, kernel, stride, padding, inH, inW, outH, outW };
}

/** First output column ow with ow·s − pad + kw ≥ 0. */
function firstValid(kw: number, s: number, pad: number): number {
  return Math.max(0, Math.ceil((pad - kw) / s));
}

/** One past the last output column ow with ow·s − pad + kw < inW (never below first). */
function endValid(kw: number, s: number, pad: number, inW: number, outW: number, first: number): number {
  return Math.max(first, Math.min(outW, Math.floor((inW - 1 + pad - kw) / s) + 1));
}

/**
 * cols[(ci·k + kh)·k + kw, oh·outW + ow] = x[ci, oh·s − pad + kh, ow·s − pad + kw],
 * zero outside the image. cols: (cin·k·k, outH·outW); x sample at xOff: (cin, inH, inW).
 */
export function im2col(cols: Float32Array, x: Float32Array, xOff: number, g: ConvGeometry): void {
  const { cin, kernel: k, stride: s, padding: pad, inH, inW, outH, outW } = g;
  const plane = outH * outW;
  for (let ci = 0; ci < cin; ci++) {
    for (let kh = 0; kh < k; kh++) {
      for (let kw = 0; kw < k; kw++) {
        const rowOff = ((ci * k + kh) * k + kw) * plane;
        const lo = firstValid(kw, s, pad);
        const hi = endValid(kw, s, pad, inW, outW, lo);
        for (let oh = 0; oh < outH; oh++) {
          const dst = rowOff + oh * outW;
          const ih = oh * s - pad + kh;
          if (ih < 0 || ih >= inH) {
            cols.fill(0, dst, dst + outW);
            continue;
          }
          const src = xOff + (ci * inH + ih) * inW - pad + kw;
          for (let ow = 0; ow < lo; ow++) cols[dst + ow] = 0;
          for (let ow = lo; ow < hi; ow++) cols[dst + ow] = x[src + ow * s];
          for (let ow = hi; ow < outW; ow++) cols[dst + ow] = 0;
        }
      }
    }
  }
}

/** Adjoint of im2col: dx[ci, ih, iw] += every dcols entry that im2col read from it. dx sample at dxOff. */
export function col2imAdd(dx: Float32Array, dxOff: number, dcols: Float32Array, g: ConvGeometry): void {
  const { cin, kernel: k, stride: s, padding: pad, inH, inW, outH, outW } = g;
  const plane = outH * outW;
  for (let ci = 0; ci < cin; ci++) {
    for (let kh = 0; kh < k; kh++) {
      for (let kw = 0; kw < k; kw++) {
        const rowOff = ((ci * k + kh) * k + kw) * plane;
        const lo = firstValid(kw, s, pad);
        const hi = endValid(kw, s, pad, inW, outW, lo);
        for (let oh = 0; oh < outH; oh++) {
          const ih = oh * s - pad + kh;
          if (ih < 0 || ih >= inH) continue;
          const src = rowOff + oh * outW;
          const dst = dxOff + (ci * inH + ih) * inW - pad + kw;
          for (let ow = lo; ow < hi; ow++) dx[dst + ow * s] += dcols[src + ow];
        }
      }
    }
  }
}

/**
 * C[i, j] += Σ_t A[i, t]·B[t, j] for C (m, p) at cOff, B (kk, p) at bOff, and
 * A[i, t] = a[aOff + i·aRow + t·aCol] (so Aᵀ is the same call with strides swapped).
 * Row-update (ikj) order on a 2×4 register block: each pass loads 4 B values and
 * 2 C values for 8 multiply-adds, all inner accesses contiguous. 2·m·kk·p flops.
 */
export function gemmAcc(
  c: Float32Array, cOff: number,
  a: Float32Array, aOff: number, aRow: number, aCol: number,
  b: Float32Array, bOff: number,
  m: number, kk: number, p: number,
): void {
  let i = 0;
  for (; i + 1 < m; i += 2) {
    const c0 = cOff + i * p, c1 = c0 + p;
    const a0 = aOff + i * aRow, a1 = a0 + aRow;
    let t = 0;
    for (; t + 3 < kk; t += 4) {
      const t0 = t * aCol, t1 = t0 + aCol, t2 = t1 + aCol, t3 = t2 + aCol;
      const u0 = a[a0 + t0], u1 = a[a0 + t1], u2 = a[a0 + t2], u3 = a[a0 + t3];
      const v0 = a[a1 + t0], v1 = a[a1 + t1], v2 = a[a1 + t2], v3 = a[a1 + t3];
      const b0 = bOff + t * p, b1 = b0 + p, b2 = b1 + p, b3 = b2 + p;
      for (let j = 0; j < p; j++) {
        const w0 = b[b0 + j], w1 = b[b1 + j], w2 = b[b2 + j], w3 = b[b3 + j];
        c[c0 + j] += u0 * w0 + u1 * w1 + u2 * w2 + u3 * w3;
        c[c1 + j] += v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3;
      }
    }
    for (; t < kk; t++) {
      const u = a[a0 + t * aCol], v = a[a1 + t * aCol];
      const bt = bOff + t * p;
      for (let j = 0; j < p; j++) {
        const w = b[bt + j];
        c[c0 + j] += u * w;
        c[c1 + j] += v * w;
      }
    }
  }
  if (i < m) {
    const c0 = cOff + i * p;
    const a0 = aOff + i * aRow;
    for (let t = 0; t < kk; t++) {
      const u = a[a0 + t * aCol];
      const bt = bOff + t * p;
      for (let j = 0; j < p; j++) c[c0 + j] += u * b[bt + j];
    }
  }
}

/**
 * C[i, t] += Σ_j A[i, j]·B[t, j] for A (m, p) at aOff, B (kk, p), C (m, kk) in
 * float64. 2×4 block of dot products: 6 loads per 8 multiply-adds. 2·m·kk·p flops.
 */
export function gemmNTAcc(c: Float64Array, a: Float32Array, aOff: number, b: Float32Array, m: number, kk: number, p: number): void {
  let i = 0;
  for (; i + 1 < m; i += 2) {
    const a0 = aOff + i * p, a1 = a0 + p;
    const c0 = i * kk, c1 = c0 + kk;
    let t = 0;
    for (; t + 3 < kk; t += 4) {
      const b0 = t * p, b1 = b0 + p, b2 = b1 + p, b3 = b2 + p;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      for (let j = 0; j < p; j++) {
        const x0 = a[a0 + j], x1 = a[a1 + j];
        const w0 = b[b0 + j], w1 = b[b1 + j], w2 = b[b2 + j], w3 = b[b3 + j];
        s00 += x0 * w0; s01 += x0 * w1; s02 += x0 * w2; s03 += x0 * w3;
        s10 += x1 * w0; s11 += x1 * w1; s12 += x1 * w2; s13 += x1 * w3;
      }
      c[c0 + t] += s00; c[c0 + t + 1] += s01; c[c0 + t + 2] += s02; c[c0 + t + 3] += s03;
      c[c1 + t] += s10; c[c1 + t + 1] += s11; c[c1 + t + 2] += s12; c[c1 + t + 3] += s13;
    }
    for (; t < kk; t++) {
      const bt = t * p;
      let s0 = 0, s1 = 0;
      for (let j = 0; j < p; j++) {
        const w = b[bt + j];
        s0 += a[a0 + j] * w;
        s1 += a[a1 + j] * w;
      }
      c[c0 + t] += s0;
      c[c1 + t] += s1;
    }
  }
  if (i < m) {
    const a0 = aOff + i * p, c0 = i * kk;
    for (let t = 0; t < kk; t++) {
      const bt = t * p;
      let s = 0;
      for (let j = 0; j < p; j++) s += a[a0 + j] * b[bt + j];
      c[c0 + t] += s;
    }
  }
}

/** Reference: y (n, cout, outH, outW) = direct convolution of x (n, cin, inH, inW) with w, plus b. */
export function conv2dForwardNaive(y: Floats, x: Floats, w: Floats, b: Floats, n: number, g: ConvGeometry): void {
  const { cin, cout, kernel: k, stride: s, padding: pad, inH, inW, outH, outW } = g;
  for (let i = 0; i < n; i++) {
    for (let co = 0; co < cout; co++) {
      for (let oh = 0; oh < outH; oh++) {
        for (let ow = 0; ow < outW; ow++) {
          let sum = b[co];
          for (let ci = 0; ci < cin; ci++) {
            for (let kh = 0; kh < k; kh++) {
              const ih = oh * s - pad + kh;
              if (ih < 0 || ih >= inH) continue;
              for (let kw = 0; kw < k; kw++) {
                const iw = ow * s - pad + kw;
                if (iw < 0 || iw >= inW) continue;
                sum += x[((i * cin + ci) * inH + ih) * inW + iw] * w[((co * cin + ci) * k + kh) * k + kw];
              }
            }
          }
          y[((i * cout + co) * outH + oh) * outW + ow] = sum;
        }
      }
    }
  }
}

/** Reference backward: overwrites dx (n, cin, inH, inW), dw (cout, cin, k, k), db (cout) from dy. */
export function conv2dBackwardNaive(
  dx: Floats, dw: Floats, db: Floats, dy: Floats, x: Floats, w: Floats, n: number, g: ConvGeometry,
): void {
  const { cin, cout, kernel: k, stride: s, padding: pad, inH, inW, outH, outW } = g;
  dx.fill(0, 0, n * cin * inH * inW);
  dw.fill(0);
  db.fill(0);
  for (let i = 0; i < n; i++) {
    for (let co = 0; co < cout; co++) {
      for (let oh = 0; oh < outH; oh++) {
        for (let ow = 0; ow < outW; ow++) {
          const d = dy[((i * cout + co) * outH + oh) * outW + ow];
          db[co] += d;
          for (let ci = 0; ci < cin; ci++) {
            for (let kh = 0; kh < k; kh++) {
              const ih = oh * s - pad + kh;
              if (ih < 0 || ih >= inH) continue;
              for (let kw = 0; kw < k; kw++) {
                const iw = ow * s - pad + kw;
                if (iw < 0 || iw >= inW) continue;
                const xi = ((i * cin + ci) * inH + ih) * inW + iw;
                const wi = ((co * cin + ci) * k + kh) * k + kw;
                dw[wi] += d * x[xi];
                dx[xi] += d * w[wi];
              }
            }
          }
        }
      }
    }
  }
}

/**
 * The compute of one Conv2d, one implementation per backend; owns its batch
 * buffers. Returned arrays are views it overwrites on its next call.
 */
export interface ConvKernel {
  /** y (n, cout, outH, outW) = conv(x, w) + b; train keeps what backward needs. */
  forward(x: Float32Array, n: number, train: boolean, w: Float32Array, b: Float32Array): Float32Array;
  /**
   * For the last training forward of n samples: overwrites dw, db; returns dx (n, cin, inH, inW).
   * With seg (a rank block): dw, db per rank segment, summed into seg; dw, db its rounding.
   */
  backward(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): Float32Array;
  /**
   * Optional: backward in two passes with backward's bits, dx first (returned), then dw, db
   * from the same dy (Layer.backwardInput). Kernels without it run backward whole.
   */
  backwardDx?(dy: Float32Array, n: number, w: Float32Array): Float32Array;
  backwardParams?(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): void;
  /**
   * For cross-iteration BN (cbn-taylor.ts), from the last training forward's
   * samples first..first+n−1, their columns p and outputs y: overwrites
   * colSums (R) = Σ p and yColSums (cout, R) = Σ y_c·pᵀ over samples and positions, in float64.
   */
  statsSums(colSums: Float64Array, yColSums: Float64Array, first: number, n: number): void;
}

/** The plain TypeScript path: the reference twin of ConvWasm. */
export class ConvJs implements ConvKernel {
  private readonly y: BatchBuffer; // (N, cout, outH, outW)
  private readonly dx: BatchBuffer; // (N, cin, inH, inW)
  /** Last training input, copied: backward rebuilds each sample's columns from it. */
  private readonly xSaved: BatchBuffer; // (N, cin, inH, inW)
  private readonly cols: Float32Array; // (R, outH·outW), one sample at a time
  private readonly dcols: Float32Array; // (R, outH·outW)
  private readonly dwSum: Float64Array; // (cout, R), summed over samples in float64

  constructor(private readonly g: ConvGeometry) {
    const rows = g.cin * g.kernel * g.kernel;
    const plane = g.outH * g.outW;
    this.y = new BatchBuffer(g.cout * plane);
    this.dx = new BatchBuffer(g.cin * g.inH * g.inW);
    this.xSaved = new BatchBuffer(g.cin * g.inH * g.inW);
    this.cols = new Float32Array(rows * plane);
    this.dcols = new Float32Array(rows * plane);
    this.dwSum = new Float64Array(g.cout * rows);
  }

  /** Per sample: im2col, then y = W·cols + b. 2·n·cout·R·outH·outW flops. */
  forward(x: Float32Array, n: number, train: boolean, w: Float32Array, b: Float32Array): Float32Array {
    const g = this.g;
    const inSize = g.cin * g.inH * g.inW;
    const plane = g.outH * g.outW;
    const rows = g.cin * g.kernel * g.kernel;
    const y = this.y.view(n);
    for (let i = 0; i < n; i++) {
      im2col(this.cols, x, i * inSize, g);
      const yOff = i * g.cout * plane;
      for (let co = 0; co < g.cout; co++) y.fill(b[co], yOff + co * plane, yOff + (co + 1) * plane);
      gemmAcc(y, yOff, w, 0, rows, 1, this.cols, 0, g.cout, rows, plane);
    }
    if (train) this.xSaved.view(n).set(x.subarray(0, n * inSize));
    return y;
  }

  /** Per sample: im2col again, row sums and y·colsᵀ (float64 sums of float32 products). 2·n·cout·R·P flops. */
  statsSums(colSums: Float64Array, yColSums: Float64Array, first: number, n: number): void {
    const g = this.g;
    const inSize = g.cin * g.inH * g.inW;
    const plane = g.outH * g.outW;
    const rows = g.cin * g.kernel * g.kernel;
    const x = this.xSaved.view(first + n);
    const y = this.y.view(first + n);
    colSums.fill(0);
    yColSums.fill(0);
    for (let i = first; i < first + n; i++) {
      im2col(this.cols, x, i * inSize, g);
      for (let r = 0; r < rows; r++) {
        let s = 0;
        for (let j = r * plane, end = j + plane; j < end; j++) s += this.cols[j]!;
        colSums[r]! += s;
      }
      gemmNTAcc(yColSums, y, i * g.cout * plane, this.cols, g.cout, rows, plane);
    }
  }

  /**
   * Per sample: dW += dy·colsᵀ, dcols = Wᵀ·dy, dx = col2im(dcols); db = Σ dy.
   * 4·n·cout·R·outH·outW flops plus an im2col per sample. With rank segments, dW
   * and db per segment as a batch of its samples alone, added into seg in float64.
   */
  backward(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): Float32Array {
    const g = this.g;
    const inSize = g.cin * g.inH * g.inW;
    const plane = g.outH * g.outW;
    const rows = g.cin * g.kernel * g.kernel;
    const x = this.xSaved.view(n);
    const dx = this.dx.view(n);
    const b = segmentLength("conv", n, seg);
    dx.fill(0);
    beginSegments(seg);
    for (let r = 0; r < (seg?.count ?? 1); r++) {
      const first = r * b, end = first + b;
      this.dwSum.fill(0);
      for (let co = 0; co < g.cout; co++) {
        let s = 0;
        for (let i = first; i < end; i++) {
          const off = (i * g.cout + co) * plane;
          for (let j = 0; j < plane; j++) s += dy[off + j];
        }
        db[co] = s;
      }
      for (let i = first; i < end; i++) {
        const dyOff = i * g.cout * plane;
        im2col(this.cols, x, i * inSize, g);
        gemmNTAcc(this.dwSum, dy, dyOff, this.cols, g.cout, rows, plane);
        this.dcols.fill(0);
        gemmAcc(this.dcols, 0, w, 0, 1, rows, dy, dyOff, rows, g.cout, plane);
        col2imAdd(dx, i * inSize, this.dcols, g);
      }
      for (let t = 0; t < dw.length; t++) dw[t] = this.dwSum[t];
      addSegment(seg, dw, db);
    }
    endSegments(seg, dw, db);
    return dx;
  }
}

export class Conv2d implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  readonly geometry: ConvGeometry;
  readonly weight: Param; // (cout, cin, k, k) = (cout, R) with R = cin·k·k
  /** (cout); without bias (`hasBias` false) zeros that are not a param and whose grad is scratch. */
  readonly bias: Param; // (cout)
  private readonly kernel: ConvKernel;
  private savedN = -1;
  private segments: RankSegments | null = null;
  /** backwardInput's dy and n, until finishParamGrads makes the param grads from them. */
  private pendingDy: Float32Array | null = null;
  private pendingN = 0;

  /** `backend` defaults to the process-wide choice (kernels/backend.ts); "native" needs the addon built. */
  constructor(
    readonly name: string,
    cin: number, cout: number, kernel: number, stride: number, padding: number, inH: number, inW: number,
    rng: Rng,
    readonly backend: KernelBackend = convKernelBackend(),
    readonly hasBias = true,
  ) {
    const g = convGeometry(name, cin, cout, kernel, stride, padding, inH, inW);
    this.geometry = g;
    this.inShape = [cin, inH, inW];
    this.outShape = [cout, g.outH, g.outW];
    const rows = cin * kernel * kernel;
    const w = new Float32Array(cout * rows);
    const b = new Float32Array(cout);
    // Without bias PyTorch draws the weight only: the bias stays zero and takes no numbers from the stream.
    initFanInUniform(w, hasBias ? b : new Float32Array(0), rows, rng);
    this.weight = { name: `${name}.weight`, value: w, grad: new Float32Array(w.length), shape: [cout, cin, kernel, kernel] };
    this.bias = { name: `${name}.bias`, value: b, grad: new Float32Array(b.length), shape: [cout] };
    this.kernel = backend === "wasm" ? new ConvWasm(g) : backend === "native" ? new ConvNative(g, requireNative(name)) : new ConvJs(g);
  }

  params(): Param[] {
    return this.hasBias ? [this.weight, this.bias] : [this.weight];
  }

  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const g = this.geometry;
    if (this.pendingDy) throw new RangeError(`layer ${this.name}: forward before the last backward's weight gradients were made (finishParamGrads)`);
    requireLength(this.name, "x", x, n * g.cin * g.inH * g.inW);
    const y = this.kernel.forward(x, n, train, this.weight.value, this.bias.value);
    if (train) this.savedN = n;
    return y;
  }

  backward(dy: Float32Array, n: number): Float32Array {
    if (this.pendingDy) throw new RangeError(`layer ${this.name}: backward before the last backward's weight gradients were made (finishParamGrads)`);
    requireSaved(this.name, n, this.savedN);
    const g = this.geometry;
    requireLength(this.name, "dy", dy, n * g.cout * g.outH * g.outW);
    return this.kernel.backward(dy, n, this.weight.value, this.weight.grad, this.bias.grad, this.segments);
  }

  /** dx now, dw and db at finishParamGrads (the kernel's two passes: backward's bits); whole backward on kernels without them. */
  backwardInput(dy: Float32Array, n: number): Float32Array {
    const k = this.kernel;
    if (!k.backwardDx || !k.backwardParams) return this.backward(dy, n);
    requireSaved(this.name, n, this.savedN);
    const g = this.geometry;
    requireLength(this.name, "dy", dy, n * g.cout * g.outH * g.outW);
    this.pendingDy = dy;
    this.pendingN = n;
    return k.backwardDx(dy, n, this.weight.value);
  }

  finishParamGrads(): void {
    const dy = this.pendingDy;
    if (!dy) return;
    this.pendingDy = null;
    this.kernel.backwardParams!(dy, this.pendingN, this.weight.value, this.weight.grad, this.bias.grad, this.segments);
  }

  setRankSegments(r: number): void {
    this.segments = r > 1 ? rankSegments(r, this.weight, this.bias) : null;
  }

  /** See ConvKernel.statsSums; samples first..first+n−1 of the last training forward. */
  statsSums(colSums: Float64Array, yColSums: Float64Array, first: number, n: number): void {
    if (first + n > this.savedN) throw new RangeError(`layer ${this.name}: statistics of samples ${first}..${first + n - 1} after a training forward of ${this.savedN}`);
    this.kernel.statsSums(colSums, yColSums, first, n);
  }
}
