// Grouped and depthwise 2-D convolution (PyTorch's Conv2d(groups=G), ONNX Conv
// `group`): G independent convolutions of cin/G → cout/G channels, each run by the
// existing conv kernels (ConvNative, ConvWasm on one thread, or the ConvJs twin, by the backend alone:
// --threads must not change the bits) on views of the one weight
// (cout, cin/G, k, k) and bias. The input channels of a group are gathered into a
// contiguous batch and its output scattered back: correct first, not fast (a
// depthwise conv is G tiny GEMMs). Not dilated or transposed.

import type { Rng } from "../../shared/rng.js";
import { convKernelBackend, type KernelBackend } from "./kernels/backend.js";
import { ConvNative, KEEP_COLUMNS_BYTES } from "./kernels/conv-native.js";
import { ConvWasm } from "./kernels/conv-wasm.js";
import { requireNative } from "./kernels/native.js";
import { requestedComputeThreads } from "./kernels/threads.js";
import { ConvJs, convGeometry, type ConvGeometry, type ConvKernel } from "./conv2d.js";
import { BatchBuffer, type Layer, type Param, type RankSegments } from "./layer.js";
import { initFanInUniform, rankSegments, requireInt, requireLength, requireSaved } from "./linear.js";

export class GroupedConv2d implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  /** One group's geometry: cin/G → cout/G channels. */
  readonly geometry: ConvGeometry;
  readonly weight: Param; // (cout, cin/G, k, k): group g's filters are rows g·cout/G …
  /** (cout); without bias zeros that are not a param and whose grad is scratch. */
  readonly bias: Param;
  private readonly kernels: ConvKernel[];
  private readonly xg: BatchBuffer; // (N, cin/G, H, W) one group's input
  private readonly y: BatchBuffer; // (N, cout, outH, outW)
  private readonly dyg: BatchBuffer; // (N, cout/G, outH, outW) one group's dy
  private readonly dx: BatchBuffer; // (N, cin, H, W)
  /** Per group: its views of Param.grad64 in a rank block, else null. */
  private segments: RankSegments[] | null = null;
  private savedN = -1;

  constructor(
    readonly name: string,
    readonly cin: number, readonly cout: number, readonly groups: number,
    kernel: number, stride: number, padding: number, readonly inH: number, readonly inW: number,
    rng: Rng,
    readonly backend: KernelBackend = convKernelBackend(),
    readonly hasBias = true,
  ) {
    requireInt(name, "groups", groups, 1);
    if (cin % groups !== 0 || cout % groups !== 0) throw new RangeError(`layer ${name}: ${cin} input and ${cout} output channels do not split into ${groups} groups`);
    const g = convGeometry(name, cin / groups, cout / groups, kernel, stride, padding, inH, inW);
    this.geometry = g;
    this.inShape = [cin, inH, inW];
    this.outShape = [cout, g.outH, g.outW];
    const rows = g.cin * kernel * kernel;
    const w = new Float32Array(cout * rows), b = new Float32Array(cout);
    initFanInUniform(w, hasBias ? b : new Float32Array(0), rows, rng); // PyTorch's fan-in is cin/G·k·k
    this.weight = { name: `${name}.weight`, value: w, grad: new Float32Array(w.length), shape: [cout, g.cin, kernel, kernel] };
    this.bias = { name: `${name}.bias`, value: b, grad: new Float32Array(b.length), shape: [cout] };
    // Native: one ConvNative per group, the layer's budget for kept columns shared among them. WebAssembly: one
    // ConvWasm per group kept on this thread whatever --threads says (with compute threads its memory would be
    // shared, reserving 4 GiB of address space each: G of them could exhaust it, a depthwise conv of 512 channels);
    // switching to the twin then, as before, made --threads change the bits. Each kernel gives the same bits on any
    // --threads.
    const native = backend === "native" ? requireNative(name) : null;
    this.kernels = Array.from({ length: groups }, () =>
      native ? new ConvNative(g, native, requestedComputeThreads(), Math.floor(KEEP_COLUMNS_BYTES / groups)) : backend === "wasm" ? new ConvWasm(g, 1) : new ConvJs(g),
    );
    this.xg = new BatchBuffer(g.cin * inH * inW);
    this.y = new BatchBuffer(cout * g.outH * g.outW);
    this.dyg = new BatchBuffer(g.cout * g.outH * g.outW);
    this.dx = new BatchBuffer(cin * inH * inW);
  }

  params(): Param[] {
    return this.hasBias ? [this.weight, this.bias] : [this.weight];
  }

  /** Group gi's slice [gi·len, (gi+1)·len) of a per-group-contiguous array. */
  private static part<T extends Float32Array | Float64Array>(a: T, gi: number, len: number): T {
    return a.subarray(gi * len, (gi + 1) * len) as T;
  }

  /** Copies channels [c0, c0 + count) of every sample of src (n, total, plane) into dst (n, count, plane), or back with `scatter`. */
  private static move(src: Float32Array, dst: Float32Array, n: number, total: number, c0: number, count: number, plane: number, scatter: boolean): void {
    const block = count * plane;
    for (let s = 0; s < n; s++) {
      const wide = (s * total + c0) * plane, narrow = s * block;
      if (scatter) dst.set(src.subarray(narrow, narrow + block), wide);
      else dst.set(src.subarray(wide, wide + block), narrow);
    }
  }

  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const g = this.geometry, G = this.groups;
    const inPlane = this.inH * this.inW, outPlane = g.outH * g.outW;
    requireLength(this.name, "x", x, n * this.cin * inPlane);
    const xg = this.xg.view(n), y = this.y.view(n);
    const wLen = g.cout * g.cin * g.kernel * g.kernel;
    for (let gi = 0; gi < G; gi++) {
      GroupedConv2d.move(x, xg, n, this.cin, gi * g.cin, g.cin, inPlane, false);
      // The kernel keeps what its backward needs (its own copy of the columns or input).
      const yg = this.kernels[gi]!.forward(xg, n, train, GroupedConv2d.part(this.weight.value, gi, wLen), GroupedConv2d.part(this.bias.value, gi, g.cout));
      GroupedConv2d.move(yg, y, n, this.cout, gi * g.cout, g.cout, outPlane, true);
    }
    if (train) this.savedN = n;
    return y;
  }

  /** Overwrites dW, db group by group (each kernel writes its views); dx gathers the groups' dx. */
  backward(dy: Float32Array, n: number): Float32Array {
    requireSaved(this.name, n, this.savedN);
    const g = this.geometry, G = this.groups;
    const inPlane = this.inH * this.inW, outPlane = g.outH * g.outW;
    requireLength(this.name, "dy", dy, n * this.cout * outPlane);
    const dyg = this.dyg.view(n), dx = this.dx.view(n);
    const wLen = g.cout * g.cin * g.kernel * g.kernel;
    for (let gi = 0; gi < G; gi++) {
      GroupedConv2d.move(dy, dyg, n, this.cout, gi * g.cout, g.cout, outPlane, false);
      const part = <T extends Float32Array | Float64Array>(a: T, len: number): T => GroupedConv2d.part(a, gi, len);
      const seg = this.segments?.[gi] ?? null;
      const dxg = this.kernels[gi]!.backward(dyg, n, part(this.weight.value, wLen), part(this.weight.grad, wLen), part(this.bias.grad, g.cout), seg);
      GroupedConv2d.move(dxg, dx, n, this.cin, gi * g.cin, g.cin, inPlane, true);
    }
    return dx;
  }

  setRankSegments(r: number): void {
    const all = r > 1 ? rankSegments(r, this.weight, this.bias) : null;
    const g = this.geometry, wLen = g.cout * g.cin * g.kernel * g.kernel;
    this.segments = all && Array.from({ length: this.groups }, (_, gi) => ({ count: r, dw: GroupedConv2d.part(all.dw, gi, wLen), db: GroupedConv2d.part(all.db, gi, g.cout) }));
  }
}
