// A norm layer for a process that hosts R consecutive ranks (a rank block): R
// copies of the run's norm layer (BatchNorm, GhostBatchNorm, BatchRenorm), copy k
// fed the k-th slice of B samples of the block's R·B batch, so every rank keeps
// its own statistics and running averages exactly as one rank per process would.
// Not used for R = 1 (the model holds the plain layer) nor for groupnorm/none.
// BatchNorm copies whose ranks share one statistics group run as one pass over the
// block instead (segmented-fused.ts), with the same bits.

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { BatchNorm } from "./batchnorm.js";
import { BatchBuffer, type Param } from "./layer.js";
import type { RunningStatsLayer, RunningStatsNorm } from "./norm-base.js";
import { FusedBlockNorm } from "./segmented-fused.js";

let fuseBlocks = true;

/** Tests: build SegmentedNorms with the fused path where it applies (true, the default) or never (false). */
export function useFusedBlockNorm(on: boolean): void {
  fuseBlocks = on;
}

/**
 * The block's R copies behind one layer. γ/β of copy 0 are the layer's only
 * params (copied into the others before every training forward; their grads
 * summed over copies in float64 (Param.grad64) and rounded once after backward). Copy 0's
 * running statistics are the layer's: rank r0's, what eval, checkpoints and
 * weights use, as rank r0's are with one rank per process.
 */
export class SegmentedNorm implements RunningStatsLayer {
  readonly name: string;
  readonly layerIndex: number;
  readonly channels: number;
  readonly spatial: number;
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  private readonly y: BatchBuffer; // (R·B, C, S)
  private readonly dx: BatchBuffer; // (R·B, C, S)
  private readonly gradSum: Float64Array; // (2C): [Σ_k dγ_k, Σ_k dβ_k]
  private readonly pendingY: (Float32Array | Promise<Float32Array>)[];
  private readonly pendingDx: (Float32Array | Promise<Float32Array>)[];
  /** BatchNorm copies of ranks in one statistics group, on the native or TypeScript passes: one pass over the block (segmented-fused.ts). */
  private readonly fused: FusedBlockNorm | null;

  constructor(readonly copies: readonly RunningStatsNorm[]) {
    const c0 = copies[0]!;
    if (copies.length < 2) throw new RangeError("SegmentedNorm needs at least two copies (R = 1 uses the plain layer)");
    this.name = c0.name;
    this.layerIndex = c0.layerIndex;
    this.channels = c0.channels;
    this.spatial = c0.spatial;
    this.inShape = c0.inShape;
    this.outShape = c0.outShape;
    const per = this.channels * this.spatial;
    this.y = new BatchBuffer(per);
    this.dx = new BatchBuffer(per);
    this.gradSum = new Float64Array(2 * this.channels);
    // What the block sends to the gradient round: the R ranks' own dγ, dβ summed in float64.
    c0.gamma.grad64 = this.gradSum.subarray(0, this.channels);
    c0.beta.grad64 = this.gradSum.subarray(this.channels);
    this.pendingY = new Array<Float32Array | Promise<Float32Array>>(copies.length);
    this.pendingDx = new Array<Float32Array | Promise<Float32Array>>(copies.length);
    const block = c0 instanceof BatchNorm ? c0.sync?.block : undefined;
    const fusable = copies.every((c) => c.constructor === BatchNorm) && block?.sendsRounds === true && (c0 as BatchNorm).kernels.backend !== "wasm";
    this.fused = fuseBlocks && fusable ? new FusedBlockNorm(copies as readonly RunningStatsNorm[] as readonly BatchNorm[], block!) : null;
  }

  /** Whether this layer runs its copies as one pass over the block (segmented-fused.ts). */
  get fusedPath(): boolean {
    return this.fused !== null;
  }

  get runningMean(): Float64Array {
    return this.copies[0]!.runningMean;
  }

  get runningVar(): Float64Array {
    return this.copies[0]!.runningVar;
  }

  get tracked(): number {
    return this.copies[0]!.tracked;
  }

  set tracked(n: number) {
    this.copies[0]!.tracked = n;
  }

  params(): Param[] {
    return this.copies[0]!.params();
  }

  /** Every copy's running statistics ← copy 0's (after a checkpoint, --init or the rank-0 broadcast set the layer's). */
  spreadRank0Stats(): void {
    const c0 = this.copies[0]!;
    for (let k = 1; k < this.copies.length; k++) {
      const ck = this.copies[k]!;
      ck.runningMean.set(c0.runningMean);
      ck.runningVar.set(c0.runningVar);
      ck.tracked = c0.tracked;
    }
  }

  /** Per-rank segment length of a training batch of n samples (n = R·B). */
  private segment(n: number, phase: string): number {
    const r = this.copies.length;
    if (n % r !== 0) {
      throw new SyncbnError(ErrorCode.BadConfig, `${this.name}: a training batch of ${n} samples does not split into ${r} rank segments`, { layer: this.layerIndex, phase });
    }
    return n / r;
  }

  forward(x: Float32Array, n: number, train: boolean): Float32Array | Promise<Float32Array> {
    // Eval: copy 0 (rank r0's statistics) over the whole batch, any size.
    if (!train) return this.copies[0]!.forward(x, n, false);
    const b = this.segment(n, "fwd");
    if (this.fused) return this.fused.forward(this.y.view(n), x, n, b);
    const len = b * this.channels * this.spatial;
    const g0 = this.copies[0]!.gamma.value;
    const b0 = this.copies[0]!.beta.value;
    let async = false;
    // In rank order, synchronously: a BlockSync collects the R segments' moments in this loop.
    for (let k = 0; k < this.copies.length; k++) {
      const ck = this.copies[k]!;
      if (k > 0) {
        ck.gamma.value.set(g0);
        ck.beta.value.set(b0);
      }
      const yk = ck.forward(x.subarray(k * len, (k + 1) * len), b, true);
      if (yk instanceof Promise) async = true;
      this.pendingY[k] = yk;
    }
    const y = this.y.view(n);
    if (!async) return this.gather(y, this.pendingY as Float32Array[], len);
    return Promise.all(this.pendingY).then((ys) => this.gather(y, ys, len));
  }

  backward(dy: Float32Array, n: number): Float32Array | Promise<Float32Array> {
    const b = this.segment(n, "bwd");
    if (this.fused) {
      return this.fused.backward(this.dx.view(n), dy, n, b).then((dx) => {
        this.sumParamGrads();
        return dx;
      });
    }
    const len = b * this.channels * this.spatial;
    let async = false;
    for (let k = 0; k < this.copies.length; k++) {
      const dxk = this.copies[k]!.backward(dy.subarray(k * len, (k + 1) * len), b);
      if (dxk instanceof Promise) async = true;
      this.pendingDx[k] = dxk;
    }
    const dx = this.dx.view(n);
    const finish = (dxs: readonly Float32Array[]): Float32Array => {
      this.sumParamGrads();
      return this.gather(dx, dxs, len);
    };
    if (!async) return finish(this.pendingDx as Float32Array[]);
    return Promise.all(this.pendingDx).then(finish);
  }

  /** out ← the copies' outputs, segment k at k·len (each copy owns and reuses its buffer). */
  private gather(out: Float32Array, parts: readonly Float32Array[], len: number): Float32Array {
    for (let k = 0; k < parts.length; k++) out.set(parts[k]!, k * len);
    return out;
  }

  /** Copy 0's dγ, dβ ← Σ over copies in rank order, in float64, rounded once (as the gradient round adds ranks). */
  private sumParamGrads(): void {
    const c = this.channels;
    const s = this.gradSum;
    s.fill(0);
    for (const ck of this.copies) {
      const g = ck.gamma.grad;
      const bt = ck.beta.grad;
      for (let ch = 0; ch < c; ch++) {
        s[ch]! += g[ch]!;
        s[c + ch]! += bt[ch]!;
      }
    }
    const c0 = this.copies[0]!;
    for (let ch = 0; ch < c; ch++) {
      c0.gamma.grad[ch] = s[ch]!;
      c0.beta.grad[ch] = s[c + ch]!;
    }
  }
}

export function isSegmentedNorm(l: unknown): l is SegmentedNorm {
  return l instanceof SegmentedNorm;
}
