// Elementwise ReLU, y = max(x, 0), on any per-sample shape. NaN passes through as
// in PyTorch. Two paths with the same results bit for bit: plain TypeScript loops
// (the reference, SYNCBN_KERNELS=js) and WebAssembly SIMD masks in the layer's own
// wasm memory (the default; at ~10 ns per element the loops were a tenth of a
// resnet step, their sign branch being unpredictable). Not a leaky or parametric
// ReLU, and not in place: it owns its output.

import { kernelBackend, type KernelBackend } from "./kernels/backend.js";
import { WasmArena } from "./kernels/arena.js";
import { BatchBuffer, sizeOf, type Layer, type Param } from "./layer.js";
import { requireLength } from "./linear.js";

/** Where y (the backward mask too: y > 0 exactly where x > 0) and dx live, and the two passes. */
interface ReluPasses {
  forward(x: Float32Array, n: number): Float32Array;
  /** Only after a training forward of n samples. */
  backward(dy: Float32Array, n: number): Float32Array;
}

class ReluJs implements ReluPasses {
  private readonly y: BatchBuffer; // (N, ...shape)
  private readonly dx: BatchBuffer; // (N, ...shape)

  constructor(private readonly size: number) {
    this.y = new BatchBuffer(size);
    this.dx = new BatchBuffer(size);
  }

  forward(x: Float32Array, n: number): Float32Array {
    const len = n * this.size;
    const y = this.y.view(n);
    for (let i = 0; i < len; i++) {
      const v = x[i]!;
      y[i] = v <= 0 ? 0 : v;
    }
    return y;
  }

  /** dx = dy where y > 0 (or NaN), else 0: PyTorch's threshold_backward. */
  backward(dy: Float32Array, n: number): Float32Array {
    const len = n * this.size;
    const y = this.y.view(n);
    const dx = this.dx.view(n);
    for (let i = 0; i < len; i++) dx[i] = y[i]! <= 0 ? 0 : dy[i]!;
    return dx;
  }
}

class ReluWasm implements ReluPasses {
  private readonly arena = new WasmArena();
  private capacity = 0;
  private at!: { y: number; dx: number };
  private readonly yViews = new Map<number, Float32Array>();
  private readonly dxViews = new Map<number, Float32Array>();

  constructor(private readonly size: number) {
    this.reserve(1); // an empty batch still gets (empty) views of a laid-out memory
  }

  /** Lays out y and dx for n samples (contents are not kept: a forward writes y before any backward reads it). */
  private reserve(n: number): void {
    if (n <= this.capacity) return;
    this.at = this.arena.layout({ y: n * this.size, dx: n * this.size });
    this.capacity = n;
    this.yViews.clear();
    this.dxViews.clear();
  }

  forward(x: Float32Array, n: number): Float32Array {
    this.reserve(n);
    const len = n * this.size;
    this.arena.copyIn(x, len, this.at.y);
    this.arena.kernels.relu(this.at.y, this.at.y, len);
    return this.arena.cachedView(this.yViews, this.at.y, len, n);
  }

  backward(dy: Float32Array, n: number): Float32Array {
    const len = n * this.size;
    this.arena.copyIn(dy, len, this.at.dx);
    this.arena.kernels.relu_backward(this.at.dx, this.at.dx, this.at.y, len);
    return this.arena.cachedView(this.dxViews, this.at.dx, len, n);
  }
}

export class ReLU implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  private readonly size: number;
  private readonly passes: ReluPasses;
  private savedN = -1;

  constructor(readonly name: string, shape: readonly number[], readonly backend: KernelBackend = kernelBackend()) {
    this.inShape = [...shape];
    this.outShape = [...shape];
    this.size = sizeOf(shape);
    this.passes = backend === "wasm" ? new ReluWasm(this.size) : new ReluJs(this.size);
  }

  params(): Param[] {
    return [];
  }

  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    requireLength(this.name, "x", x, n * this.size);
    const y = this.passes.forward(x, n);
    this.savedN = train ? n : -1; // an eval forward overwrites what backward needs
    return y;
  }

  /** dx = dy where y > 0 (or NaN), else 0: PyTorch's threshold_backward. */
  backward(dy: Float32Array, n: number): Float32Array {
    if (n !== this.savedN) {
      throw new RangeError(`layer ${this.name}: backward for ${n} samples after a training forward of ${this.savedN}`);
    }
    requireLength(this.name, "dy", dy, n * this.size);
    return this.passes.backward(dy, n);
  }
}
