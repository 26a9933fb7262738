// A convolution's forward and backward cut into parts for compute threads
// (threads.ts): the task as int32 words, and what part p of P computes. Part 0
// runs on the layer's own thread, parts 1.. on helpers, all on the same shared
// memory. Every output element is computed by the same kernel calls as the
// one-thread loop of conv-wasm.ts: forward and dx split by samples (each sample
// its own im2col, GEMM and col2im), dW by rows cut at register-block multiples:
// each sample's float32 product added into a float64 sum in sample order. So the
// bits do not depend on P.

import { alignedPartRange, partRange } from "./threads.js";
import type { KernelExports } from "./wasm-kernels.js";

/** Word indices of a conv task. */
export const W = {
  kind: 0, memory: 1, n: 2, parts: 3, train: 4,
  cin: 5, inH: 6, inW: 7, kernel: 8, stride: 9, padding: 10, outH: 11, outW: 12, cout: 13,
  w: 14, xdx: 15, cols: 16, y: 17, dy: 18, dw: 19, dcols: 20, dcolsStride: 21, dw64: 22,
} as const;
export const CONV_TASK_WORDS = 23;
export const KIND_FORWARD = 1;
export const KIND_BACKWARD = 2;
/** dW row parts are cut at multiples of this (gemm_nt's 2-row and the GEMMs' 4-row blocks). */
const ROW_ALIGN = 4;

/** Part p's share of a conv task (a forward or a backward), on kernels `k` of the task's memory. */
export function convPart(k: KernelExports, t: Int32Array, p: number): void {
  const n = t[W.n]!, parts = t[W.parts]!, cin = t[W.cin]!, inH = t[W.inH]!, inW = t[W.inW]!;
  const kk = t[W.kernel]!, s = t[W.stride]!, pad = t[W.padding]!, outH = t[W.outH]!, outW = t[W.outW]!, cout = t[W.cout]!;
  const R = cin * kk * kk, P = outH * outW, inSize = cin * inH * inW;
  const dcols = t[W.dcols]! + p * t[W.dcolsStride]!;
  const [lo, hi] = partRange(n, p, parts);
  if (t[W.kind] === KIND_FORWARD) {
    // y was filled with the bias by the caller.
    for (let i = lo; i < hi; i++) {
      const cols = t[W.train] ? t[W.cols]! + i * R * P : dcols;
      k.im2col(cols, t[W.xdx]! + i * inSize, cin, inH, inW, kk, s, pad, outH, outW);
      k.gemm_nn(t[W.y]! + i * cout * P, P, t[W.w]!, R, cols, P, cout, P, R, 1);
    }
    return;
  }
  // dW rows r0..r1−1 over every sample, in sample order; dx for this part's samples (x's region zeroed by the
  // caller). One loop, so a sample's dy is used for both while in cache (with one part: the one-thread order).
  // dW: each sample's product (P terms, float32) widened into the float64 sum dw64; summing the batch's
  // n·P terms in float32 drifted from PyTorch by 1e-3 at batch 64 (terms cancel: BN makes Σ dy zero).
  const [r0, r1] = alignedPartRange(cout, p, parts, ROW_ALIGN);
  for (let i = 0; i < n; i++) {
    const dyi = t[W.dy]! + i * cout * P;
    if (r1 > r0) {
      k.gemm_nt(t[W.dw]! + r0 * R, R, dyi + r0 * P, P, t[W.cols]! + i * R * P, P, r1 - r0, R, P, 0);
      k.add_f32_f64(t[W.dw64]! + 2 * r0 * R, t[W.dw]! + r0 * R, (r1 - r0) * R, i > 0 ? 1 : 0);
    }
    if (i >= lo && i < hi) {
      k.gemm_tn(dcols, P, t[W.w]!, R, dyi, P, R, P, cout, 0);
      k.col2im_add(dcols, t[W.xdx]! + i * inSize, cin, inH, inW, kk, s, pad, outH, outW);
    }
  }
}
