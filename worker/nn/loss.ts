// Softmax cross-entropy over (n, K) logits with integer labels. The loss is the
// mean over the GLOBAL batch (all workers), so forward reports this worker's sum
// and backward divides by the global batch size. Label smoothing ε as PyTorch's
// F.cross_entropy(label_smoothing=ε). Not class weights, not a reduction across
// workers (the trainer sums lossSum itself).

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { BatchBuffer } from "./layer.js";
import { requireInt, requireLength } from "./linear.js";

export interface LossResult {
  /** Σ over this worker's samples of the (smoothed) cross-entropy, float64: −log softmax(z)[label] at ε = 0. */
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

  /**
   * labelSmoothing ε: the target is (1 − ε)·onehot + ε/K, so a sample's loss is
   * (1 − ε)·(−log p_label) + (ε/K)·Σ_j(−log p_j).
   */
  constructor(readonly numClasses: number, readonly labelSmoothing = 0) {
    requireInt("loss", "numClasses", numClasses, 1);
    if (!(labelSmoothing >= 0 && labelSmoothing < 1)) throw new RangeError(`loss: label smoothing must be in [0, 1), got ${labelSmoothing}`);
    this.probs = new BatchBuffer(numClasses);
    this.dlogits = new BatchBuffer(numClasses);
  }

  /**
   * With m = max_j z_j: log Σ_j exp(z_j) = m + log Σ_j exp(z_j − m), so no exp
   * overflows, and −log p_label = m + log Σ exp(z_j − m) − z_label. With ε:
   * lse − (1 − ε)·z_label − (ε/K)·Σ_j z_j (the same sum of −log p_j, regrouped).
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
    const eps = this.labelSmoothing;
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
      const lse = m + Math.log(sumExp);
      if (eps === 0) {
        lossSum += lse - logits[off + label];
      } else {
        let sumZ = 0;
        for (let j = 0; j < K; j++) sumZ += logits[off + j];
        lossSum += lse - (1 - eps) * logits[off + label] - (eps / K) * sumZ;
      }
      if (argmax === label) correct++;
    }
    this.savedN = n;
    this.globalBatch = globalBatch;
    return { lossSum, correct };
  }

  /** dL/dz = (softmax(z) − (1 − ε)·onehot(label) − ε/K) / globalBatch, for the last forward. */
  backward(n: number): Float32Array {
    if (n !== this.savedN) {
      throw new RangeError(`loss: backward for ${n} samples after a forward of ${this.savedN}`);
    }
    const K = this.numClasses;
    const p = this.probs.view(n);
    const d = this.dlogits.view(n);
    const scale = 1 / this.globalBatch;
    const eps = this.labelSmoothing;
    const hit = 1 - eps + eps / K; // the label's target; every other class's is ε/K
    const miss = eps / K;
    for (let i = 0; i < n; i++) {
      const off = i * K;
      const label = this.labels[i];
      for (let j = 0; j < K; j++) d[off + j] = (p[off + j] - (j === label ? hit : miss)) * scale;
    }
    return d;
  }
}
