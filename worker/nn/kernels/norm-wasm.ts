// A normalization layer's passes over the data in WebAssembly SIMD (norm-kernels.ts),
// in the layer's own wasm memory, with shared/stats.ts's signatures and results, bit
// for bit (test/norm-kernels.test.ts). Staging x or dy is deferred to the first pass,
// which copies and reads it a 64 KB block at a time while the block is in cache.
// Not the math between the passes (invStd, merges, running stats: shared/stats.ts).

import type { Moments } from "../../../shared/stats.js";
import { WasmArena } from "./arena.js";
import type { BatchView, NormPasses } from "./norm-passes.js";

/** An input staged but not copied yet: src goes to dst (n samples). */
interface Pending {
  src: Float32Array;
  dst: Float32Array;
  n: number;
}

/** Floats per staging block: 64 KB, well inside L2 beside the other streams of a pass. */
const BLOCK_FLOATS = 16384;

/** Float offsets; per-channel regions hold C float64 (2C floats), sums 2C float64. */
interface NormRegions {
  mean: number;
  m2: number;
  k1: number;
  k2: number;
  k3: number;
  k4: number;
  sums: number;
  /** (N, C, S); first of the batch-sized regions, so its offset and contents survive growth. */
  xhat: number;
  /** (N, C, S): staged x, then y over it. */
  y: number;
  /** (N, C, S): staged dy, then dx over it. */
  dx: number;
}

export class NormWasm implements NormPasses {
  readonly backend = "wasm";
  readonly y: BatchView;
  readonly xhat: BatchView;
  readonly dx: BatchView;
  private readonly arena = new WasmArena();
  private at!: NormRegions;
  private f64!: Float64Array;
  private capacity = -1;
  private readonly views = { y: new Map<number, Float32Array>(), xhat: new Map<number, Float32Array>(), dx: new Map<number, Float32Array>() };
  /** A staged input (x into y's buffer, or dy into dx's) not copied yet: the next pass copies it. */
  private pending: Pending | null = null;
  /** Blocks of the last source staged, cached so a fixed source allocates no views per step. */
  private blockSrc: Float32Array | null = null;
  private blockViews: Float32Array[] = [];
  private readonly blockSamples: number;

  constructor(private readonly perSample: number, private readonly channels: number) {
    this.blockSamples = Math.max(1, Math.floor(BLOCK_FLOATS / Math.max(1, perSample)));
    this.reserve(1);
    this.y = { view: (n) => this.view("y", n) };
    this.xhat = { view: (n) => this.view("xhat", n) };
    this.dx = { view: (n) => this.view("dx", n) };
  }

  private reserve(n: number): void {
    if (n <= this.capacity) return;
    const c2 = 2 * this.channels, len = n * this.perSample;
    this.at = this.arena.layout({
      mean: c2, m2: c2, k1: c2, k2: c2, k3: c2, k4: c2, sums: 2 * c2, xhat: len, y: len, dx: len,
    });
    this.f64 = new Float64Array(this.arena.f32.buffer);
    this.capacity = n;
    for (const m of Object.values(this.views)) m.clear();
  }

  private view(which: "y" | "xhat" | "dx", n: number): Float32Array {
    this.reserve(n);
    return this.arena.cachedView(this.views[which], this.at[which], n * this.perSample, n);
  }

  /** y's buffer, which will hold x when the next pass runs (it copies x then). */
  stageInput(x: Float32Array, n: number): Float32Array {
    return this.stage(x, this.view("y", n), n);
  }

  /** dx's buffer, which will hold dy when the next pass runs. */
  stageGrad(dy: Float32Array, n: number): Float32Array {
    return this.stage(dy, this.view("dx", n), n);
  }

  private stage(src: Float32Array, dst: Float32Array, n: number): Float32Array {
    this.flush();
    if (src.length < dst.length) throw new RangeError(`NormWasm: ${src.length} values staged for ${n} samples of ${this.perSample}`);
    if (src !== dst) this.pending = { src, dst, n };
    return dst;
  }

  /**
   * The pending staged input if `target` is where it goes: the caller then copies
   * it block by block (copyBlock), each block just before its pass reads it.
   * Otherwise copies any pending input whole and returns null.
   */
  private takePending(target: Float32Array | null): Pending | null {
    const p = this.pending;
    if (!p) return null;
    this.pending = null;
    if (target === p.dst) {
      if (p.src !== this.blockSrc) {
        this.blockSrc = p.src;
        this.blockViews = [];
      }
      return p;
    }
    this.arena.f32.set(p.src.length === p.dst.length ? p.src : p.src.subarray(0, p.dst.length), p.dst.byteOffset >>> 2);
    return null;
  }

  /** Copies samples [i0, i0 + nb) (block number blk) of a pending input; the block views are cached per source. */
  private copyBlock(p: Pending, blk: number, i0: number, nb: number): void {
    const per = this.perSample;
    let v = this.blockViews[blk];
    if (!v || v.length !== nb * per) {
      v = p.src.subarray(i0 * per, (i0 + nb) * per);
      this.blockViews[blk] = v;
    }
    this.arena.f32.set(v, (p.dst.byteOffset >>> 2) + i0 * per);
  }

  private flush(): void {
    this.takePending(null);
  }

  /** Float offset of a view of this memory; anything else is a caller's bug. */
  private at32(a: Float32Array, what: string): number {
    if (a.buffer !== this.arena.f32.buffer) {
      throw new RangeError(`NormWasm: ${what} is not a view of this layer's WebAssembly memory (stage it, or take it from y/xhat/dx)`);
    }
    return a.byteOffset >>> 2;
  }

  /** Copies C values into the float64 region at float offset off. */
  private put(off: number, values: ArrayLike<number>, c: number): void {
    const f64 = this.f64, o = off >>> 1;
    for (let ch = 0; ch < c; ch++) f64[o + ch] = values[ch]!;
  }

  localMoments(out: Moments, x: Float32Array, n: number, c: number, s: number): Moments {
    const { mean, m2 } = out;
    const count = n * s;
    out.count = count;
    if (count === 0) {
      mean.fill(0);
      m2.fill(0);
      return out;
    }
    const at = this.at, k = this.arena.kernels, f64 = this.f64;
    const xo = this.at32(x, "x");
    const mo = at.mean >>> 1, m2o = at.m2 >>> 1;
    f64.fill(0, mo, mo + c);
    f64.fill(0, m2o, m2o + c);
    const p = this.takePending(x), per = c * s, b = this.blockSamples;
    if (!p) k.bn_sum(at.mean, xo, n, c, s);
    for (let i0 = 0, blk = 0; p && i0 < n; i0 += b, blk++) {
      const nb = Math.min(b, n - i0);
      this.copyBlock(p, blk, i0, nb);
      k.bn_sum(at.mean, xo + i0 * per, nb, c, s);
    }
    for (let ch = 0; ch < c; ch++) {
      mean[ch] = f64[mo + ch]! / count;
      f64[mo + ch] = mean[ch]!;
    }
    k.bn_sqdev(at.m2, xo, at.mean, n, c, s);
    for (let ch = 0; ch < c; ch++) m2[ch] = f64[m2o + ch]!;
    return out;
  }

  normalizeForward(
    y: Float32Array, xhat: Float32Array, x: Float32Array, mean: Float64Array, invStd: Float64Array,
    gamma: Float32Array, beta: Float32Array, n: number, c: number, s: number,
  ): void {
    const at = this.at;
    this.flush();
    const yo = this.at32(y, "y"), ho = this.at32(xhat, "xhat"), xo = this.at32(x, "x");
    this.put(at.k1, mean, c);
    this.put(at.k2, invStd, c);
    this.put(at.k3, gamma, c);
    this.put(at.k4, beta, c);
    this.arena.kernels.bn_normalize(yo, ho, xo, at.k1, at.k2, at.k3, at.k4, n, c, s);
  }

  localGradSums(out: Float64Array, dy: Float32Array, xhat: Float32Array, n: number, c: number, s: number): Float64Array {
    const at = this.at, k = this.arena.kernels, f64 = this.f64, o = at.sums >>> 1;
    const dyo = this.at32(dy, "dy"), ho = this.at32(xhat, "xhat"), per = c * s;
    f64.fill(0, o, o + 2 * c);
    const p = this.takePending(dy), b = this.blockSamples;
    if (!p) k.bn_grad_sums(at.sums, dyo, ho, n, c, s);
    for (let i0 = 0, blk = 0; p && i0 < n; i0 += b, blk++) {
      const nb = Math.min(b, n - i0);
      this.copyBlock(p, blk, i0, nb);
      k.bn_grad_sums(at.sums, dyo + i0 * per, ho + i0 * per, nb, c, s);
    }
    for (let i = 0; i < 2 * c; i++) out[i] = f64[o + i]!;
    return out;
  }

  normalizeBackward(
    dx: Float32Array, dy: Float32Array, xhat: Float32Array, globalSums: Float64Array, globalCount: number,
    invStd: Float64Array, gamma: Float32Array, n: number, c: number, s: number,
  ): void {
    const at = this.at, f64 = this.f64;
    this.flush();
    const k1 = at.k1 >>> 1, k2 = at.k2 >>> 1, k3 = at.k3 >>> 1;
    // The per-channel constants exactly as normalizeBackward computes them.
    for (let ch = 0; ch < c; ch++) {
      f64[k1 + ch] = gamma[ch]! * invStd[ch]!;
      f64[k2 + ch] = globalSums[ch]! / globalCount;
      f64[k3 + ch] = globalSums[c + ch]! / globalCount;
    }
    this.arena.kernels.bn_dx(this.at32(dx, "dx"), this.at32(dy, "dy"), this.at32(xhat, "xhat"), at.k1, at.k2, at.k3, n, c, s);
  }

  normalizeEval(
    y: Float32Array, x: Float32Array, runningMean: Float64Array, runningVar: Float64Array,
    gamma: Float32Array, beta: Float32Array, eps: number, n: number, c: number, s: number,
  ): void {
    const at = this.at, f64 = this.f64, k = this.arena.kernels;
    const k2 = at.k2 >>> 1;
    this.put(at.k1, runningMean, c);
    for (let ch = 0; ch < c; ch++) f64[k2 + ch] = gamma[ch]! / Math.sqrt(runningVar[ch]! + eps);
    this.put(at.k3, beta, c);
    const yo = this.at32(y, "y"), xo = this.at32(x, "x"), per = c * s;
    const p = this.takePending(x), b = this.blockSamples;
    if (!p) k.bn_affine(yo, xo, at.k1, at.k2, at.k3, n, c, s);
    for (let i0 = 0, blk = 0; p && i0 < n; i0 += b, blk++) {
      const nb = Math.min(b, n - i0);
      this.copyBlock(p, blk, i0, nb);
      k.bn_affine(yo + i0 * per, xo + i0 * per, at.k1, at.k2, at.k3, nb, c, s);
    }
  }
}
