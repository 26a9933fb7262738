// Softmax cross-entropy over (n, K) logits with integer labels. The loss is the
// mean over the GLOBAL batch (all workers), so forward reports this worker's sum
// and backward divides by the global batch size. Not label smoothing, not class
// weights, not a reduction across workers (the trainer sums lossSum itself).

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { BatchBuffer } from "./layer.js";
import { requireInt, requireLength } from "./linear.js";

export interface LossResult {
  /** Σ over this worker's samples of −log softmax(z)[label], float64. */
  lossSum: number;
  /** Samples whose first maximal logit is the label (torch.argmax picks the first). */
  correct: number;
}

export class SoftmaxCrossEntropy {
  private readonly probs: BatchBuffer; // (N, K) softmax of the last forward
  private readonly dlogits: BatchBuffer; // (N, K)
  private labels = new Int32Array(0); // (N) copy of the last forward's labels
  private savedN = -1;
  private globalBatch = 0;

  constructor(readonly numClasses: number) {
    requireInt("loss", "numClasses", numClasses, 1);
    this.probs = new BatchBuffer(numClasses);
    this.dlogits = new BatchBuffer(numClasses);
  }

  /**
   * With m = max_j z_j: log Σ_j exp(z_j) = m + log Σ_j exp(z_j − m), so no exp
   * overflows, and −log p_label = m + log Σ exp(z_j − m) − z_label.
   */
  forward(logits: Float32Array, labels: Uint8Array | Int32Array, n: number, globalBatch: number): LossResult {
    const K = this.numClasses;
    requireLength("loss", "logits", logits, n * K);
    requireLength("loss", "labels", labels, n);
    if (!Number.isInteger(globalBatch) || globalBatch < n || globalBatch < 1) {
      throw new RangeError(`loss: global batch ${globalBatch} must be an integer >= max(1, local batch ${n})`);
    }
    if (this.labels.length < n) this.labels = new Int32Array(n);
    const p = this.probs.view(n);
    let lossSum = 0;
    let correct = 0;
    for (let i = 0; i < n; i++) {
      const off = i * K;
      const label = labels[i];
      if (label < 0 || label >= K) {
        throw new SyncbnError(ErrorCode.Data, `label ${label} of sample ${i} is outside 0..${K - 1}`);
      }
      this.labels[i] = label;
      let m = logits[off];
      let argmax = 0;
      for (let j = 1; j < K; j++) {
        if (logits[off + j] > m) {
          m = logits[off + j];
          argmax = j;
        }
      }
      let sumExp = 0;
      for (let j = 0; j < K; j++) {
        const e = Math.exp(logits[off + j] - m);
        p[off + j] = e;
        sumExp += e;
      }
      const inv = 1 / sumExp;
      for (let j = 0; j < K; j++) p[off + j] *= inv;
      lossSum += m + Math.log(sumExp) - logits[off + label];
      if (argmax === label) correct++;
    }
    this.savedN = n;
    this.globalBatch = globalBatch;
    return { lossSum, correct };
  }

  /** dL/dz = (softmax(z) − onehot(label)) / globalBatch, for the last forward. */
  backward(n: number): Float32Array {
    if (n !== this.savedN) {
      throw new RangeError(`loss: backward for ${n} samples after a forward of ${this.savedN}`);
    }
    const K = this.numClasses;
    const p = this.probs.view(n);
    const d = this.dlogits.view(n);
    const scale = 1 / this.globalBatch;
    for (let i = 0; i < n; i++) {
      const off = i * K;
      const label = this.labels[i];
      for (let j = 0; j < K; j++) d[off + j] = (p[off + j] - (j === label ? 1 : 0)) * scale;
    }
    return d;
  }
}
