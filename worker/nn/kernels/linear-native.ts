// Linear's native path (SYNCBN_KERNELS=native): y = x·Wᵀ + b and its backward as
// the addon's FMA GEMMs (native/linear.cc) on these Float32Arrays, split over
// --threads threads of the addon's pool by output columns, the same bits for any
// number. Every element is one FMA chain in a fixed order, so the values are the
// twins' within float32 rounding, not their bits (test/native-linear.test.ts).
// With rank segments each segment's dW and db are what its samples alone give,
// added into seg in float64 (as the other paths). Not a layer: Linear owns the
// params and picks this path.

import { BatchBuffer, segmentLength, type RankSegments } from "../layer.js";
import type { LinearKernel } from "../linear.js";
import type { NativeKernels } from "./native.js";
import { requestedComputeThreads } from "./threads.js";

const EMPTY = new Float32Array(0);

export class LinearNative implements LinearKernel {
  private readonly y: BatchBuffer; // (N, out)
  private readonly dx: BatchBuffer; // (N, in)
  /** A copy of the last training input: the caller may reuse its buffer before backward. */
  private readonly xSaved: BatchBuffer; // (N, in)

  constructor(private readonly inF: number, private readonly outF: number, private readonly k: NativeKernels,
    private readonly threads = requestedComputeThreads()) {
    this.y = new BatchBuffer(outF);
    this.dx = new BatchBuffer(inF);
    this.xSaved = new BatchBuffer(inF);
  }

  /** y = b + x·Wᵀ: 2·n·out·in flops. */
  forward(x: Float32Array, n: number, train: boolean, w: Float32Array, b: Float32Array): Float32Array {
    const y = this.y.view(n);
    this.k.linearForward(y, x, w, b, n, this.inF, this.outF, this.threads);
    if (train) this.xSaved.view(n).set(x.subarray(0, n * this.inF));
    return y;
  }

  /**
   * dx = dy·W, dW = dyᵀ·x, db = Σ dy: 4·n·out·in flops, one addon call each for dx and for the
   * grads. With rank segments the grads are each segment's alone, summed in float64 in segment
   * order in the addon (linearSegmentGrads: the bits of a call per segment and addSegment's sums).
   */
  backward(dy: Float32Array, n: number, w: Float32Array, dw: Float32Array, db: Float32Array, seg: RankSegments | null): Float32Array {
    const dx = this.dx.view(n);
    const x = this.xSaved.view(n);
    this.k.linearBackward(dx, EMPTY, EMPTY, dy, x, w, 0, n, this.inF, this.outF, this.threads);
    if (seg) {
      segmentLength("linear", n, seg);
      this.k.linearSegmentGrads(seg.dw, seg.db, dw, db, dy, x, n, seg.count, this.inF, this.outF, this.threads);
    } else {
      this.k.linearBackward(EMPTY, dw, db, dy, x, w, 0, n, this.inF, this.outF, this.threads);
    }
    return dx;
  }
}
