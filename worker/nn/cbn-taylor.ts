// The first-order Taylor terms of cross-iteration BN (Yao et al. 2021):
// how a BN layer's batch moments μ_c = E[y_c], ν_c = E[y_c²] move with the
// weights of the conv or linear layer that produced y. Not the BN itself
// (cbn.ts), and no other producers: anything else before a CBN layer is refused.
//
// For y_c = W_c·p + b_c over im2col patches p (n, h, w) and M = n·h·w of them:
//   ∂μ_c/∂W_c = mean(p)          (R), the same vector for every c
//   ∂ν_c/∂W_c = (2/M)·Σ y_c·p     (C, R): a conv dW with dy = 2y/M
//   ∂μ_c/∂b_c = 1,  ∂ν_c/∂b_c = 2μ_c
// A linear layer is the conv with one position and p = x.

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { Conv2d } from "./conv2d.js";
import { LayerOp, type Op } from "./graph.js";
import type { Param } from "./layer.js";
import { Linear } from "./linear.js";

/** The layer producing a CBN layer's input, seen as y = W·p + b. */
export interface StatsProducer {
  readonly name: string;
  readonly weight: Param; // (C, R)
  /** (C); zeros that never change for a conv without bias. */
  readonly bias: Param;
  /** R: patch length, cin·k·k for a conv, in features for a linear layer. */
  readonly rows: number;
  /**
   * From the producer's last training forward (samples first..first+n−1; y, its
   * output (n, C, S), is what the BN layer received): overwrites dmu (R) = ∂μ/∂W_c
   * and dnu (C, R) = ∂ν_c/∂W_c. Float64 sums of float32 products; one GEMM, as a dW.
   */
  jacobians(dmu: Float64Array, dnu: Float64Array, y: Float32Array, first: number, n: number): void;
}

/** Conv: the conv kernel's own sums over the columns and outputs of its last training forward. */
class ConvProducer implements StatsProducer {
  readonly name: string;
  readonly weight: Param;
  readonly bias: Param;
  readonly rows: number;

  constructor(private readonly conv: Conv2d) {
    const g = conv.geometry;
    this.name = conv.name;
    this.weight = conv.weight;
    this.bias = conv.bias;
    this.rows = g.cin * g.kernel * g.kernel;
  }

  jacobians(dmu: Float64Array, dnu: Float64Array, _y: Float32Array, first: number, n: number): void {
    this.conv.statsSums(dmu, dnu, first, n);
    const m = n * this.conv.geometry.outH * this.conv.geometry.outW;
    for (let r = 0; r < dmu.length; r++) dmu[r]! /= m;
    for (let t = 0; t < dnu.length; t++) dnu[t]! *= 2 / m;
  }
}

/** Linear: p = x, one position per sample. */
class LinearProducer implements StatsProducer {
  readonly name: string;
  readonly weight: Param;
  readonly bias: Param;
  readonly rows: number;

  constructor(private readonly linear: Linear, private readonly op: LayerOp) {
    this.name = linear.name;
    this.weight = linear.weight;
    this.bias = linear.bias;
    this.rows = linear.inFeatures;
  }

  jacobians(dmu: Float64Array, dnu: Float64Array, y: Float32Array, first: number, n: number): void {
    const rows = this.rows, cout = this.linear.outFeatures;
    const x = this.op.lastInput;
    if (x.length < (first + n) * rows) throw new RangeError(`cbn: ${this.name} holds no training input for ${n} samples`);
    dmu.fill(0);
    dnu.fill(0);
    for (let i = 0; i < n; i++) {
      const xOff = (first + i) * rows;
      for (let r = 0; r < rows; r++) dmu[r]! += x[xOff + r]!;
      for (let c = 0; c < cout; c++) {
        const yc = y[i * cout + c]!;
        const off = c * rows;
        for (let r = 0; r < rows; r++) dnu[off + r]! += yc * x[xOff + r]!;
      }
    }
    for (let r = 0; r < rows; r++) dmu[r]! /= n;
    for (let t = 0; t < dnu.length; t++) dnu[t]! *= 2 / n;
  }
}

/**
 * The producer of a CBN layer's input: the op before it must be a Conv2d or Linear
 * layer; anything else (an add, a pool, the graph input) has no weights to
 * compensate for, and --norm cbn:K is refused for the model in one line.
 */
export function statsProducer(normName: string, op: Op | null, window: number): StatsProducer {
  if (op instanceof LayerOp && op.layer instanceof Conv2d) return new ConvProducer(op.layer);
  if (op instanceof LayerOp && op.layer instanceof Linear) return new LinearProducer(op.layer, op);
  throw new SyncbnError(
    ErrorCode.BadConfig,
    `--norm cbn:${window}: norm layer ${normName} reads ${op ? `the output of ${op.name}` : "the model input"}, not a conv or linear layer, so its past statistics cannot be compensated; use another --norm for this model`,
  );
}
