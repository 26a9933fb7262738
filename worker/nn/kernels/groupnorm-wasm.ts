// GroupNorm's passes over the data in WebAssembly SIMD, in the layer's own wasm
// memory: the BN kernels (norm-kernels.ts) run on rows of a group (moments) or of
// one (sample, channel) (normalize, sums, dx), with per-row constants, so every
// value is the TypeScript path's (groupnorm.ts) bit for bit. Not a layer: GroupNorm
// owns γ, β and picks this or its own loops.

import { flushSegment, type RankSegments } from "../layer.js";
import { WasmArena } from "./arena.js";

/** Float offsets; per-row float64 regions take 2 floats a row. */
interface GroupNormRegions {
  groupSum: number; // (N, G) float64
  groupM2: number; // (N, G) float64
  rowMean: number; // (N, C) float64: the row's group mean; in backward k = invStd
  rowInvStd: number; // (N, C) float64; in backward a = mean of γ·dy over the group
  rowGamma: number; // (N, C) float64
  rowBeta: number; // (N, C) float64; in backward b = mean of γ·dy·xhat over the group
  rowSums: number; // (2, N, C) float64: Σdy, Σdy·xhat per row
  xhat: number; // (N, C, S)
  y: number; // (N, C, S): x staged, then y over it
  dx: number; // (N, C, S): dy staged, then dx over it
}

export class GroupNormWasm {
  private readonly arena = new WasmArena();
  private at!: GroupNormRegions;
  private f64!: Float64Array;
  private capacity = 0;
  private readonly views = { xhat: new Map<number, Float32Array>(), y: new Map<number, Float32Array>(), dx: new Map<number, Float32Array>() };
  /** Per (sample, group) 1/sqrt(var + eps) of the last forward. */
  private groupInvStd = new Float64Array(0);

  constructor(private readonly channels: number, private readonly spatial: number, private readonly groups: number) {
    this.reserve(1);
  }

  private reserve(n: number): void {
    if (n <= this.capacity) return;
    const rowsG = 2 * n * this.groups, rowsC = 2 * n * this.channels, len = n * this.channels * this.spatial;
    this.at = this.arena.layout({
      groupSum: rowsG, groupM2: rowsG, rowMean: rowsC, rowInvStd: rowsC, rowGamma: rowsC, rowBeta: rowsC, rowSums: 2 * rowsC,
      xhat: len, y: len, dx: len,
    });
    this.f64 = new Float64Array(this.arena.f32.buffer);
    this.groupInvStd = new Float64Array(n * this.groups);
    this.capacity = n;
    for (const m of Object.values(this.views)) m.clear();
  }

  private view(which: "xhat" | "y" | "dx", n: number): Float32Array {
    return this.arena.cachedView(this.views[which], this.at[which], n * this.channels * this.spatial, n);
  }

  /** y (a view of this memory) = GroupNorm of x; keeps xhat and the groups' invStd for backward. */
  forward(x: Float32Array, n: number, gamma: Float32Array, beta: Float32Array, eps: number): Float32Array {
    this.reserve(n);
    const c = this.channels, s = this.spatial, G = this.groups, cg = c / G, m = cg * s;
    const at = this.at, f64 = this.f64, k = this.arena.kernels;
    const y = this.view("y", n);
    y.set(x.length === y.length ? x : x.subarray(0, y.length));
    const gs = at.groupSum >>> 1, g2 = at.groupM2 >>> 1;
    f64.fill(0, gs, gs + n * G);
    f64.fill(0, g2, g2 + n * G);
    // Rows of m = (C/G)·S values: one per (sample, group).
    k.bn_sum(at.groupSum, at.y, 1, n * G, m);
    for (let r = 0; r < n * G; r++) f64[gs + r] = f64[gs + r]! / m;
    k.bn_sqdev(at.groupM2, at.y, at.groupSum, 1, n * G, m);
    const rm = at.rowMean >>> 1, ri = at.rowInvStd >>> 1, rg = at.rowGamma >>> 1, rb = at.rowBeta >>> 1;
    for (let r = 0; r < n * G; r++) {
      const invStd = 1 / Math.sqrt(f64[g2 + r]! / m + eps);
      this.groupInvStd[r] = invStd;
      for (let ch = 0; ch < cg; ch++) {
        const row = r * cg + ch, cAbs = (r % G) * cg + ch;
        f64[rm + row] = f64[gs + r]!;
        f64[ri + row] = invStd;
        f64[rg + row] = gamma[cAbs]!;
        f64[rb + row] = beta[cAbs]!;
      }
    }
    k.bn_normalize(at.y, at.xhat, at.y, at.rowMean, at.rowInvStd, at.rowGamma, at.rowBeta, 1, n * c, s);
    return y;
  }

  /**
   * dx (a view of this memory) for the last forward; dγ, dβ (float64, C) summed over
   * samples. With seg: every `segment` samples the sums so far go into seg and restart
   * (the caller flushes the last segment).
   */
  backward(dy: Float32Array, n: number, gamma: Float32Array, gradGamma: Float64Array, gradBeta: Float64Array, segment: number, seg: RankSegments | null): Float32Array {
    const c = this.channels, s = this.spatial, G = this.groups, cg = c / G, m = cg * s;
    const at = this.at, f64 = this.f64, k = this.arena.kernels;
    const dx = this.view("dx", n);
    dx.set(dy.length === dx.length ? dy : dy.subarray(0, dx.length));
    const rs = at.rowSums >>> 1, nc = n * c;
    f64.fill(0, rs, rs + 2 * nc);
    k.bn_grad_sums(at.rowSums, at.dx, at.xhat, 1, nc, s);
    const ka = at.rowMean >>> 1, ma = at.rowInvStd >>> 1, ga = at.rowGamma >>> 1, mb = at.rowBeta >>> 1;
    gradGamma.fill(0);
    gradBeta.fill(0);
    for (let r = 0; r < n * G; r++) {
      if (seg && r > 0 && r % (segment * G) === 0) flushSegment(seg, gradGamma, gradBeta);
      let sumG = 0;
      let sumGXhat = 0;
      for (let ch = 0; ch < cg; ch++) {
        const row = r * cg + ch, cAbs = (r % G) * cg + ch;
        const sDy = f64[rs + row]!, sDyXhat = f64[rs + nc + row]!;
        gradBeta[cAbs]! += sDy;
        gradGamma[cAbs]! += sDyXhat;
        sumG += gamma[cAbs]! * sDy;
        sumGXhat += gamma[cAbs]! * sDyXhat;
      }
      const meanG = sumG / m, meanGXhat = sumGXhat / m, invStd = this.groupInvStd[r]!;
      for (let ch = 0; ch < cg; ch++) {
        const row = r * cg + ch;
        f64[ka + row] = invStd;
        f64[ga + row] = gamma[(r % G) * cg + ch]!;
        f64[ma + row] = meanG;
        f64[mb + row] = meanGXhat;
      }
    }
    k.gn_dx(at.dx, at.dx, at.xhat, at.rowMean, at.rowGamma, at.rowInvStd, at.rowBeta, 1, nc, s);
    return dx;
  }
}
