// Padded pooling as PyTorch exports it: Pad2d, a constant border around each
// (C, H, W) plane (−∞ before a max pool, which then never picks it; 0 before an
// average pool counting the border, PyTorch's count_include_pad=True), and
// AvgPool2dExclusive, the average over the in-image part of each window only
// (count_include_pad=False). Windows are square, strides equal; floor output size.
// Not ceil_mode. Sums in float64, one rounding per output.

import { BatchBuffer, type Layer, type Param } from "./layer.js";
import { requireInt, requireLength, requireSaved } from "./linear.js";

/** [top, left, bottom, right] */
export type Pads = readonly [number, number, number, number];

export class Pad2d implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  private readonly outH: number;
  private readonly outW: number;
  private readonly y: BatchBuffer; // (N, C, outH, outW)
  private readonly dx: BatchBuffer; // (N, C, H, W)

  constructor(readonly name: string, readonly channels: number, readonly inH: number, readonly inW: number, readonly pads: Pads, readonly fill: number) {
    for (const p of pads) requireInt(name, "padding", p, 0);
    this.outH = inH + pads[0] + pads[2];
    this.outW = inW + pads[1] + pads[3];
    this.inShape = [channels, inH, inW];
    this.outShape = [channels, this.outH, this.outW];
    this.y = new BatchBuffer(channels * this.outH * this.outW);
    this.dx = new BatchBuffer(channels * inH * inW);
  }

  params(): Param[] {
    return [];
  }

  forward(x: Float32Array, n: number, _train: boolean): Float32Array {
    const { inH, inW, outH, outW, pads } = this;
    requireLength(this.name, "x", x, n * this.channels * inH * inW);
    const y = this.y.view(n);
    y.fill(this.fill);
    for (let plane = 0; plane < n * this.channels; plane++) {
      for (let h = 0; h < inH; h++) {
        const src = (plane * inH + h) * inW;
        y.set(x.subarray(src, src + inW), (plane * outH + h + pads[0]) * outW + pads[1]);
      }
    }
    return y;
  }

  /** dx = the interior of dy: the border is a constant. */
  backward(dy: Float32Array, n: number): Float32Array {
    const { inH, inW, outH, outW, pads } = this;
    requireLength(this.name, "dy", dy, n * this.channels * outH * outW);
    const dx = this.dx.view(n);
    for (let plane = 0; plane < n * this.channels; plane++) {
      for (let h = 0; h < inH; h++) {
        const src = (plane * outH + h + pads[0]) * outW + pads[1];
        dx.set(dy.subarray(src, src + inW), (plane * inH + h) * inW);
      }
    }
    return dx;
  }
}

/** Average over the part of each k×k window (stride s, zero-padded by pads) inside the image. */
export class AvgPool2dExclusive implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  readonly outH: number;
  readonly outW: number;
  private readonly y: BatchBuffer; // (N, C, outH, outW)
  private readonly dx: BatchBuffer; // (N, C, H, W)
  private savedN = -1;

  constructor(readonly name: string, readonly channels: number, readonly inH: number, readonly inW: number, readonly kernel: number, readonly stride: number, readonly pads: Pads) {
    requireInt(name, "kernel", kernel, 1);
    requireInt(name, "stride", stride, 1);
    for (const p of pads) if (!(Number.isInteger(p) && p >= 0 && p < kernel)) requireInt(name, `padding (below the kernel ${kernel})`, -1, 0);
    this.outH = Math.floor((inH + pads[0] + pads[2] - kernel) / stride) + 1;
    this.outW = Math.floor((inW + pads[1] + pads[3] - kernel) / stride) + 1;
    requireInt(name, "output height", this.outH, 1);
    requireInt(name, "output width", this.outW, 1);
    this.inShape = [channels, inH, inW];
    this.outShape = [channels, this.outH, this.outW];
    this.y = new BatchBuffer(channels * this.outH * this.outW);
    this.dx = new BatchBuffer(channels * inH * inW);
  }

  params(): Param[] {
    return [];
  }

  /** The in-image rows (or columns) [lo, hi) of output row o. */
  private span(o: number, pad: number, size: number): [number, number] {
    const start = o * this.stride - pad;
    return [Math.max(0, start), Math.min(size, start + this.kernel)];
  }

  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const { inH, inW, outH, outW, pads } = this;
    requireLength(this.name, "x", x, n * this.channels * inH * inW);
    const y = this.y.view(n);
    let o = 0;
    for (let plane = 0; plane < n * this.channels; plane++) {
      const off = plane * inH * inW;
      for (let oh = 0; oh < outH; oh++) {
        const [h0, h1] = this.span(oh, pads[0], inH);
        for (let ow = 0; ow < outW; ow++) {
          const [w0, w1] = this.span(ow, pads[1], inW);
          let sum = 0;
          for (let h = h0; h < h1; h++) for (let w = w0; w < w1; w++) sum += x[off + h * inW + w]!;
          y[o++] = sum / ((h1 - h0) * (w1 - w0));
        }
      }
    }
    this.savedN = train ? n : -1;
    return y;
  }

  /** dx[window ∩ image] += dy / |window ∩ image|. */
  backward(dy: Float32Array, n: number): Float32Array {
    requireSaved(this.name, n, this.savedN);
    const { inH, inW, outH, outW, pads } = this;
    requireLength(this.name, "dy", dy, n * this.channels * outH * outW);
    const dx = this.dx.view(n);
    dx.fill(0);
    let o = 0;
    for (let plane = 0; plane < n * this.channels; plane++) {
      const off = plane * inH * inW;
      for (let oh = 0; oh < outH; oh++) {
        const [h0, h1] = this.span(oh, pads[0], inH);
        for (let ow = 0; ow < outW; ow++) {
          const [w0, w1] = this.span(ow, pads[1], inW);
          const g = dy[o++]! / ((h1 - h0) * (w1 - w0));
          for (let h = h0; h < h1; h++) for (let w = w0; w < w1; w++) dx[off + h * inW + w]! += g;
        }
      }
    }
    return dx;
  }
}
