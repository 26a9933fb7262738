// The WebAssembly kernels of the elementwise layers, ReLU and MaxPool2d, as
// TypeScript that emits them, and the loop helper every kernel file uses; they are
// assembled into the one module of wasm-kernels.ts. Not the GEMMs or im2col (there),
// nor BN's passes (norm-kernels.ts).

import { Func, type Label, type Local } from "./wasm-asm.js";

/**
 * relu:          y[i]  = x[i] ≤ 0 ? 0 : x[i]    (relu(y, x, len); y may be x)
 * relu_backward: dx[i] = y[i] ≤ 0 ? 0 : dy[i]   (relu_backward(dx, dy, y, len); dx may be dy)
 * As bit masks (a & ~(b ≤ 0)), so the kept values, NaN among them, pass bit for bit
 * and −0 becomes +0, as in the TypeScript loops of relu.ts. Whole vectors: len is
 * rounded up to a multiple of 4, into the slack every region has (see Arena).
 */
export function relu(backward: boolean): Func {
  const f = new Func(backward ? "relu_backward" : "relu", backward ? ["i32", "i32", "i32", "i32"] : ["i32", "i32", "i32"]);
  const dst = f.params[0]!, src = f.params[1]!;
  const mask = backward ? f.params[2]! : src;
  const len = f.params[backward ? 3 : 2]!;
  const end = f.local("i32");
  for (const l of backward ? [dst, src, mask] : [dst, src]) f.get(l).i32(2).shl().set(l);
  f.get(src).get(len).i32(3).add().i32(-4).and().i32(2).shl().add().set(end);
  f.block((done) => f.loop((top) => {
    f.get(src).get(end).geS().brIf(done);
    f.get(dst).get(src).v128Load();
    f.get(mask).v128Load().v128Zero().f32x4Le();
    f.v128AndNot().v128Store();
    f.inc(dst, 16);
    f.inc(src, 16);
    if (backward) f.inc(mask, 16);
    f.br(top);
  }));
  return f;
}

/**
 * maxpool: per plane (n·C of them, inH × inW each, back to back from x), every
 * k × k window at stride s: y = its max, am = the element index (from x) of it.
 * Strict > keeps the first of equal maxima and a NaN wins (a later NaN over an
 * earlier one), as maxpool.ts's loop and PyTorch; chosen with `select`, not a
 * branch, since which element wins is unpredictable. am is i32 at element offsets.
 */
export function maxPool(): Func {
  const f = new Func("maxpool", ["i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32"]);
  const [y, am, x, planes, inH, inW, kk, s, outH, outW] = f.params as [Local, Local, Local, Local, Local, Local, Local, Local, Local, Local];
  const plane = f.local("i32"), oh = f.local("i32"), ow = f.local("i32"), kh = f.local("i32"), kw = f.local("i32");
  const pOff = f.local("i32"), rowStart = f.local("i32"), start = f.local("i32"), idx = f.local("i32"), best = f.local("i32"), take = f.local("i32");
  const p = f.local("i32"), pair = f.local("i32");
  const v = f.local("f32"), bestV = f.local("f32");
  // k = 2, s = 2 (the cnn's pools), 4 windows at a time: a b / c d are the window's four elements in row-major order.
  const [r0a, r0b, r1a, r1b, a, b, c, d, ia, ib, ic, id, t] = Array.from({ length: 13 }, () => f.local("v128"));
  const lanes = (first: number): number[] => [0, 2, 4, 6].flatMap((q) => [0, 1, 2, 3].map((byte) => 4 * (q + first) + byte));
  const i32x4 = (vals: readonly number[]): number[] => vals.flatMap((q) => [q & 255, (q >> 8) & 255, 0, 0]);
  /** (va, ia) ← (vb, ib) in the lanes where vb > va or vb is NaN: the scalar loop's rule, 4 windows at once. */
  const pick = (va: Local, iaL: Local, vb: Local, ibL: Local): void => {
    f.get(vb).get(va).f32x4Gt().get(vb).get(vb).f32x4Ne().v128Or().set(t);
    f.get(vb).get(va).get(t).v128Bitselect().set(va);
    f.get(ibL).get(iaL).get(t).v128Bitselect().set(iaL);
  };
  f.get(y).i32(2).shl().set(y);
  f.get(am).i32(2).shl().set(am);
  f.get(x).i32(2).shl().set(x);
  f.get(kk).i32(2).sub().eqz().get(s).i32(2).sub().eqz().and().set(pair);
  f.i32(0).set(pOff);
  forRange(f, plane, 0, planes, () => {
    forRange(f, oh, 0, outH, () => {
      f.get(pOff).get(oh).get(s).mul().get(inW).mul().add().set(rowStart);
      f.i32(0).set(ow);
      f.get(pair);
      f.ifElse(() => f.block((fewer) => f.loop((top) => {
        f.get(ow).i32(4).add().get(outW).gtS().brIf(fewer);
        f.get(rowStart).get(ow).i32(1).shl().add().set(idx);
        f.get(x).get(idx).i32(2).shl().add().set(p);
        f.get(p).v128Load().set(r0a);
        f.get(p).v128Load(16).set(r0b);
        f.get(p).get(inW).i32(2).shl().add().set(p);
        f.get(p).v128Load().set(r1a);
        f.get(p).v128Load(16).set(r1b);
        f.get(r0a).get(r0b).i8x16Shuffle(lanes(0)).set(a);
        f.get(r0a).get(r0b).i8x16Shuffle(lanes(1)).set(b);
        f.get(r1a).get(r1b).i8x16Shuffle(lanes(0)).set(c);
        f.get(r1a).get(r1b).i8x16Shuffle(lanes(1)).set(d);
        f.get(idx).i32x4Splat().v128Const(i32x4([0, 2, 4, 6])).i32x4Add().set(ia);
        f.get(ia).v128Const(i32x4([1, 1, 1, 1])).i32x4Add().set(ib);
        f.get(ia).get(inW).i32x4Splat().i32x4Add().set(ic);
        f.get(ic).v128Const(i32x4([1, 1, 1, 1])).i32x4Add().set(id);
        pick(a, ia, b, ib);
        pick(c, ic, d, id);
        pick(a, ia, c, ic);
        f.get(y).get(a).v128Store();
        f.get(am).get(ia).v128Store();
        f.inc(y, 16);
        f.inc(am, 16);
        f.inc(ow, 4);
        f.br(top);
      })));
      // Any window, one at a time: the rest of the row, or all of it for other k and s.
      forRange(f, ow, ow, outW, () => {
        f.get(rowStart).get(ow).get(s).mul().add().set(start);
        f.get(start).set(best);
        f.f32(Number.NEGATIVE_INFINITY).set(bestV);
        forRange(f, kh, 0, kk, () => forRange(f, kw, 0, kk, () => {
          f.get(start).get(kh).get(inW).mul().add().get(kw).add().set(idx);
          f.get(x).get(idx).i32(2).shl().add().f32Load().set(v);
          f.get(v).get(bestV).f32Gt().get(v).get(v).f32Ne().or().set(take);
          f.get(v).get(bestV).get(take).select().set(bestV);
          f.get(idx).get(best).get(take).select().set(best);
        }));
        f.get(y).get(bestV).f32Store();
        f.get(am).get(best).i32Store();
        f.inc(y, 4);
        f.inc(am, 4);
      });
    });
    f.get(pOff).get(inH).get(inW).mul().add().set(pOff);
  });
  return f;
}

/** maxpool_backward: dx (dxLen floats) = 0, then dx[am[o]] += dy[o] for o < outLen, in order (overlapping windows add up). */
export function maxPoolBackward(): Func {
  const f = new Func("maxpool_backward", ["i32", "i32", "i32", "i32", "i32"]);
  const [dx, dy, am, outLen, dxLen] = f.params as [Local, Local, Local, Local, Local];
  const o = f.local("i32"), at = f.local("i32");
  f.get(dx).i32(2).shl().set(dx);
  f.get(dy).i32(2).shl().set(dy);
  f.get(am).i32(2).shl().set(am);
  f.get(dx).i32(0).get(dxLen).i32(2).shl().memoryFill();
  forRange(f, o, 0, outLen, () => {
    f.get(dx).get(am).i32Load().i32(2).shl().add().set(at);
    f.get(at).get(at).f32Load().get(dy).f32Load().f32Add().f32Store();
    f.inc(am, 4);
    f.inc(dy, 4);
  });
  return f;
}

/** Emits `for (l = from; l < to; l++) body`; `exit` leaves the loop. */
export function forRange(f: Func, l: Local, from: number | Local, to: Local, body: (exit: Label) => void): void {
  if (typeof from === "number") f.i32(from); else f.get(from);
  f.set(l);
  f.block((exit) => f.loop((top) => {
    f.get(l).get(to).geS().brIf(exit);
    body(exit);
    f.inc(l, 1);
    f.br(top);
  }));
}
