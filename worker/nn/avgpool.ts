// Average pooling over NCHW: AvgPool2d (square window k, stride s, no padding,
// floor output size, as PyTorch's AvgPool2d(k, s)) and the global average pool
// (C, H, W) → (C) that ends a ResNet, as PyTorch's AdaptiveAvgPool2d(1) + flatten.
// Sums in float64, one rounding per output. Not padded, not ceil_mode.

import { BatchBuffer, type Layer, type Param } from "./layer.js";
import { requireInt, requireLength, requireSaved } from "./linear.js";

export class AvgPool2d implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  readonly outH: number;
  readonly outW: number;
  private readonly y: BatchBuffer; // (N, C, outH, outW)
  private readonly dx: BatchBuffer; // (N, C, inH, inW)
  private savedN = -1;

  constructor(
    readonly name: string,
    readonly channels: number,
    readonly inH: number,
    readonly inW: number,
    readonly kernel = 2,
    readonly stride = 2,
  ) {
    requireInt(name, "channels", channels, 1);
    requireInt(name, "kernel", kernel, 1);
    requireInt(name, "stride", stride, 1);
    requireInt(name, "inH", inH, kernel);
    requireInt(name, "inW", inW, kernel);
    this.outH = Math.floor((inH - kernel) / stride) + 1;
    this.outW = Math.floor((inW - kernel) / stride) + 1;
    this.inShape = [channels, inH, inW];
    this.outShape = [channels, this.outH, this.outW];
    this.y = new BatchBuffer(channels * this.outH * this.outW);
    this.dx = new BatchBuffer(channels * inH * inW);
  }

  params(): Param[] {
    return [];
  }

  /** y = mean of each k×k window: n·C·outH·outW·k² adds. */
  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const { channels, inH, inW, outH, outW, kernel: k, stride: s } = this;
    requireLength(this.name, "x", x, n * channels * inH * inW);
    const y = this.y.view(n);
    const inv = 1 / (k * k);
    let o = 0;
    for (let plane = 0; plane < n * channels; plane++) {
      const pOff = plane * inH * inW;
      for (let oh = 0; oh < outH; oh++) {
        for (let ow = 0; ow < outW; ow++) {
          const start = pOff + oh * s * inW + ow * s;
          let sum = 0;
          for (let kh = 0; kh < k; kh++) for (let kw = 0; kw < k; kw++) sum += x[start + kh * inW + kw]!;
          y[o++] = sum * inv;
        }
      }
    }
    this.savedN = train ? n : -1;
    return y;
  }

  /** dx[window] += dy/k²: overlapping windows (stride < k) add up. */
  backward(dy: Float32Array, n: number): Float32Array {
    requireSaved(this.name, n, this.savedN);
    const { channels, inH, inW, outH, outW, kernel: k, stride: s } = this;
    requireLength(this.name, "dy", dy, n * channels * outH * outW);
    const dx = this.dx.view(n);
    dx.fill(0);
    const inv = 1 / (k * k);
    let o = 0;
    for (let plane = 0; plane < n * channels; plane++) {
      const pOff = plane * inH * inW;
      for (let oh = 0; oh < outH; oh++) {
        for (let ow = 0; ow < outW; ow++) {
          const start = pOff + oh * s * inW + ow * s;
          const g = dy[o++]! * inv;
          for (let kh = 0; kh < k; kh++) for (let kw = 0; kw < k; kw++) dx[start + kh * inW + kw]! += g;
        }
      }
    }
    return dx;
  }
}

/** (C, H, W) → (C): the mean over each channel's H·W plane. */
export class GlobalAvgPool implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  private readonly plane: number;
  private readonly y: BatchBuffer; // (N, C)
  private readonly dx: BatchBuffer; // (N, C, H, W)
  private savedN = -1;

  constructor(readonly name: string, readonly channels: number, h: number, w: number) {
    requireInt(name, "channels", channels, 1);
    requireInt(name, "H", h, 1);
    requireInt(name, "W", w, 1);
    this.inShape = [channels, h, w];
    this.outShape = [channels];
    this.plane = h * w;
    this.y = new BatchBuffer(channels);
    this.dx = new BatchBuffer(channels * this.plane);
  }

  params(): Param[] {
    return [];
  }

  /** One pass over x: n·C·H·W adds in float64. */
  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const P = this.plane, rows = n * this.channels;
    requireLength(this.name, "x", x, rows * P);
    const y = this.y.view(n);
    for (let r = 0; r < rows; r++) {
      let sum = 0;
      const off = r * P;
      for (let j = 0; j < P; j++) sum += x[off + j]!;
      y[r] = sum / P;
    }
    this.savedN = train ? n : -1;
    return y;
  }

  /** dx = dy/(H·W) over each plane. */
  backward(dy: Float32Array, n: number): Float32Array {
    requireSaved(this.name, n, this.savedN);
    const P = this.plane, rows = n * this.channels;
    requireLength(this.name, "dy", dy, rows);
    const dx = this.dx.view(n);
    for (let r = 0; r < rows; r++) dx.fill(dy[r]! / P, r * P, (r + 1) * P);
    return dx;
  }
}
