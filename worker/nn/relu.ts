// Elementwise ReLU, y = max(x, 0), on any per-sample shape. NaN passes through as
// in PyTorch. Three paths with the same results bit for bit: plain TypeScript loops
// (the reference, SYNCBN_KERNELS=js), WebAssembly SIMD masks in the layer's own
// wasm memory (at ~10 ns per element the loops were a tenth of a resnet step, their
// sign branch being unpredictable), and the native addon's loops on the arrays
// themselves (--kernels native, the default where it loads: no copy into wasm
// memory). Not a leaky or parametric ReLU, and not in place: it owns its output.

import { stepKernelBackend, type KernelBackend } from "./kernels/backend.js";
import { nativeKernels, type NativeKernels } from "./kernels/native.js";
import { BatchRegions } from "./kernels/arena.js";
import { requestedComputeThreads } from "./kernels/threads.js";
import { BatchBuffer, sizeOf, type Layer, type Param } from "./layer.js";
import { requireLength, requireSaved } from "./linear.js";

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
  private readonly r: BatchRegions<"y" | "dx">;

  constructor(private readonly size: number) {
    this.r = new BatchRegions({ y: size, dx: size });
  }

  forward(x: Float32Array, n: number): Float32Array {
    const at = this.r.at(n), len = n * this.size;
    this.r.arena.copyIn(x, len, at.y);
    this.r.arena.kernels.relu(at.y, at.y, len);
    return this.r.view("y", n);
  }

  backward(dy: Float32Array, n: number): Float32Array {
    const at = this.r.at(n), len = n * this.size;
    this.r.arena.copyIn(dy, len, at.dx);
    this.r.arena.kernels.relu_backward(at.dx, at.dx, at.y, len);
    return this.r.view("dx", n);
  }
}

/** The addon's passes (native/elementwise.cc) on JS buffers: x and dy are read where they are. */
class ReluNative implements ReluPasses {
  private readonly y: BatchBuffer; // (N, ...shape)
  private readonly dx: BatchBuffer; // (N, ...shape)

  constructor(private readonly k: NativeKernels, private readonly size: number, private readonly threads = requestedComputeThreads()) {
    this.y = new BatchBuffer(size);
    this.dx = new BatchBuffer(size);
  }

  forward(x: Float32Array, n: number): Float32Array {
    const y = this.y.view(n);
    this.k.relu(y, x, n * this.size, this.threads);
    return y;
  }

  backward(dy: Float32Array, n: number): Float32Array {
    const dx = this.dx.view(n);
    this.k.reluBackward(dx, dy, this.y.view(n), n * this.size, this.threads);
    return dx;
  }
}

export class ReLU implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  private readonly size: number;
  private readonly passes: ReluPasses;
  private savedN = -1;

  constructor(readonly name: string, shape: readonly number[], readonly backend: KernelBackend = stepKernelBackend()) {
    this.inShape = [...shape];
    this.outShape = [...shape];
    this.size = sizeOf(shape);
    const native = backend === "native" ? nativeKernels() : null;
    this.passes = native ? new ReluNative(native, this.size) : backend === "wasm" ? new ReluWasm(this.size) : new ReluJs(this.size);
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
    requireSaved(this.name, n, this.savedN);
    requireLength(this.name, "dy", dy, n * this.size);
    return this.passes.backward(dy, n);
  }
}
