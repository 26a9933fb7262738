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

/**
 * Row pairs per group of a reduction: 4 (8 rows, 4 add chains) for one stream,
 * 2 (4 rows, 2 chains per output) for grad sums, whose 2 streams × 8 row pointers
 * would not fit the registers.
 */
const pairsFor = (streams: number): number => (streams === 1 ? 4 : 2);
const LOW_HALVES = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];
const HIGH_HALVES = [8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31];

/**
 * A per-row float64 reduction whose order is the TypeScript twin's exactly: each
 * row (i, ch) is summed from 0, element after element, then added to dst[o][ch]
 * in row order. The SIMD lanes hold two ROWS, not two parts of one row: rows are
 * taken 8 (or 4) at a time, the two floats [j, j+1] of each are widened, and the pair of
 * rows is interleaved into [row a at j, row b at j] then [.., at j+1], so every
 * lane adds its own row's values in order. Bit for bit the twin's sums.
 *
 * `terms` gives the f64x2 terms of two consecutive elements of one row, `term1`
 * of one element (see Terms). Cost per element ≈ the lane-split sum's plus one
 * shuffle per two (measured: 0.15 against 0.10 ms for Σx over 2 MB).
 */
function reduceRows(
  name: string, streams: number, outputs: number, withMean: boolean,
  terms: Terms,
  term1: Terms,
): Func {
  const { f, ptr, n, c, s } = kernel(name, 1 + streams + (withMean ? 1 : 0));
  const dst = ptr[0]!, src = ptr.slice(1, 1 + streams), mean = withMean ? ptr[1 + streams]! : null;
  const PAIRS = pairsFor(streams);
  const rows = 2 * PAIRS;
  const rowBytes = f.local("i32"), c8 = f.local("i32"), ch8 = f.local("i32"), left = f.local("i32"), remaining = f.local("i32");
  const dsts = Array.from({ length: outputs }, () => f.local("i32"));
  const rp = src.map(() => Array.from({ length: rows }, () => f.local("i32"))); // row pointers per stream
  const chOf = Array.from({ length: rows }, () => f.local("i32"));
  const mus = withMean ? Array.from({ length: rows }, () => f.local("v128")) : [];
  const musOne = withMean ? Array.from({ length: rows }, () => f.local("f64")) : [];
  const acc = Array.from({ length: outputs }, () => Array.from({ length: PAIRS }, () => f.local("v128")));
  const ta = Array.from({ length: outputs }, () => f.local("v128"));
  const tb = Array.from({ length: outputs }, () => f.local("v128"));
  const one = Array.from({ length: outputs }, () => f.local("f64"));
  const tail = Array.from({ length: outputs }, () => f.local("f64"));

  f.get(s).i32(2).shl().set(rowBytes);
  f.get(c).i32(3).shl().set(c8);
  for (let o = 0; o < outputs; o++) f.get(dst).get(c8).i32(o).mul().add().set(dsts[o]!);
  f.get(n).get(c).mul().set(remaining);
  f.i32(0).set(ch8);
  src.forEach((l, st) => f.get(l).set(rp[st]![0]!));
  const nextChannel = (): void => {
    f.inc(ch8, 8);
    f.get(ch8).get(c8).geS();
    f.ifElse(() => { f.i32(0).set(ch8); });
  };
  const loadRow1 = (k: number) => (st: number): void => { f.get(rp[st]![k]!).f32Load().f64PromoteF32(); };
  /** dst[o][channel of row k] += value on the stack (f64). */
  const addToDst = (o: number, k: number, value: () => void): void => {
    f.get(dsts[o]!).get(chOf[k]!).add();
    f.get(dsts[o]!).get(chOf[k]!).add().f64Load();
    value();
    f.f64Add().f64Store();
  };

  // Groups of `rows` rows.
  f.block((done) => f.loop((top) => {
    f.get(remaining).i32(rows).ltS().brIf(done);
    for (let st = 0; st < streams; st++) {
      for (let k = 1; k < rows; k++) f.get(rp[st]![k - 1]!).get(rowBytes).add().set(rp[st]![k]!);
    }
    for (let k = 0; k < rows; k++) {
      f.get(ch8).set(chOf[k]!);
      if (mean) {
        f.get(mean).get(ch8).add().v128Load64Splat().set(mus[k]!);
        f.get(mean).get(ch8).add().f64Load().set(musOne[k]!);
      }
      nextChannel();
    }
    for (const a of acc) for (const v of a) f.v128Zero().set(v);
    f.get(s).set(left);
    /** Columns [j, j + 2) at byte offset off from the row pointers, into every pair's accumulators. */
    const columnPair = (off: number): void => {
      for (let g = 0; g < PAIRS; g++) {
        const pair = (k: number, out: readonly Local[]): void => {
          terms(f, (st) => { f.get(rp[st]![k]!).v128Load64Zero(off).f64x2PromoteLowF32x4(); }, mean ? mus[k]! : null, out);
        };
        pair(2 * g, ta);
        pair(2 * g + 1, tb);
        for (let o = 0; o < outputs; o++) {
          const av = acc[o]![g]!;
          f.get(av).get(ta[o]!).get(tb[o]!).i8x16Shuffle(LOW_HALVES).f64x2Add();
          f.get(ta[o]!).get(tb[o]!).i8x16Shuffle(HIGH_HALVES).f64x2Add().set(av);
        }
      }
    };
    f.block((cols) => f.loop((next) => {
      f.get(left).i32(4).ltS().brIf(cols);
      columnPair(0);
      columnPair(8);
      for (const r of rp) for (const l of r) f.inc(l, 16);
      f.inc(left, -4).br(next);
    }));
    f.get(left).i32(2).geS();
    f.ifElse(() => {
      columnPair(0);
      for (const r of rp) for (const l of r) f.inc(l, 8);
      f.inc(left, -2);
    });
    // Each row's total (its lane), plus its last element when S is odd, into dst in row order.
    for (let k = 0; k < rows; k++) {
      for (let o = 0; o < outputs; o++) f.get(acc[o]![k >> 1]!).f64x2ExtractLane(k & 1).set(one[o]!);
      f.get(left);
      f.ifElse(() => {
        term1(f, loadRow1(k), mean ? musOne[k]! : null, tail);
        for (let o = 0; o < outputs; o++) f.get(one[o]!).get(tail[o]!).f64Add().set(one[o]!);
      });
      for (let o = 0; o < outputs; o++) addToDst(o, k, () => f.get(one[o]!));
    }
    // Row 0 of the next group: the row after the last, whose pointer moved S floats (minus the odd tail).
    for (let st = 0; st < streams; st++) {
      f.get(rp[st]![rows - 1]!).get(left).i32(2).shl().add().set(rp[st]![0]!);
    }
    f.inc(remaining, -rows).br(top);
  }));
  // Fewer than `rows` rows left: one at a time, scalar, the same order.
  f.block((done) => f.loop((top) => {
    f.get(remaining).eqz().brIf(done);
    f.get(ch8).set(chOf[0]!);
    if (mean) f.get(mean).get(ch8).add().f64Load().set(musOne[0]!);
    for (let o = 0; o < outputs; o++) f.f64(0).set(one[o]!);
    f.get(s).set(left);
    f.block((end) => f.loop((next) => {
      f.get(left).eqz().brIf(end);
      term1(f, loadRow1(0), mean ? musOne[0]! : null, tail);
      for (let o = 0; o < outputs; o++) f.get(one[o]!).get(tail[o]!).f64Add().set(one[o]!);
      for (const r of rp) f.inc(r[0]!, 4);
      f.inc(left, -1).br(next);
    }));
    for (let o = 0; o < outputs; o++) addToDst(o, 0, () => f.get(one[o]!));
    nextChannel();
    f.inc(remaining, -1).br(top);
  }));
  return f;
}

/**
 * Sets out[o] to output o's term(s) of a row's next element(s): `load(st)` pushes
 * stream st's values widened (f64x2 for two elements, f64 for one), `mu` is the
 * row's mean in the same shape (null without one).
 */
type Terms = (f: Func, load: (st: number) => void, mu: Local | null, out: readonly Local[]) => void;

/** bn_sum(dst, x, n, c, s): dst[ch] += Σ_{i,j} x[i, ch, j] in float64, the twin's order (dst: C doubles). */
function bnSum(): Func {
  const term: Terms = (f, load, _mu, out) => { load(0); f.set(out[0]!); };
  return reduceRows("bn_sum", 1, 1, false, term, term);
}

/** bn_sqdev(dst, x, mean, n, c, s): dst[ch] += Σ (x − mean[ch])², the second moments pass, the twin's order. */
function bnSqdev(): Func {
  return reduceRows("bn_sqdev", 1, 1, true,
    (f, load, mu, out) => { load(0); f.get(mu!).f64x2Sub().tee(out[0]!).get(out[0]!).f64x2Mul().set(out[0]!); },
    (f, load, mu, out) => { load(0); f.get(mu!).f64Sub().tee(out[0]!).get(out[0]!).f64Mul().set(out[0]!); });
}

/** bn_grad_sums(dst, dy, xhat, n, c, s): dst[ch] += Σdy, dst[C + ch] += Σdy·xhat, the twin's order (dst: 2C doubles). */
function bnGradSums(): Func {
  return reduceRows("bn_grad_sums", 2, 2, false,
    (f, load, _mu, out) => { load(0); f.tee(out[0]!); load(1); f.f64x2Mul().set(out[1]!); },
    (f, load, _mu, out) => { load(0); f.tee(out[0]!); load(1); f.f64Mul().set(out[1]!); });
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

/**
 * bn_dx(dx, dy, xhat, k, a, b, n, c, s): dx = k·((dy − a) − xhat·b) per channel; dx may be dy.
 * gn_dx(dx, dy, xhat, k, g, a, b, n, c, s): dx = k·((g·dy − a) − xhat·b), GroupNorm's (g = γ of the row's channel).
 */
function bnDx(scaled: boolean): Func {
  const { f, ptr, n, c, s } = kernel(scaled ? "gn_dx" : "bn_dx", scaled ? 7 : 6);
  const [dx, dy, xhat, k, ...rest] = ptr as [Local, Local, Local, Local, ...Local[]];
  const [g, a, b] = (scaled ? rest : [null, ...rest]) as [Local | null, Local, Local];
  const kc = new ChannelConst(f, k), ac = new ChannelConst(f, a), bc = new ChannelConst(f, b);
  const gc = g ? new ChannelConst(f, g) : null;
  rowLoop(f, [dx, dy, xhat], n, c, s, {
    begin: (ch8) => { kc.load(ch8); ac.load(ch8); bc.load(ch8); gc?.load(ch8); },
    pair: (off) => storePair(f, dx, off, () => {
      f.get(kc.v);
      if (gc) f.get(gc.v);
      loadPair(f, dy, off);
      if (gc) f.f64x2Mul();
      f.get(ac.v).f64x2Sub();
      loadPair(f, xhat, off);
      f.get(bc.v).f64x2Mul().f64x2Sub().f64x2Mul();
    }),
    single: () => storeOne(f, dx, () => {
      f.get(kc.s);
      if (gc) f.get(gc.s);
      loadOne(f, dy);
      if (gc) f.f64Mul();
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
  gn_dx(dx: number, dy: number, xhat: number, k: number, g: number, a: number, b: number, n: number, c: number, s: number): void;
  bn_affine(y: number, x: number, mean: number, k: number, b: number, n: number, c: number, s: number): void;
}

export function normKernels(): Func[] {
  return [bnSum(), bnSqdev(), bnGradSums(), bnNormalize(), bnDx(false), bnDx(true), bnAffine()];
}
