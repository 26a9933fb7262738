// One layer's WebAssembly memory and kernel instance: named float regions laid
// out back to back for a batch capacity, grown (never shrunk) when a larger batch
// arrives. Growing detaches every view of the old buffer, so callers take views
// only through `f32` after `layout`, and cache them per layout.
// Not an allocator: a layer owns its arena and lays out all its regions at once.

import { sharedKernelModule, wasmApi, wasmKernelModule, type WasmMemory } from "./backend.js";
import { SHARED_MAX_PAGES } from "./wasm-asm.js";
import { KERNEL_SLACK_FLOATS, type KernelExports } from "./wasm-kernels.js";

const PAGE_BYTES = 65536;

export class WasmArena {
  readonly kernels: KernelExports;
  /** Shared (a SharedArrayBuffer underneath) when built for compute threads: they run this module on it too. */
  readonly memory: WasmMemory;
  /** Float view of the whole memory; replaced by every layout that grows it. */
  f32: Float32Array;

  /** `shared`: a shared memory that compute threads can run kernels on (see threads.ts); null module if unavailable. */
  constructor(readonly shared = false) {
    const module = shared ? sharedKernelModule() : wasmKernelModule();
    const api = wasmApi();
    if (module === null || !api) throw new Error(`WebAssembly SIMD kernels${shared ? " on shared memory" : ""} are unavailable in this runtime`);
    this.memory = new api.Memory(shared ? { initial: 1, maximum: SHARED_MAX_PAGES, shared: true } : { initial: 1 });
    const instance = new api.Instance(module, { env: { memory: this.memory } });
    this.kernels = instance.exports as unknown as KernelExports;
    this.f32 = new Float32Array(this.memory.buffer);
  }

  /**
   * The view of floats [off, off + len) for batch size n, cached per n so a fixed
   * batch allocates nothing; callers clear the cache when a layout moves regions.
   */
  cachedView(cache: Map<number, Float32Array>, off: number, len: number, n: number): Float32Array {
    let v = cache.get(n);
    if (!v) {
      v = this.f32.subarray(off, off + len);
      cache.set(n, v);
    }
    return v;
  }

  /**
   * Float offsets of regions with the given float sizes, each 16-byte aligned and
   * followed by KERNEL_SLACK_FLOATS readable floats (GEMM edge blocks read past
   * row ends). Contents of the old layout are not moved.
   */
  layout<K extends string>(sizes: Record<K, number>): Record<K, number> {
    const offsets = {} as Record<K, number>;
    let end = 0;
    for (const key of Object.keys(sizes) as K[]) {
      offsets[key] = end;
      end += Math.ceil((sizes[key] + KERNEL_SLACK_FLOATS) / 4) * 4;
    }
    const needPages = Math.ceil((end * 4) / PAGE_BYTES);
    const havePages = this.memory.buffer.byteLength / PAGE_BYTES;
    if (needPages > havePages) {
      this.memory.grow(needPages - havePages);
      this.f32 = new Float32Array(this.memory.buffer);
    }
    return offsets;
  }

  /** f32[off, off + len) without a new view when `a` is exactly that long (the step loop's case). */
  copyIn(a: Float32Array, len: number, off: number): void {
    this.f32.set(a.length === len ? a : a.subarray(0, len), off);
  }
}

/**
 * An arena whose every region grows with the batch: per-sample float sizes, laid
 * out anew (contents not kept) when a larger batch arrives, and views cached per
 * batch size. The layout of the elementwise layers (ReLU, MaxPool); the conv,
 * linear and norm kernels lay out regions of their own shapes on WasmArena.
 */
export class BatchRegions<K extends string> {
  readonly arena = new WasmArena();
  private capacity = 0;
  private offsets!: Record<K, number>;
  private readonly views = new Map<K, Map<number, Float32Array>>();

  /** Laid out for one sample at once, so an empty batch still gets (empty) views. */
  constructor(private readonly perSample: Record<K, number>) {
    for (const key of Object.keys(perSample) as K[]) this.views.set(key, new Map());
    this.at(1);
  }

  /** Float offsets of the regions for n samples, laying out anew when n is above the capacity. */
  at(n: number): Record<K, number> {
    if (n > this.capacity) {
      const sizes = {} as Record<K, number>;
      for (const key of Object.keys(this.perSample) as K[]) sizes[key] = n * this.perSample[key];
      this.offsets = this.arena.layout(sizes);
      this.capacity = n;
      for (const cache of this.views.values()) cache.clear();
    }
    return this.offsets;
  }

  /** Region `key`'s first n samples (call after at(n) for this n or a larger one). */
  view(key: K, n: number): Float32Array {
    return this.arena.cachedView(this.views.get(key)!, this.offsets[key], n * this.perSample[key], n);
  }
}
