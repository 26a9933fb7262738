// The layer contract every model part follows: forward and backward side by side,
// buffers allocated once per batch size (never in the steady-state step loop),
// shapes per sample fixed at construction. Not a tensor library: no broadcasting,
// no autograd, just the handful of layers the reference models need.

/** A trainable parameter and its gradient buffer, same length. */
export interface Param {
  readonly name: string;
  readonly value: Float32Array;
  readonly grad: Float32Array;
  /** PyTorch's shape of the tensor (e.g. [cout, cin, k, k]); [length] when absent. */
  readonly shape?: readonly number[];
  /** false for BN's γ/β if the user excludes them from weight decay; default true. */
  readonly decay?: boolean;
  /**
   * Only in a process hosting R > 1 ranks (Layer.setRankSegments): Σ over the R
   * ranks, in rank order and in float64, of the float32 grad each rank computes
   * from its own B samples alone. The block sends this to the gradient round, so
   * the coordinator's sum is the one of R processes; `grad` holds it rounded.
   */
  grad64?: Float64Array;
}

export interface Layer {
  /** e.g. "conv1", "bn2"; used in error messages and checkpoints. */
  readonly name: string;
  /** Per-sample input shape, e.g. [1, 28, 28] or [256]. */
  readonly inShape: readonly number[];
  /** Per-sample output shape. */
  readonly outShape: readonly number[];
  params(): Param[];
  /**
   * x: (n, ...inShape). Returns (n, ...outShape), a view of a buffer the layer
   * owns and overwrites on the next call. May be async (sync BN waits for a round).
   */
  forward(x: Float32Array, n: number, train: boolean): Float32Array | Promise<Float32Array>;
  /**
   * dy: (n, ...outShape) for the last training forward. Overwrites (does not
   * accumulate into) the param grads. Returns dx: (n, ...inShape), a layer-owned view.
   */
  backward(dy: Float32Array, n: number): Float32Array | Promise<Float32Array>;
  /**
   * Optional, for layers whose param grads can wait (conv): backward's dx part
   * only, same bits. The param grads from this dy are made by finishParamGrads,
   * which must come before this layer's next forward and before anyone reads
   * them; dy must stay unchanged until then (graph.ts runs it while a sync BN
   * round is in flight).
   */
  backwardInput?(dy: Float32Array, n: number): Float32Array;
  /** The param grads of the last backwardInput (once; nothing if none is pending). */
  finishParamGrads?(): void;
  /**
   * Layers whose param grads sum over samples: from now on a training batch is R
   * equal rank segments and the grads are per rank, summed into Param.grad64.
   */
  setRankSegments?(r: number): void;
}

/** A kernel's view of Param.grad64 for a rank block: `count` segments; dw, db the float64 sums. */
export interface RankSegments {
  readonly count: number;
  readonly dw: Float64Array;
  readonly db: Float64Array;
}

/** sum[i] += a[i]: one rank's float32 grad into its block's float64 sum. */
export function addToSum(sum: Float64Array, a: ArrayLike<number>): void {
  for (let i = 0; i < sum.length; i++) sum[i]! += a[i]!;
}

/**
 * A weight layer's backward over rank segments (conv, linear): begin (seg's sums
 * zeroed), add each segment's float32 dw, db (that rank's grads) into seg in
 * float64, end (dw, db ← seg's sums, rounded once). Each does nothing without seg.
 */
export function beginSegments(seg: RankSegments | null): void {
  seg?.dw.fill(0);
  seg?.db.fill(0);
}

export function addSegment(seg: RankSegments | null, dw: Float32Array, db: Float32Array): void {
  if (!seg) return;
  addToSum(seg.dw, dw);
  addToSum(seg.db, db);
}

export function endSegments(seg: RankSegments | null, dw: Float32Array, db: Float32Array): void {
  if (!seg) return;
  dw.set(seg.dw);
  db.set(seg.db);
}

/**
 * The end of one rank segment of float64 per-channel sums (a norm layer's dγ, dβ):
 * rounded as that rank's float32 grads, added into seg; the sums restart at zero.
 */
export function flushSegment(seg: RankSegments, gradGamma: Float64Array, gradBeta: Float64Array): void {
  for (let ch = 0; ch < gradGamma.length; ch++) {
    seg.dw[ch]! += Math.fround(gradGamma[ch]!);
    seg.db[ch]! += Math.fround(gradBeta[ch]!);
  }
  gradGamma.fill(0);
  gradBeta.fill(0);
}

/** Samples per rank segment of a training batch of n (1 segment when seg is null); throws if they do not divide. */
export function segmentLength(layer: string, n: number, seg: RankSegments | null): number {
  const r = seg?.count ?? 1;
  if (n % r !== 0) throw new RangeError(`layer ${layer}: a batch of ${n} samples does not split into ${r} rank segments`);
  return n / r;
}

export function sizeOf(shape: readonly number[]): number {
  let s = 1;
  for (const d of shape) s *= d;
  return s;
}

/**
 * A growable float32 buffer: capacity grows to the largest batch seen; view(n)
 * returns the first n·perSample values. Views are cached per n, so steady-state
 * steps with a fixed batch allocate nothing.
 */
export class BatchBuffer {
  private data = new Float32Array(0);
  private views = new Map<number, Float32Array>();
  constructor(readonly perSample: number) {}

  view(n: number): Float32Array {
    let v = this.views.get(n);
    if (v) return v;
    const need = n * this.perSample;
    if (need > this.data.length) {
      this.data = new Float32Array(need);
      this.views.clear();
    }
    v = this.data.subarray(0, need);
    this.views.set(n, v);
    return v;
  }
}
