// The WebAssembly kernels that move or widen data around the GEMMs, as TypeScript
// that emits them: im2col and its adjoint col2im (a convolution's columns), row
// sums (a convolution's db), and add_f32_f64 (float32 products widened into a
// float64 sum: a convolution's dW over a batch). Assembled into the one module of
// wasm-kernels.ts; the same calling rules (float-element offsets into the imported
// memory, no allocation).

import { forRange } from "./elementwise-kernels.js";
import { Func, type Local } from "./wasm-asm.js";

/** dst[r] = Σ_j src[r·len + j] for r < rows, four float32 lanes per row then summed (db = Σ dy). */
export function rowSums(): Func {
  const f = new Func("row_sums", ["i32", "i32", "i32", "i32"]);
  const [dst, src, rows, len] = f.params as [Local, Local, Local, Local];
  const r = f.local("i32"), end = f.local("i32"), vecEnd = f.local("i32");
  const acc = f.local("v128"), sum = f.local("f32");
  f.get(dst).i32(2).shl().set(dst);
  f.get(src).i32(2).shl().set(src);
  forRange(f, r, 0, rows, () => {
    f.get(src).get(len).i32(2).shl().add().set(end);
    f.get(src).get(len).i32(-4).and().i32(2).shl().add().set(vecEnd);
    f.v128Zero().set(acc);
    f.block((done) => f.loop((top) => {
      f.get(src).get(vecEnd).geS().brIf(done);
      f.get(acc).get(src).v128Load().f32x4Add().set(acc);
      f.inc(src, 16);
      f.br(top);
    }));
    f.get(acc).f32x4ExtractLane(0).get(acc).f32x4ExtractLane(1).f32Add()
      .get(acc).f32x4ExtractLane(2).get(acc).f32x4ExtractLane(3).f32Add().f32Add().set(sum);
    f.block((done) => f.loop((top) => {
      f.get(src).get(end).geS().brIf(done);
      f.get(sum).get(src).f32Load().f32Add().set(sum);
      f.inc(src, 4);
      f.br(top);
    }));
    f.get(dst).get(sum).f32Store();
    f.inc(dst, 4);
  });
  return f;
}

/**
 * im2col (cols ← x) or its adjoint col2im (x += cols), one sample:
 * cols[(ci·k + kh)·k + kw, oh·outW + ow] ↔ x[ci, oh·s − pad + kh, ow·s − pad + kw].
 * im2col zero-fills cols first (padding positions); col2im leaves them out. The
 * valid ow range [lo, hi) is found per (kh, kw) so the inner loop has no test.
 */
export function im2colLike(name: string, adjoint: boolean): Func {
  const f = new Func(name, ["i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32"]);
  const [cols, x, cin, inH, inW, kk, s, pad, outH, outW] = f.params as [Local, Local, Local, Local, Local, Local, Local, Local, Local, Local];
  const ci = f.local("i32"), kh = f.local("i32"), kw = f.local("i32"), oh = f.local("i32"), ow = f.local("i32");
  const lo = f.local("i32"), hi = f.local("i32"), ih = f.local("i32");
  const dst = f.local("i32"), src = f.local("i32"), sB = f.local("i32"), rowBase = f.local("i32");

  f.get(cols).i32(2).shl().set(cols);
  f.get(x).i32(2).shl().set(x);
  f.get(s).i32(2).shl().set(sB);
  if (!adjoint) {
    // byte length = cin·k·k·outH·outW·4
    f.get(cols).i32(0).get(cin).get(kk).mul().get(kk).mul().get(outH).mul().get(outW).mul().i32(2).shl().memoryFill();
  }
  f.get(cols).set(rowBase);
  forRange(f, ci, 0, cin, () => forRange(f, kh, 0, kk, () => forRange(f, kw, 0, kk, () => {
    // lo = first ow with ow·s − pad + kw ≥ 0; hi = one past the last with ow·s − pad + kw < inW.
    f.i32(0).set(lo);
    f.block((ok) => f.loop((top) => {
      f.get(lo).get(outW).geS().brIf(ok);
      f.get(lo).get(s).mul().get(pad).sub().get(kw).add().i32(0).geS().brIf(ok);
      f.inc(lo, 1);
      f.br(top);
    }));
    f.get(outW).set(hi);
    f.block((ok) => f.loop((top) => {
      f.get(hi).get(lo).leS().brIf(ok);
      f.get(hi).i32(1).sub().get(s).mul().get(pad).sub().get(kw).add().get(inW).ltS().brIf(ok);
      f.inc(hi, -1);
      f.br(top);
    }));
    forRange(f, oh, 0, outH, () => {
      f.get(oh).get(s).mul().get(pad).sub().get(kh).add().set(ih);
      f.block((rowDone) => {
        f.get(ih).i32(0).ltS().brIf(rowDone);
        f.get(ih).get(inH).geS().brIf(rowDone);
        // dst = rowBase + (oh·outW + lo)·4; src = x + ((ci·inH + ih)·inW − pad + kw + lo·s)·4
        f.get(rowBase).get(oh).get(outW).mul().get(lo).add().i32(2).shl().add().set(dst);
        f.get(x).get(ci).get(inH).mul().get(ih).add().get(inW).mul().get(pad).sub().get(kw).add()
          .get(lo).get(s).mul().add().i32(2).shl().add().set(src);
        f.get(lo).set(ow);
        // Stride 1: whole vectors while 4 or more remain (the runs are contiguous on both sides).
        f.get(s).i32(1).sub().eqz();
        f.ifElse(() => f.block((fewer) => f.loop((top) => {
          f.get(ow).i32(4).add().get(hi).gtS().brIf(fewer);
          if (adjoint) f.get(src).get(src).v128Load().get(dst).v128Load().f32x4Add().v128Store();
          else f.get(dst).get(src).v128Load().v128Store();
          f.inc(dst, 16);
          f.inc(src, 16);
          f.inc(ow, 4);
          f.br(top);
        })));
        forRange(f, ow, ow, hi, () => {
          if (adjoint) f.get(src).get(src).f32Load().get(dst).f32Load().f32Add().f32Store();
          else f.get(dst).get(src).f32Load().f32Store();
          f.inc(dst, 4);
          f.inc(src, sB);
        });
      });
    });
    f.get(rowBase).get(outH).get(outW).mul().i32(2).shl().add().set(rowBase);
  })));
  return f;
}

/**
 * add_f32_f64: dst64[i] (+)= f64(src[i]) for i < len; `accumulate` 0 overwrites.
 * dst64 is float64 at a float offset (8-byte aligned), src float32. The widening
 * is exact, so a sum of float32 partial products kept here rounds once per add
 * in float64: what keeps a convolution's dW, summed over a batch of thousands of
 * positions, at float64 accuracy (float32 sums drifted by 1e-3 at batch 64).
 */
export function addF32F64(): Func {
  const f = new Func("add_f32_f64", ["i32", "i32", "i32", "i32"]);
  const [dst, src, len, accumulate] = f.params as [Local, Local, Local, Local];
  const vecEnd = f.local("i32"), end = f.local("i32"), x = f.local("v128");
  const HIGH_HALF = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];
  f.get(dst).i32(2).shl().set(dst);
  f.get(src).i32(2).shl().set(src);
  f.get(src).get(len).i32(-4).and().i32(2).shl().add().set(vecEnd);
  f.get(src).get(len).i32(2).shl().add().set(end);
  f.block((done) => f.loop((top) => {
    f.get(src).get(vecEnd).geS().brIf(done);
    f.get(src).v128Load().set(x);
    f.get(accumulate).eqz();
    f.ifElse(() => {
      f.get(dst).get(x).f64x2PromoteLowF32x4().v128Store();
      f.get(dst).get(x).get(x).i8x16Shuffle(HIGH_HALF).f64x2PromoteLowF32x4().v128Store(16);
    }, () => {
      f.get(dst).get(dst).v128Load().get(x).f64x2PromoteLowF32x4().f64x2Add().v128Store();
      f.get(dst).get(dst).v128Load(16).get(x).get(x).i8x16Shuffle(HIGH_HALF).f64x2PromoteLowF32x4().f64x2Add().v128Store(16);
    });
    f.inc(src, 16);
    f.inc(dst, 32);
    f.br(top);
  }));
  f.block((done) => f.loop((top) => {
    f.get(src).get(end).geS().brIf(done);
    f.get(accumulate).eqz();
    f.ifElse(() => { f.get(dst).get(src).f32Load().f64PromoteF32().f64Store(); },
      () => { f.get(dst).get(dst).f64Load().get(src).f32Load().f64PromoteF32().f64Add().f64Store(); });
    f.inc(src, 4);
    f.inc(dst, 8);
    f.br(top);
  }));
  return f;
}
