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
