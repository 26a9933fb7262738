// Max pooling over NCHW, square window k, stride s, no padding, floor output size,
// as PyTorch's MaxPool2d(k, s). Forward records each window's argmax; on ties the
// first element in row-major window order wins, as in PyTorch. Three paths, the same
// results bit for bit: the TypeScript loops here (the reference, SYNCBN_KERNELS=js),
// WebAssembly kernels choosing with `select` (the loops' compare branch is
// unpredictable on real data, ~30 ns per window), and the native addon's loops on
// the arrays themselves (--kernels native). Not average pooling, not padded, not
// ceil_mode.

import { BatchRegions } from "./kernels/arena.js";
import { stepKernelBackend, type KernelBackend } from "./kernels/backend.js";
import { nativeKernels, type NativeKernels } from "./kernels/native.js";
import { BatchBuffer, type Layer, type Param } from "./layer.js";
import { requireInt, requireLength, requireSaved } from "./linear.js";

/** The wasm path: x and dy staged, y, the argmax (i32) and dx in the layer's own memory. */
class MaxPoolWasm {
  private readonly r: BatchRegions<"x" | "y" | "am" | "dy" | "dx">;

  constructor(private readonly p: MaxPool2d) {
    const inSize = p.channels * p.inH * p.inW, outSize = p.channels * p.outH * p.outW;
    this.r = new BatchRegions({ x: inSize, y: outSize, am: outSize, dy: outSize, dx: inSize });
  }

  forward(x: Float32Array, n: number): Float32Array {
    const { channels, inH, inW, outH, outW, kernel, stride } = this.p;
    const at = this.r.at(n);
    this.r.arena.copyIn(x, n * channels * inH * inW, at.x);
    this.r.arena.kernels.maxpool(at.y, at.am, at.x, n * channels, inH, inW, kernel, stride, outH, outW);
    return this.r.view("y", n);
  }

  backward(dy: Float32Array, n: number): Float32Array {
    const { channels, inH, inW, outH, outW } = this.p;
    const at = this.r.at(n), outLen = n * channels * outH * outW;
    this.r.arena.copyIn(dy, outLen, at.dy);
    this.r.arena.kernels.maxpool_backward(at.dx, at.dy, at.am, outLen, n * channels * inH * inW);
    return this.r.view("dx", n);
  }
}

export class MaxPool2d implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  readonly outH: number;
  readonly outW: number;
  /** The JS path's buffers (the wasm path keeps its own in its memory). */
  private readonly y: BatchBuffer; // (N, C, outH, outW)
  private readonly dx: BatchBuffer; // (N, C, inH, inW)
  /** Flat index into x of each output's max; grown to the largest batch seen. */
  private argmax = new Int32Array(0); // (N, C, outH, outW)
  private savedN = -1;
  private readonly wasm: MaxPoolWasm | null;
  /** The addon (native/elementwise.cc) on the JS buffers above, or null. */
  private readonly native: NativeKernels | null;

  constructor(
    readonly name: string,
    readonly channels: number,
    readonly inH: number,
    readonly inW: number,
    readonly kernel = 2,
    readonly stride = 2,
    readonly backend: KernelBackend = stepKernelBackend(),
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
    this.wasm = backend === "wasm" ? new MaxPoolWasm(this) : null;
    this.native = backend === "native" ? nativeKernels() : null;
  }

  params(): Param[] {
    return [];
  }

  /** One pass over each window: n·C·outH·outW·k² comparisons. */
  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const { channels, inH, inW, outH, outW, kernel: k, stride: s } = this;
    requireLength(this.name, "x", x, n * channels * inH * inW);
    if (this.wasm) {
      this.savedN = train ? n : -1;
      return this.wasm.forward(x, n);
    }
    const y = this.y.view(n);
    const outLen = n * channels * outH * outW;
    if (this.argmax.length < outLen) this.argmax = new Int32Array(outLen);
    const argmax = this.argmax;
    if (this.native) {
      this.native.maxpoolForward(y, argmax, x, n * channels, inH, inW, k, s, outH, outW);
      this.savedN = train ? n : -1;
      return y;
    }
    let o = 0;
    for (let plane = 0; plane < n * channels; plane++) {
      const pOff = plane * inH * inW;
      for (let oh = 0; oh < outH; oh++) {
        for (let ow = 0; ow < outW; ow++) {
          const start = pOff + oh * s * inW + ow * s;
          let best = start;
          let bestV = Number.NEGATIVE_INFINITY;
          for (let kh = 0; kh < k; kh++) {
            const row = start + kh * inW;
            for (let kw = 0; kw < k; kw++) {
              const v = x[row + kw];
              // Strict > keeps the first of equal maxima; a NaN wins, as in PyTorch.
              if (v > bestV || v !== v) {
                bestV = v;
                best = row + kw;
              }
            }
          }
          y[o] = bestV;
          argmax[o] = best;
          o++;
        }
      }
    }
    this.savedN = train ? n : -1; // an eval forward overwrites what backward needs
    return y;
  }

  /** dx[argmax] += dy: overlapping windows (stride < k) add up. */
  backward(dy: Float32Array, n: number): Float32Array {
    requireSaved(this.name, n, this.savedN);
    const outLen = n * this.channels * this.outH * this.outW;
    requireLength(this.name, "dy", dy, outLen);
    if (this.wasm) return this.wasm.backward(dy, n);
    const dx = this.dx.view(n);
    if (this.native) {
      this.native.maxpoolBackward(dx, dy, this.argmax, outLen, dx.length);
      return dx;
    }
    dx.fill(0);
    const argmax = this.argmax;
    for (let o = 0; o < outLen; o++) dx[argmax[o]] += dy[o];
    return dx;
  }
}
