// The WebAssembly SIMD passes of batch normalization over (N, C, S) float32 data,
// written as TypeScript that emits them (see wasm-asm.ts): moments, normalize,
// gradient sums, dx and eval normalize. Every value is widened to float64 two lanes
// at a time (f64x2) and rounded to float32 once, as the twins in shared/stats.ts do.
// Not the statistics math itself (merges, running stats, invStd: shared/stats.ts).

import { Func, type Local } from "./wasm-asm.js";

/**
 * One pass over the rows (i, ch) of S floats. `pair` handles the two floats at
 * byte offset `off` from every stream's pointer (slot 0..3: which accumulator set
 * of a reduction takes them), `single` one float at offset 0 (the S mod 4 tail);
 * `begin`/`end` run per row with ch8 = 8·ch, the byte offset of channel ch in the
 * float64 per-channel arrays.
 */
interface RowPass {
  begin(ch8: Local): void;
  pair(off: number, slot: number): void;
  single(): void;
  end(ch8: Local): void;
}

function forRange(f: Func, l: Local, to: Local, body: () => void): void {
  f.i32(0).set(l);
  f.block((exit) => f.loop((top) => {
    f.get(l).get(to).geS().brIf(exit);
    body();
    f.inc(l, 1);
    f.br(top);
  }));
}

/** Floats per main-loop iteration: 8 f64x2 pairs, so the pointer bumps and the branch are ~1/6 of the work. */
const UNROLL_FLOATS = 16;

/**
 * Rows in memory order. `streams` are the byte pointers of the (N, C, S) arrays,
 * advanced together; every access is pointer + constant offset (no address adds).
 */
function rowLoop(f: Func, streams: readonly Local[], n: Local, c: Local, s: Local, pass: RowPass): void {
  const i = f.local("i32"), ch = f.local("i32"), ch8 = f.local("i32"), left = f.local("i32");
  const advance = (bytes: number): void => { for (const p of streams) f.inc(p, bytes); };
  /** `floats` floats (a multiple of 4) as pairs, then the pointers move past them. */
  const pairs = (floats: number): void => {
    for (let k = 0; k < floats / 2; k++) pass.pair(8 * k, k % 4);
    advance(4 * floats);
    f.inc(left, -floats);
  };
  forRange(f, i, n, () => {
    f.i32(0).set(ch8);
    forRange(f, ch, c, () => {
      pass.begin(ch8);
      f.get(s).set(left);
      f.block((done) => f.loop((top) => {
        f.get(left).i32(UNROLL_FLOATS).ltS().brIf(done);
        pairs(UNROLL_FLOATS);
        f.br(top);
      }));
      for (let rest = UNROLL_FLOATS / 2; rest >= 4; rest /= 2) {
        f.get(left).i32(rest).geS();
        f.ifElse(() => pairs(rest));
      }
      f.block((done) => f.loop((top) => {
        f.get(left).eqz().brIf(done);
        pass.single();
        advance(4);
        f.inc(left, -1).br(top);
      }));
      pass.end(ch8);
      f.inc(ch8, 8);
    });
  });
}

/** A kernel's parameters: float-element offsets (converted to bytes on entry), then n, c, s. */
function kernel(name: string, pointers: number): { f: Func; ptr: Local[]; n: Local; c: Local; s: Local } {
  const f = new Func(name, [...new Array<"i32">(pointers).fill("i32"), "i32", "i32", "i32"]);
  const ptr = f.params.slice(0, pointers);
  for (const l of ptr) f.get(l).i32(2).shl().set(l);
  const [n, c, s] = f.params.slice(pointers) as [Local, Local, Local];
  return { f, ptr, n, c, s };
}

/** Two floats at byte ptr + off, widened: an f64x2 on the stack. */
function loadPair(f: Func, ptr: Local, off: number): void {
  f.get(ptr).v128Load64Zero(off).f64x2PromoteLowF32x4();
}
function loadOne(f: Func, ptr: Local): void {
  f.get(ptr).f32Load().f64PromoteF32();
}
/** Rounds the f64x2 `value` leaves on the stack to two floats at byte ptr + off. */
function storePair(f: Func, ptr: Local, off: number, value: () => void): void {
  f.get(ptr);
  value();
  f.f32x4DemoteF64x2Zero().v128Store64Lane(0, off);
}
function storeOne(f: Func, ptr: Local, value: () => void): void {
  f.get(ptr);
  value();
  f.f32DemoteF64().f32Store();
}

/** A float64 sum per row kept in four f64x2 accumulators and a scalar (the tail); `end` adds it to dst[ch]. */
class RowSum {
  readonly acc: Local[];
  readonly tail: Local;
  constructor(private readonly f: Func) {
    this.acc = Array.from({ length: 4 }, () => f.local("v128"));
    this.tail = f.local("f64");
  }
  clear(): void {
    for (const a of this.acc) this.f.v128Zero().set(a);
    this.f.f64(0).set(this.tail);
  }
  /** acc[slot] += the f64x2 `value` leaves on the stack. */
  addPair(slot: number, value: () => void): void {
    this.f.get(this.acc[slot]!);
    value();
    this.f.f64x2Add().set(this.acc[slot]!);
  }
  addOne(value: () => void): void {
    this.f.get(this.tail);
    value();
    this.f.f64Add().set(this.tail);
  }
  /** dst[ch] += ((acc0 + acc1) + (acc2 + acc3)) summed over lanes, plus the tail; dst a byte address. */
  flushTo(dst: Local, ch8: Local): void {
    const f = this.f;
    const [a0, a1, a2, a3] = this.acc as [Local, Local, Local, Local];
    f.get(a0).get(a1).f64x2Add().get(a2).get(a3).f64x2Add().f64x2Add().set(a0);
    f.get(dst).get(ch8).add();
    f.get(dst).get(ch8).add().f64Load();
    f.get(a0).f64x2ExtractLane(0).get(a0).f64x2ExtractLane(1).f64Add().get(this.tail).f64Add();
    f.f64Add().f64Store();
  }
}

/** Per-channel float64 constant, as a splat (for pairs) and a scalar (for the tail). */
class ChannelConst {
  readonly v: Local;
  readonly s: Local;
  constructor(private readonly f: Func, private readonly base: Local) {
    this.v = f.local("v128");
    this.s = f.local("f64");
  }
  load(ch8: Local): void {
    this.f.get(this.base).get(ch8).add().v128Load64Splat().set(this.v);
    this.f.get(this.base).get(ch8).add().f64Load().set(this.s);
  }
}

/** bn_sum(dst, x, n, c, s): dst[ch] += Σ_{i,j} x[i, ch, j] in float64 (dst: C doubles). */
function bnSum(): Func {
  const { f, ptr, n, c, s } = kernel("bn_sum", 2);
  const [dst, x] = ptr as [Local, Local];
  const sum = new RowSum(f);
  rowLoop(f, [x], n, c, s, {
    begin: () => sum.clear(),
    pair: (off, k) => sum.addPair(k, () => loadPair(f, x, off)),
    single: () => sum.addOne(() => loadOne(f, x)),
    end: (ch8) => sum.flushTo(dst, ch8),
  });
  return f;
}

/** bn_sqdev(dst, x, mean, n, c, s): dst[ch] += Σ (x − mean[ch])² in float64, the second moments pass. */
function bnSqdev(): Func {
  const { f, ptr, n, c, s } = kernel("bn_sqdev", 3);
  const [dst, x, mean] = ptr as [Local, Local, Local];
  const sum = new RowSum(f);
  const mu = new ChannelConst(f, mean);
  const d = f.local("v128"), d1 = f.local("f64");
  rowLoop(f, [x], n, c, s, {
    begin: (ch8) => { sum.clear(); mu.load(ch8); },
    pair: (off, k) => sum.addPair(k, () => {
      loadPair(f, x, off);
      f.get(mu.v).f64x2Sub().tee(d).get(d).f64x2Mul();
    }),
    single: () => sum.addOne(() => {
      loadOne(f, x);
      f.get(mu.s).f64Sub().tee(d1).get(d1).f64Mul();
    }),
    end: (ch8) => sum.flushTo(dst, ch8),
  });
  return f;
}

/** bn_grad_sums(dst, dy, xhat, n, c, s): dst[ch] += Σdy, dst[C + ch] += Σdy·xhat in float64 (dst: 2C doubles). */
function bnGradSums(): Func {
  const { f, ptr, n, c, s } = kernel("bn_grad_sums", 3);
  const [dst, dy, xhat] = ptr as [Local, Local, Local];
  const dst2 = f.local("i32");
  const s1 = new RowSum(f), s2 = new RowSum(f);
  const g = f.local("v128"), g1 = f.local("f64");
  f.get(dst).get(c).i32(3).shl().add().set(dst2);
  rowLoop(f, [dy, xhat], n, c, s, {
    begin: () => { s1.clear(); s2.clear(); },
    pair: (off, k) => {
      s1.addPair(k, () => { loadPair(f, dy, off); f.tee(g); });
      s2.addPair(k, () => { f.get(g); loadPair(f, xhat, off); f.f64x2Mul(); });
    },
    single: () => {
      s1.addOne(() => { loadOne(f, dy); f.tee(g1); });
      s2.addOne(() => { f.get(g1); loadOne(f, xhat); f.f64Mul(); });
    },
    end: (ch8) => { s1.flushTo(dst, ch8); s2.flushTo(dst2, ch8); },
  });
  return f;
}

/**
 * bn_normalize(y, xhat, x, mean, invStd, gamma, beta, n, c, s): h = (x − mean)·invStd,
 * xhat = h, y = gamma·h + beta (per-channel arrays float64). y may be x (in place).
 */
function bnNormalize(): Func {
  const { f, ptr, n, c, s } = kernel("bn_normalize", 7);
  const [y, xhat, x, mean, invStd, gamma, beta] = ptr as [Local, Local, Local, Local, Local, Local, Local];
  const mu = new ChannelConst(f, mean), is = new ChannelConst(f, invStd), g = new ChannelConst(f, gamma), b = new ChannelConst(f, beta);
  const h = f.local("v128"), h1 = f.local("f64");
  rowLoop(f, [y, xhat, x], n, c, s, {
    begin: (ch8) => { mu.load(ch8); is.load(ch8); g.load(ch8); b.load(ch8); },
    pair: (off) => {
      storePair(f, xhat, off, () => { loadPair(f, x, off); f.get(mu.v).f64x2Sub().get(is.v).f64x2Mul().tee(h); });
      storePair(f, y, off, () => { f.get(g.v).get(h).f64x2Mul().get(b.v).f64x2Add(); });
    },
    single: () => {
      storeOne(f, xhat, () => { loadOne(f, x); f.get(mu.s).f64Sub().get(is.s).f64Mul().tee(h1); });
      storeOne(f, y, () => { f.get(g.s).get(h1).f64Mul().get(b.s).f64Add(); });
    },
    end: () => {},
  });
  return f;
}

/** bn_dx(dx, dy, xhat, k, a, b, n, c, s): dx = k·((dy − a) − xhat·b) per channel; dx may be dy. */
function bnDx(): Func {
  const { f, ptr, n, c, s } = kernel("bn_dx", 6);
  const [dx, dy, xhat, k, a, b] = ptr as [Local, Local, Local, Local, Local, Local];
  const kc = new ChannelConst(f, k), ac = new ChannelConst(f, a), bc = new ChannelConst(f, b);
  rowLoop(f, [dx, dy, xhat], n, c, s, {
    begin: (ch8) => { kc.load(ch8); ac.load(ch8); bc.load(ch8); },
    pair: (off) => storePair(f, dx, off, () => {
      f.get(kc.v);
      loadPair(f, dy, off);
      f.get(ac.v).f64x2Sub();
      loadPair(f, xhat, off);
      f.get(bc.v).f64x2Mul().f64x2Sub().f64x2Mul();
    }),
    single: () => storeOne(f, dx, () => {
      f.get(kc.s);
      loadOne(f, dy);
      f.get(ac.s).f64Sub();
      loadOne(f, xhat);
      f.get(bc.s).f64Mul().f64Sub().f64Mul();
    }),
    end: () => {},
  });
  return f;
}

/** bn_affine(y, x, mean, k, b, n, c, s): y = (x − mean)·k + b per channel (eval mode); y may be x. */
function bnAffine(): Func {
  const { f, ptr, n, c, s } = kernel("bn_affine", 5);
  const [y, x, mean, k, b] = ptr as [Local, Local, Local, Local, Local];
  const mu = new ChannelConst(f, mean), kc = new ChannelConst(f, k), bc = new ChannelConst(f, b);
  rowLoop(f, [y, x], n, c, s, {
    begin: (ch8) => { mu.load(ch8); kc.load(ch8); bc.load(ch8); },
    pair: (off) => storePair(f, y, off, () => {
      loadPair(f, x, off);
      f.get(mu.v).f64x2Sub().get(kc.v).f64x2Mul().get(bc.v).f64x2Add();
    }),
    single: () => storeOne(f, y, () => {
      loadOne(f, x);
      f.get(mu.s).f64Sub().get(kc.s).f64Mul().get(bc.s).f64Add();
    }),
    end: () => {},
  });
  return f;
}

/** Offsets in floats; float64 arrays must start 8-byte aligned. */
export interface NormKernelExports {
  bn_sum(dst: number, x: number, n: number, c: number, s: number): void;
  bn_sqdev(dst: number, x: number, mean: number, n: number, c: number, s: number): void;
  bn_grad_sums(dst: number, dy: number, xhat: number, n: number, c: number, s: number): void;
  bn_normalize(y: number, xhat: number, x: number, mean: number, invStd: number, gamma: number, beta: number, n: number, c: number, s: number): void;
  bn_dx(dx: number, dy: number, xhat: number, k: number, a: number, b: number, n: number, c: number, s: number): void;
  bn_affine(y: number, x: number, mean: number, k: number, b: number, n: number, c: number, s: number): void;
}

export function normKernels(): Func[] {
  return [bnSum(), bnSqdev(), bnGradSums(), bnNormalize(), bnDx(), bnAffine()];
}
