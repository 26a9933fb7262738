// Group normalization (Wu & He 2018; PyTorch nn.GroupNorm(G, C)): per sample, the C
// channels split into G groups of C/G consecutive channels, each normalized over its
// channels × H·W, then a per-channel affine γ, β; the same in training and eval. The
// loops here are the reference; kernels/groupnorm-wasm.ts runs them in WebAssembly
// SIMD, and the native addon (native/groupnorm.cc, --kernels native) on the arrays
// themselves, both bit for bit. Not BN: no running statistics, no rounds.

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { divisors } from "../../shared/config.js";
import { kernelBackend, stepKernelBackend } from "./kernels/backend.js";
import { nativeKernels, type NativeKernels } from "./kernels/native.js";
import { GroupNormWasm } from "./kernels/groupnorm-wasm.js";
import { BatchBuffer, flushSegment, segmentLength, sizeOf, type Layer, type Param, type RankSegments } from "./layer.js";
import { rankSegments } from "./linear.js";

export class GroupNorm implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  readonly channels: number;
  /** H·W, or 1 for (N, C) input. */
  readonly spatial: number;
  readonly gamma: Param; // (C)
  readonly beta: Param; // (C)
  /** Channels per group, C/G. */
  private readonly groupChannels: number;
  /** Per (sample, group): 1/sqrt(var + eps) of the last forward; grown to the largest batch. */
  private groupInvStd = new Float64Array(0); // (N, G)
  private readonly gradGamma: Float64Array; // (C) float64 accumulator
  private readonly gradBeta: Float64Array; // (C)
  private readonly y: BatchBuffer; // (N, C, S)
  private readonly xhat: BatchBuffer; // (N, C, S)
  private readonly dx: BatchBuffer; // (N, C, S)
  private savedN = -1;
  private segments: RankSegments | null = null;
  /** The WebAssembly SIMD passes (SYNCBN_KERNELS=wasm, the default), or null for the loops below (the reference). */
  private readonly wasm: GroupNormWasm | null;
  private readonly native: NativeKernels | null;

  constructor(
    readonly name: string,
    shape: readonly number[], // [C] or [C, H, W]
    /** G: number of channel groups. */
    readonly groups: number,
    readonly eps: number,
  ) {
    this.inShape = shape;
    this.outShape = shape;
    this.channels = shape[0]!;
    this.spatial = sizeOf(shape.slice(1));
    const c = this.channels;
    if (!Number.isInteger(groups) || groups < 1 || c % groups !== 0) {
      throw new SyncbnError(
        ErrorCode.BadConfig,
        `--norm groupnorm:${groups}: layer ${name} has C = ${c} channels, which ${groups} groups do not divide; G must divide every norm layer's channel count (for this layer: ${divisors(c).join(", ")})`,
      );
    }
    this.groupChannels = c / groups;
    this.gamma = { name: `${name}.weight`, value: new Float32Array(c).fill(1), grad: new Float32Array(c), shape: [c] };
    this.beta = { name: `${name}.bias`, value: new Float32Array(c), grad: new Float32Array(c), shape: [c] };
    this.gradGamma = new Float64Array(c);
    this.gradBeta = new Float64Array(c);
    this.native = stepKernelBackend() === "native" ? nativeKernels() : null;
    this.wasm = !this.native && kernelBackend() === "wasm" ? new GroupNormWasm(c, this.spatial, groups) : null;
    const per = sizeOf(shape);
    this.y = new BatchBuffer(per);
    this.xhat = new BatchBuffer(per);
    this.dx = new BatchBuffer(per);
  }

  params(): Param[] {
    return [this.gamma, this.beta];
  }

  /**
   * Per (sample, group) of m = (C/G)·S contiguous values: mean and biased variance
   * in two float64 passes, then xhat = (x − mean)/sqrt(var + eps), y = γ·xhat + β.
   * Three passes over x; the same in training and eval.
   */
  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const c = this.channels;
    const s = this.spatial;
    const G = this.groups;
    const cg = this.groupChannels;
    const m = cg * s;
    if (this.wasm) {
      this.savedN = train ? n : -1;
      return this.wasm.forward(x, n, this.gamma.value, this.beta.value, this.eps);
    }
    if (this.groupInvStd.length < n * G) {
      this.groupInvStd = new Float64Array(n * G);
    }
    const y = this.y.view(n);
    const xhat = this.xhat.view(n);
    const gamma = this.gamma.value;
    const beta = this.beta.value;
    if (this.native) {
      this.native.gnForward(y, xhat, this.groupInvStd, x, gamma, beta, this.eps, n, c, s, G);
      this.savedN = train ? n : -1;
      return y;
    }
    for (let i = 0; i < n; i++) {
      for (let g = 0; g < G; g++) {
        const base = (i * c + g * cg) * s;
        let sum = 0;
        for (let k = 0; k < m; k++) sum += x[base + k]!;
        const mean = sum / m;
        let m2 = 0;
        for (let k = 0; k < m; k++) {
          const d = x[base + k]! - mean;
          m2 += d * d;
        }
        const invStd = 1 / Math.sqrt(m2 / m + this.eps);
        this.groupInvStd[i * G + g] = invStd;
        for (let ch = 0; ch < cg; ch++) {
          const cAbs = g * cg + ch;
          const ga = gamma[cAbs]!;
          const be = beta[cAbs]!;
          const off = base + ch * s;
          for (let j = 0; j < s; j++) {
            const h = (x[off + j]! - mean) * invStd;
            xhat[off + j] = h;
            y[off + j] = ga * h + be;
          }
        }
      }
    }
    this.savedN = train ? n : -1;
    return y;
  }

  /**
   * With g = γ_c·dy per element and means over the group's m values:
   * dx = invStd·(g − mean(g) − xhat·mean(g·xhat)); dγ_c = Σ dy·xhat, dβ_c = Σ dy
   * over samples and positions (with rank segments: per segment, summed into them).
   */
  backward(dy: Float32Array, n: number): Float32Array {
    if (n !== this.savedN) {
      throw new SyncbnError(ErrorCode.BadConfig, `${this.name}: backward for ${n} samples without a matching training forward`, { phase: "bwd" });
    }
    const c = this.channels;
    const s = this.spatial;
    const G = this.groups;
    const cg = this.groupChannels;
    const m = cg * s;
    const seg = this.segments;
    const b = segmentLength(this.name, n, seg);
    seg?.dw.fill(0);
    seg?.db.fill(0);
    if (this.wasm) {
      const dx = this.wasm.backward(dy, n, this.gamma.value, this.gradGamma, this.gradBeta, b, seg);
      this.setGrads();
      return dx;
    }
    const xhat = this.xhat.view(n);
    const dx = this.dx.view(n);
    const gamma = this.gamma.value;
    this.gradGamma.fill(0);
    this.gradBeta.fill(0);
    if (this.native) {
      // One call per rank segment (b samples), the segment flushed between them as below.
      for (let i0 = 0; i0 < n; i0 += b) {
        if (seg && i0 > 0) flushSegment(seg, this.gradGamma, this.gradBeta);
        this.native.gnBackward(dx, this.gradGamma, this.gradBeta, dy, xhat, this.groupInvStd, gamma, i0, b, c, s, G);
      }
      this.setGrads();
      return dx;
    }
    for (let i = 0; i < n; i++) {
      if (seg && i > 0 && i % b === 0) flushSegment(seg, this.gradGamma, this.gradBeta);
      for (let g = 0; g < G; g++) {
        const base = (i * c + g * cg) * s;
        let sumG = 0;
        let sumGXhat = 0;
        for (let ch = 0; ch < cg; ch++) {
          const cAbs = g * cg + ch;
          const ga = gamma[cAbs]!;
          const off = base + ch * s;
          let sDy = 0;
          let sDyXhat = 0;
          for (let j = 0; j < s; j++) {
            const d = dy[off + j]!;
            sDy += d;
            sDyXhat += d * xhat[off + j]!;
          }
          this.gradBeta[cAbs]! += sDy;
          this.gradGamma[cAbs]! += sDyXhat;
          sumG += ga * sDy;
          sumGXhat += ga * sDyXhat;
        }
        const meanG = sumG / m;
        const meanGXhat = sumGXhat / m;
        const invStd = this.groupInvStd[i * G + g]!;
        for (let ch = 0; ch < cg; ch++) {
          const ga = gamma[g * cg + ch]!;
          const off = base + ch * s;
          for (let j = 0; j < s; j++) {
            dx[off + j] = invStd * (ga * dy[off + j]! - meanG - xhat[off + j]! * meanGXhat);
          }
        }
      }
    }
    this.setGrads();
    return dx;
  }

  setRankSegments(r: number): void {
    this.segments = r > 1 ? rankSegments(r, this.gamma, this.beta) : null;
  }

  /** γ, β grads ← the float64 sums (of the last rank segment flushed first into the block's sums). */
  private setGrads(): void {
    const seg = this.segments;
    if (seg && this.savedN > 0) flushSegment(seg, this.gradGamma, this.gradBeta);
    const g = seg ? seg.dw : this.gradGamma;
    const bt = seg ? seg.db : this.gradBeta;
    for (let ch = 0; ch < this.channels; ch++) {
      this.gamma.grad[ch] = g[ch]!;
      this.beta.grad[ch] = bt[ch]!;
    }
  }
}
