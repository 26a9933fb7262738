// The WebAssembly SIMD128 kernels, written as TypeScript that emits them: a
// register-blocked f32x4 GEMM in three operand layouts, im2col/col2im and row
// sums, and float64 sums of float32 products. Every function takes float-element
// offsets into the one imported memory; no allocation, no bounds beyond the
// caller's layout (see Arena). im2col/col2im, row sums and the float64 widening
// (column-kernels.ts), ReLU and MaxPool (elementwise-kernels.ts) and BN's passes
// (norm-kernels.ts) are assembled into the same module.
// Not a BLAS: no packing, no threads, and only the layouts the layers use.

import { normKernels, type NormKernelExports } from "./norm-kernels.js";
import { addF32F64, im2colLike, rowSums } from "./column-kernels.js";
import { maxPool, maxPoolBackward, relu } from "./elementwise-kernels.js";
import { assembleModule, Func, type Local } from "./wasm-asm.js";

/**
 * Rows and 4-float vectors per GEMM register block: 4 × 8 floats = 8 accumulators,
 * 11 of V8's 15 usable xmm registers. Measured (CPU time, this machine): 4×8 beats
 * 3×12, 4×12, 5×8, 6×8, 2×16 and 8×4, and unrolling the k loop 2–8× only slowed it.
 */
const MR = 4;
const NV = 2;
const NR = 4 * NV;
/**
 * Extra floats a caller must leave readable after every B and C operand: an edge
 * block computes NR columns and stores only the valid ones, so its loads may run
 * up to NR − 1 floats past a row's end.
 */
export const KERNEL_SLACK_FLOATS = NR;

/**
 * gemm_nn: C[i, j] (+)= Σ_t A[i·lda + t]·B[t·ldb + j]   (A row-major, m × k)
 * gemm_tn: C[i, j] (+)= Σ_t A[t·lda + i]·B[t·ldb + j]   (A stored transposed, k × m)
 * C is m × n with row stride ldc, B is k × n with row stride ldb; `accumulate` ≠ 0
 * adds to C, 0 overwrites it. 2·m·n·k flops. Per k-step a 4 × 8 block does 2 B
 * loads, 4 splat loads of A, 8 multiplies and 8 adds (no FMA in plain SIMD128).
 */
function gemm(name: string, aTransposed: boolean): Func {
  const f = new Func(name, ["i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32"]);
  const [c, ldc, a, lda, b, ldb, m, n, k, accumulate] = f.params as [Local, Local, Local, Local, Local, Local, Local, Local, Local, Local];
  const i0 = f.local("i32"), j0 = f.local("i32"), t = f.local("i32"), rem = f.local("i32");
  const pb = f.local("i32");
  const pa = Array.from({ length: MR }, () => f.local("i32"));
  const pc = Array.from({ length: MR }, () => f.local("i32"));
  const acc = Array.from({ length: MR }, () => Array.from({ length: NV }, () => f.local("v128")));
  const bv = Array.from({ length: NV }, () => f.local("v128"));
  const av = f.local("v128");

  // Byte addresses and strides from here on.
  for (const l of [c, a, b, ldc, lda, ldb]) f.get(l).i32(2).shl().set(l);

  /** One k-step of a `rows` × NR block; advances the A and B pointers. */
  const kStep = (rows: number): void => {
    for (let v = 0; v < NV; v++) f.get(pb).v128Load(16 * v).set(bv[v]!);
    f.inc(pb, ldb);
    for (let r = 0; r < rows; r++) {
      if (aTransposed) f.get(pa[0]!).v128Load32Splat(4 * r);
      else f.get(pa[r]!).v128Load32Splat();
      f.set(av);
      for (let v = 0; v < NV; v++) {
        f.get(acc[r]![v]!).get(av).get(bv[v]!).f32x4Mul().f32x4Add().set(acc[r]![v]!);
      }
    }
    if (aTransposed) f.inc(pa[0]!, lda);
    else for (let r = 0; r < rows; r++) f.inc(pa[r]!, 4);
  };

  /** Stores lanes 0..cnt−1 (cnt in 0..3, a local) of vector v at byte address addr. */
  const storeLanes = (addr: () => void, v: Local, cnt: Local): void => {
    f.get(cnt).i32(2).geS();
    f.ifElse(() => {
      addr(); f.get(v).v128Store64Lane(0);
      f.get(cnt).i32(3).sub().eqz();
      f.ifElse(() => { addr(); f.get(v).v128Store32Lane(2, 8); });
    }, () => {
      f.get(cnt).i32(1).sub().eqz();
      f.ifElse(() => { addr(); f.get(v).v128Store32Lane(0); });
    });
  };

  /** All NR-wide column blocks for rows i0..i0+rows−1. */
  const columnBlocks = (rows: number): void => {
    f.i32(0).set(j0);
    f.block((done) => f.loop((next) => {
      f.get(j0).get(n).geS().brIf(done);
      // C row pointers, A row pointers, B pointer for this block.
      f.get(c).get(i0).get(ldc).mul().add().get(j0).i32(2).shl().add().set(pc[0]!);
      for (let r = 1; r < rows; r++) f.get(pc[r - 1]!).get(ldc).add().set(pc[r]!);
      if (aTransposed) {
        f.get(a).get(i0).i32(2).shl().add().set(pa[0]!);
      } else {
        f.get(a).get(i0).get(lda).mul().add().set(pa[0]!);
        for (let r = 1; r < rows; r++) f.get(pa[r - 1]!).get(lda).add().set(pa[r]!);
      }
      f.get(b).get(j0).i32(2).shl().add().set(pb);
      f.get(accumulate);
      f.ifElse(() => {
        for (let r = 0; r < rows; r++) for (let v = 0; v < NV; v++) f.get(pc[r]!).v128Load(16 * v).set(acc[r]![v]!);
      }, () => {
        for (let r = 0; r < rows; r++) for (let v = 0; v < NV; v++) f.v128Zero().set(acc[r]![v]!);
      });
      f.get(k).set(t);
      f.block((end) => f.loop((top) => {
        f.get(t).eqz().brIf(end);
        kStep(rows);
        f.inc(t, -1);
        f.br(top);
      }));
      // Store: whole block, or only the rem = n − j0 < NR valid columns.
      f.get(n).get(j0).sub().set(rem);
      f.get(rem).i32(NR).geS();
      f.ifElse(() => {
        for (let r = 0; r < rows; r++) for (let v = 0; v < NV; v++) f.get(pc[r]!).get(acc[r]![v]!).v128Store(16 * v);
      }, () => {
        for (let r = 0; r < rows; r++) {
          for (let v = 0; v < NV; v++) {
            // rem − 4v valid lanes in vector v: ≥ 4 all, 1..3 some, ≤ 0 none.
            const addr = (): void => { f.get(pc[r]!).i32(16 * v).add(); };
            f.get(rem).i32(4 * (v + 1)).geS();
            f.ifElse(() => { addr(); f.get(acc[r]![v]!).v128Store(); }, () => {
              f.get(rem).i32(4 * v).sub().set(t);
              f.get(t).i32(0).gtS();
              f.ifElse(() => storeLanes(addr, acc[r]![v]!, t));
            });
          }
        }
      });
      f.inc(j0, NR);
      f.br(next);
    }));
  };

  f.i32(0).set(i0);
  f.block((done) => f.loop((next) => {
    f.get(i0).i32(MR).add().get(m).gtS().brIf(done);
    columnBlocks(MR);
    f.inc(i0, MR);
    f.br(next);
  }));
  f.block((done) => f.loop((next) => {
    f.get(i0).get(m).geS().brIf(done);
    columnBlocks(1);
    f.inc(i0, 1);
    f.br(next);
  }));
  return f;
}

/** Rows of A and rows of B per gemm_nt block: 2 × 4 dot products = 8 accumulators, 14 registers with the loads. */
const NT_MI = 2;
const NT_NJ = 4;

/** Lanes 0..tail−1 all ones, the rest zero (tail in 1..3). */
function laneMask(tail: number): number[] {
  return Array.from({ length: 16 }, (_, byte) => (byte < 4 * tail ? 0xff : 0));
}

/**
 * gemm_nt: C[i, j] (+)= Σ_t A[i·lda + t]·B[j·ldb + t]: rows of A (m × k) against
 * rows of B (n × k), both contiguous in t, so x·Wᵀ and dy·colsᵀ need no transpose.
 * A 2 × 4 block of dot products runs 4 t at a time (6 loads, 8 multiplies, 8 adds),
 * a masked last step takes the k mod 4 rest, then each accumulator's lanes are summed.
 * 2·m·n·k flops.
 */
function gemmNT(): Func {
  const f = new Func("gemm_nt", ["i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32"]);
  const [c, ldc, a, lda, b, ldb, m, n, k, accumulate] = f.params as [Local, Local, Local, Local, Local, Local, Local, Local, Local, Local];
  const i0 = f.local("i32"), j0 = f.local("i32"), t = f.local("i32"), kMain = f.local("i32"), kTail = f.local("i32"), pc = f.local("i32");
  const pa = Array.from({ length: NT_MI }, () => f.local("i32"));
  const pb = Array.from({ length: NT_NJ }, () => f.local("i32"));
  const acc = Array.from({ length: NT_MI }, () => Array.from({ length: NT_NJ }, () => f.local("v128")));
  const av = Array.from({ length: NT_MI }, () => f.local("v128"));
  const bv = Array.from({ length: NT_NJ }, () => f.local("v128"));
  const mask = f.local("v128");
  const sum = f.local("f32");

  for (const l of [c, a, b, ldc, lda, ldb]) f.get(l).i32(2).shl().set(l);
  f.get(k).i32(-4).and().set(kMain);
  f.get(k).i32(3).and().set(kTail);
  // The tail step reads up to 3 floats past a row's end: the mask zeroes them in A and B alike.
  for (let tail = 1; tail <= 3; tail++) {
    f.get(kTail).i32(tail).sub().eqz();
    f.ifElse(() => { f.v128Const(laneMask(tail)).set(mask); });
  }

  const step = (mi: number, nj: number, masked: boolean): void => {
    for (let r = 0; r < mi; r++) {
      f.get(pa[r]!).v128Load();
      if (masked) f.get(mask).v128And();
      f.set(av[r]!);
    }
    for (let q = 0; q < nj; q++) {
      f.get(pb[q]!).v128Load();
      if (masked) f.get(mask).v128And();
      f.set(bv[q]!);
    }
    for (let r = 0; r < mi; r++) {
      for (let q = 0; q < nj; q++) f.get(acc[r]![q]!).get(av[r]!).get(bv[q]!).f32x4Mul().f32x4Add().set(acc[r]![q]!);
    }
  };

  /** One mi × nj block at (i0, j0). */
  const block = (mi: number, nj: number): void => {
    f.get(a).get(i0).get(lda).mul().add().set(pa[0]!);
    for (let r = 1; r < mi; r++) f.get(pa[r - 1]!).get(lda).add().set(pa[r]!);
    f.get(b).get(j0).get(ldb).mul().add().set(pb[0]!);
    for (let q = 1; q < nj; q++) f.get(pb[q - 1]!).get(ldb).add().set(pb[q]!);
    for (let r = 0; r < mi; r++) for (let q = 0; q < nj; q++) f.v128Zero().set(acc[r]![q]!);
    f.get(kMain).set(t);
    f.block((end) => f.loop((top) => {
      f.get(t).eqz().brIf(end);
      step(mi, nj, false);
      for (let r = 0; r < mi; r++) f.inc(pa[r]!, 16);
      for (let q = 0; q < nj; q++) f.inc(pb[q]!, 16);
      f.inc(t, -4);
      f.br(top);
    }));
    f.get(kTail);
    f.ifElse(() => step(mi, nj, true));
    for (let r = 0; r < mi; r++) {
      f.get(c).get(i0).i32(r).add().get(ldc).mul().add().get(j0).i32(2).shl().add().set(pc);
      for (let q = 0; q < nj; q++) {
        const v = acc[r]![q]!;
        f.get(v).f32x4ExtractLane(0).get(v).f32x4ExtractLane(1).f32Add()
          .get(v).f32x4ExtractLane(2).get(v).f32x4ExtractLane(3).f32Add().f32Add().set(sum);
        f.get(accumulate);
        f.ifElse(() => { f.get(pc).f32Load(4 * q).get(sum).f32Add().set(sum); });
        f.get(pc).get(sum).f32Store(4 * q);
      }
    }
  };

  /** Blocks of mi rows at i0 across all columns: whole NT_NJ blocks, then one block of the rest. */
  const rowOfBlocks = (mi: number): void => {
    f.i32(0).set(j0);
    f.block((done) => f.loop((next) => {
      f.get(j0).i32(NT_NJ).add().get(n).gtS().brIf(done);
      block(mi, NT_NJ);
      f.inc(j0, NT_NJ);
      f.br(next);
    }));
    for (let nj = 1; nj < NT_NJ; nj++) {
      f.get(n).get(j0).sub().i32(nj).sub().eqz();
      f.ifElse(() => block(mi, nj));
    }
  };

  f.i32(0).set(i0);
  f.block((done) => f.loop((next) => {
    f.get(i0).i32(NT_MI).add().get(m).gtS().brIf(done);
    rowOfBlocks(NT_MI);
    f.inc(i0, NT_MI);
    f.br(next);
  }));
  f.block((done) => f.loop((next) => {
    f.get(i0).get(m).geS().brIf(done);
    rowOfBlocks(1);
    f.inc(i0, 1);
    f.br(next);
  }));
  return f;
}

/**
 * gemm_tn_seg: C64[i, j] = Σ_s f64(Σ_{t ∈ segment s} A[t·lda + i]·B[t·ldb + j]) for
 * k = segments·seg: the transposed-A product of each segment of `seg` consecutive t,
 * summed in float32 in t order exactly as gemm_tn (accumulate 0) sums a k = seg
 * product, widened (exactly) to float64 and added up in segment order. C64 is
 * float64 with row stride ldc in f64 elements; offsets are in floats. A rank
 * block's dW = Σ_r dyᵣᵀ·xᵣ in one pass, bit for bit R gemm_tn calls summed in
 * float64. The 4 × 8 block of gemm keeps its 8 float32 accumulators; the 16
 * float64 sums are touched once per segment.
 */
function gemmTNSeg(): Func {
  const f = new Func("gemm_tn_seg", ["i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32"]);
  const [c, ldc, a, lda, b, ldb, m, n, k, seg] = f.params as [Local, Local, Local, Local, Local, Local, Local, Local, Local, Local];
  const i0 = f.local("i32"), j0 = f.local("i32"), t = f.local("i32"), u = f.local("i32"), rem = f.local("i32");
  const pa = f.local("i32"), pb = f.local("i32");
  const pc = Array.from({ length: MR }, () => f.local("i32"));
  const acc = Array.from({ length: MR }, () => Array.from({ length: NV }, () => f.local("v128")));
  const wide = Array.from({ length: MR }, () => Array.from({ length: 2 * NV }, () => f.local("v128")));
  const bv = Array.from({ length: NV }, () => f.local("v128"));
  const av = f.local("v128");
  const HIGH_HALF = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];

  f.get(c).i32(2).shl().set(c);
  f.get(ldc).i32(3).shl().set(ldc);
  for (const l of [a, b, lda, ldb]) f.get(l).i32(2).shl().set(l);

  const block = (rows: number): void => {
    f.i32(0).set(j0);
    f.block((done) => f.loop((next) => {
      f.get(j0).get(n).geS().brIf(done);
      f.get(c).get(i0).get(ldc).mul().add().get(j0).i32(3).shl().add().set(pc[0]!);
      for (let r = 1; r < rows; r++) f.get(pc[r - 1]!).get(ldc).add().set(pc[r]!);
      f.get(a).get(i0).i32(2).shl().add().set(pa);
      f.get(b).get(j0).i32(2).shl().add().set(pb);
      for (let r = 0; r < rows; r++) for (let q = 0; q < 2 * NV; q++) f.v128Zero().set(wide[r]![q]!);
      f.get(k).set(t);
      f.block((end) => f.loop((segment) => {
        f.get(t).i32(0).leS().brIf(end);
        for (let r = 0; r < rows; r++) for (let v = 0; v < NV; v++) f.v128Zero().set(acc[r]![v]!);
        f.get(seg).set(u);
        f.block((segEnd) => f.loop((top) => {
          f.get(u).eqz().brIf(segEnd);
          for (let v = 0; v < NV; v++) f.get(pb).v128Load(16 * v).set(bv[v]!);
          f.inc(pb, ldb);
          for (let r = 0; r < rows; r++) {
            f.get(pa).v128Load32Splat(4 * r).set(av);
            for (let v = 0; v < NV; v++) f.get(acc[r]![v]!).get(av).get(bv[v]!).f32x4Mul().f32x4Add().set(acc[r]![v]!);
          }
          f.inc(pa, lda);
          f.inc(u, -1);
          f.br(top);
        }));
        for (let r = 0; r < rows; r++) {
          for (let v = 0; v < NV; v++) {
            const lo = wide[r]![2 * v]!, hi = wide[r]![2 * v + 1]!, x = acc[r]![v]!;
            f.get(lo).get(x).f64x2PromoteLowF32x4().f64x2Add().set(lo);
            f.get(hi).get(x).get(x).i8x16Shuffle(HIGH_HALF).f64x2PromoteLowF32x4().f64x2Add().set(hi);
          }
        }
        f.get(t).get(seg).sub().set(t);
        f.br(segment);
      }));
      // Store the valid columns: f64 vector q holds columns j0 + 2q, j0 + 2q + 1.
      f.get(n).get(j0).sub().set(rem);
      for (let r = 0; r < rows; r++) {
        for (let q = 0; q < 2 * NV; q++) {
          f.get(rem).i32(2 * q + 2).geS();
          f.ifElse(() => { f.get(pc[r]!).get(wide[r]![q]!).v128Store(16 * q); }, () => {
            f.get(rem).i32(2 * q + 1).sub().eqz();
            f.ifElse(() => { f.get(pc[r]!).i32(16 * q).add().get(wide[r]![q]!).v128Store64Lane(0); });
          });
        }
      }
      f.inc(j0, NR);
      f.br(next);
    }));
  };

  f.i32(0).set(i0);
  f.block((done) => f.loop((next) => {
    f.get(i0).i32(MR).add().get(m).gtS().brIf(done);
    block(MR);
    f.inc(i0, MR);
    f.br(next);
  }));
  f.block((done) => f.loop((next) => {
    f.get(i0).get(m).geS().brIf(done);
    block(1);
    f.inc(i0, 1);
    f.br(next);
  }));
  return f;
}

export interface KernelExports extends NormKernelExports {
  add_f32_f64(dst64: number, src: number, len: number, accumulate: number): void;
  gemm_tn_seg(c64: number, ldc: number, a: number, lda: number, b: number, ldb: number, m: number, n: number, k: number, seg: number): void;
  gemm_nn(c: number, ldc: number, a: number, lda: number, b: number, ldb: number, m: number, n: number, k: number, accumulate: number): void;
  gemm_tn(c: number, ldc: number, a: number, lda: number, b: number, ldb: number, m: number, n: number, k: number, accumulate: number): void;
  im2col(cols: number, x: number, cin: number, inH: number, inW: number, k: number, stride: number, pad: number, outH: number, outW: number): void;
  col2im_add(cols: number, x: number, cin: number, inH: number, inW: number, k: number, stride: number, pad: number, outH: number, outW: number): void;
  gemm_nt(c: number, ldc: number, a: number, lda: number, b: number, ldb: number, m: number, n: number, k: number, accumulate: number): void;
  row_sums(dst: number, src: number, rows: number, len: number): void;
  relu(y: number, x: number, len: number): void;
  relu_backward(dx: number, dy: number, y: number, len: number): void;
  maxpool(y: number, am: number, x: number, planes: number, inH: number, inW: number, k: number, s: number, outH: number, outW: number): void;
  maxpool_backward(dx: number, dy: number, am: number, outLen: number, dxLen: number): void;
}

/** The module's bytes; deterministic, a function of this file alone. `shared`: for a shared memory (compute threads). */
export function kernelModuleBytes(shared = false): Uint8Array {
  return assembleModule([
    gemm("gemm_nn", false),
    gemm("gemm_tn", true),
    gemmNT(),
    rowSums(),
    gemmTNSeg(),
    addF32F64(),
    im2colLike("im2col", false),
    im2colLike("col2im_add", true),
    relu(false),
    relu(true),
    maxPool(),
    maxPoolBackward(),
    ...normKernels(),
  ], shared);
}
