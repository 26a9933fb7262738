// A minimal WebAssembly binary assembler: enough of the MVP, bulk-memory and
// SIMD128 instruction sets to write the kernels in wasm-kernels.ts as TypeScript
// that emits instructions (so loops can be unrolled and register blocks sized by
// plain TS code, and `npm run build` needs no toolchain besides tsc).
// Not a general toolkit: no tables, globals, data segments or multi-value blocks.

export type ValType = "i32" | "f32" | "f64" | "v128";
const VALTYPE: Record<ValType, number> = { i32: 0x7f, f32: 0x7d, f64: 0x7c, v128: 0x7b };

/** A local (parameters included), by index. */
export interface Local {
  readonly index: number;
  readonly type: ValType;
}

/** A structured-control label; `br(label)` jumps to a block's end or a loop's start. */
export interface Label {
  readonly id: number;
}

function uleb(out: number[], v: number): void {
  do {
    let byte = v & 0x7f;
    v >>>= 7;
    if (v !== 0) byte |= 0x80;
    out.push(byte);
  } while (v !== 0);
}

function sleb(out: number[], v: number): void {
  for (;;) {
    const byte = v & 0x7f;
    v >>= 7;
    if ((v === 0 && (byte & 0x40) === 0) || (v === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return;
    }
    out.push(byte | 0x80);
  }
}

function name(out: number[], s: string): void {
  const bytes = new TextEncoder().encode(s);
  uleb(out, bytes.length);
  out.push(...bytes);
}

/** One function: parameters, locals, and its body as it is emitted. */
export class Func {
  readonly params: Local[];
  private readonly extraLocals: ValType[] = [];
  private readonly code: number[] = [];
  /** Open blocks/loops, innermost last: br depth = distance from the end. */
  private readonly controls: number[] = [];
  private nextLabel = 0;

  constructor(readonly name: string, paramTypes: readonly ValType[]) {
    this.params = paramTypes.map((type, index) => ({ index, type }));
  }

  local(type: ValType): Local {
    const l = { index: this.params.length + this.extraLocals.length, type };
    this.extraLocals.push(type);
    return l;
  }

  // ---- structured control -------------------------------------------------

  private control(opcode: number, body: (l: Label) => void): void {
    const id = this.nextLabel++;
    this.code.push(opcode, 0x40); // empty block type
    this.controls.push(id);
    body({ id });
    this.controls.pop();
    this.code.push(0x0b);
  }

  private depth(l: Label): number {
    const i = this.controls.lastIndexOf(l.id);
    if (i < 0) throw new Error(`${this.name}: branch to a label that is not open`);
    return this.controls.length - 1 - i;
  }

  block(body: (exit: Label) => void): void { this.control(0x02, body); }
  loop(body: (top: Label) => void): void { this.control(0x03, body); }
  br(l: Label): void { this.code.push(0x0c); uleb(this.code, this.depth(l)); }
  brIf(l: Label): void { this.code.push(0x0d); uleb(this.code, this.depth(l)); }

  /** if (i32 on the stack ≠ 0) then … [else …]; the arms may branch to enclosing labels. */
  ifElse(then: () => void, otherwise?: () => void): void {
    this.code.push(0x04, 0x40);
    this.controls.push(-1);
    then();
    if (otherwise) {
      this.code.push(0x05);
      otherwise();
    }
    this.controls.pop();
    this.code.push(0x0b);
  }

  // ---- locals and constants ------------------------------------------------

  get(l: Local): this { this.code.push(0x20); uleb(this.code, l.index); return this; }
  set(l: Local): this { this.code.push(0x21); uleb(this.code, l.index); return this; }
  tee(l: Local): this { this.code.push(0x22); uleb(this.code, l.index); return this; }
  i32(v: number): this { this.code.push(0x41); sleb(this.code, v | 0); return this; }
  f32(v: number): this {
    this.code.push(0x43);
    const b = new Uint8Array(new Float32Array([v]).buffer);
    this.code.push(...b);
    return this;
  }

  f64(v: number): this {
    this.code.push(0x44);
    this.code.push(...new Uint8Array(new Float64Array([v]).buffer));
    return this;
  }

  // ---- i32 arithmetic and comparisons ----------------------------------------

  private op(...bytes: number[]): this { this.code.push(...bytes); return this; }
  add(): this { return this.op(0x6a); }
  sub(): this { return this.op(0x6b); }
  mul(): this { return this.op(0x6c); }
  shl(): this { return this.op(0x74); }
  eqz(): this { return this.op(0x45); }
  ltS(): this { return this.op(0x48); }
  gtS(): this { return this.op(0x4a); }
  leS(): this { return this.op(0x4c); }
  geS(): this { return this.op(0x4e); }
  and(): this { return this.op(0x71); }
  or(): this { return this.op(0x72); }
  select(): this { return this.op(0x1b); }
  drop(): this { return this.op(0x1a); }

  /** l += v (i32). */
  inc(l: Local, v: number | Local): this {
    this.get(l);
    if (typeof v === "number") this.i32(v);
    else this.get(v);
    return this.add().set(l);
  }

  // ---- memory (addresses are byte offsets; `offset` is a constant added) ----

  private memarg(align: number, offset: number): this {
    uleb(this.code, align);
    uleb(this.code, offset);
    return this;
  }
  f32Load(offset = 0): this { this.code.push(0x2a); return this.memarg(2, offset); }
  f32Store(offset = 0): this { this.code.push(0x38); return this.memarg(2, offset); }
  f32Add(): this { return this.op(0x92); }
  /** i32 1 where a ≠ b (true when either is NaN), else 0. */
  f32Ne(): this { return this.op(0x5c); }
  f32Gt(): this { return this.op(0x5e); }
  i32Load(offset = 0): this { this.code.push(0x28); return this.memarg(2, offset); }
  i32Store(offset = 0): this { this.code.push(0x36); return this.memarg(2, offset); }
  f32Mul(): this { return this.op(0x94); }
  f64Load(offset = 0): this { this.code.push(0x2b); return this.memarg(3, offset); }
  f64Store(offset = 0): this { this.code.push(0x39); return this.memarg(3, offset); }
  f64Add(): this { return this.op(0xa0); }
  f64Sub(): this { return this.op(0xa1); }
  f64Mul(): this { return this.op(0xa2); }
  f64PromoteF32(): this { return this.op(0xbb); }
  f32DemoteF64(): this { return this.op(0xb6); }
  /** memory.fill(dest, byte value, byte length). */
  memoryFill(): this { return this.op(0xfc, 0x0b, 0x00); }

  // ---- SIMD128 (0xfd prefix) ----------------------------------------------------

  private simd(opcode: number): this { this.code.push(0xfd); uleb(this.code, opcode); return this; }
  v128Load(offset = 0): this { return this.simd(0x00).memarg(0, offset); }
  v128Store(offset = 0): this { return this.simd(0x0b).memarg(0, offset); }
  /** Loads one f32 and splats it to all four lanes. */
  v128Load32Splat(offset = 0): this { return this.simd(0x09).memarg(2, offset); }
  /** Loads one f64 and splats it to both lanes. */
  v128Load64Splat(offset = 0): this { return this.simd(0x0a).memarg(3, offset); }
  /** Loads 8 bytes (two f32) into the low half, zeroing the high half. */
  v128Load64Zero(offset = 0): this { return this.simd(0x5d).memarg(3, offset); }
  v128Store32Lane(lane: number, offset = 0): this { this.simd(0x5a).memarg(2, offset); this.code.push(lane); return this; }
  v128Store64Lane(lane: number, offset = 0): this { this.simd(0x5b).memarg(0, offset); this.code.push(lane); return this; }
  v128Zero(): this { return this.v128Const(new Array<number>(16).fill(0)); }
  /** A 16-byte constant, lane bytes in memory order. */
  v128Const(bytes: readonly number[]): this {
    if (bytes.length !== 16) throw new Error(`${this.name}: v128.const needs 16 bytes`);
    this.simd(0x0c);
    this.code.push(...bytes);
    return this;
  }
  v128And(): this { return this.simd(0x4e); }
  v128Or(): this { return this.simd(0x50); }
  /** v128.bitselect(a, b, mask) = (a & mask) | (b & ~mask). */
  v128Bitselect(): this { return this.simd(0x52); }
  i32x4Splat(): this { return this.simd(0x11); }
  i32x4Add(): this { return this.simd(0xae); }
  /** v128.andnot(a, b) = a & ~b. */
  v128AndNot(): this { return this.simd(0x4f); }
  /** i8x16.shuffle of the two vectors on the stack: result byte i = byte lanes[i] of (a ‖ b). */
  i8x16Shuffle(lanes: readonly number[]): this {
    if (lanes.length !== 16) throw new Error(`${this.name}: i8x16.shuffle needs 16 lane indices`);
    this.simd(0x0d);
    this.code.push(...lanes);
    return this;
  }
  f32x4Splat(): this { return this.simd(0x13); }
  f32x4ExtractLane(lane: number): this { this.simd(0x1f); this.code.push(lane); return this; }
  f32x4Add(): this { return this.simd(0xe4); }
  /** Lane masks: all ones where a ≠ b (true when either is NaN); where a > b (false for NaN). */
  f32x4Ne(): this { return this.simd(0x42); }
  f32x4Gt(): this { return this.simd(0x44); }
  /** Lane mask: all ones where a ≤ b (false when either is NaN). */
  f32x4Le(): this { return this.simd(0x45); }
  f32x4Mul(): this { return this.simd(0xe6); }
  f64x2ExtractLane(lane: number): this { this.simd(0x21); this.code.push(lane); return this; }
  f64x2Add(): this { return this.simd(0xf0); }
  f64x2Sub(): this { return this.simd(0xf1); }
  f64x2Mul(): this { return this.simd(0xf2); }
  /** Lanes 0, 1 of an f32x4 widened (exactly) to f64x2. */
  f64x2PromoteLowF32x4(): this { return this.simd(0x5f); }
  /** f64x2 rounded (to nearest, ties to even) into lanes 0, 1 of an f32x4; lanes 2, 3 zero. */
  f32x4DemoteF64x2Zero(): this { return this.simd(0x5e); }

  /** The code-section entry: size, local declarations, body, end. */
  encode(): number[] {
    const body: number[] = [];
    const groups: [number, ValType][] = [];
    for (const t of this.extraLocals) {
      const last = groups[groups.length - 1];
      if (last && last[1] === t) last[0]++;
      else groups.push([1, t]);
    }
    uleb(body, groups.length);
    for (const [count, t] of groups) {
      uleb(body, count);
      body.push(VALTYPE[t]);
    }
    body.push(...this.code, 0x0b);
    const out: number[] = [];
    uleb(out, body.length);
    out.push(...body);
    return out;
  }
}

function section(out: number[], id: number, content: number[]): void {
  out.push(id);
  uleb(out, content.length);
  out.push(...content);
}

/** Pages (64 KiB) a shared memory may grow to: a shared memory must declare a maximum. 65536 = 4 GiB, wasm32's whole space. */
export const SHARED_MAX_PAGES = 65536;

/**
 * A module importing one memory as env.memory and exporting every function by
 * its name. All functions return nothing. `shared`: the memory is imported as
 * shared (threads), with a maximum of SHARED_MAX_PAGES.
 */
export function assembleModule(funcs: readonly Func[], shared = false): Uint8Array {
  const out = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  const sigs: string[] = [];
  const typeIndex = funcs.map((f) => {
    const sig = f.params.map((p) => p.type).join(",");
    let i = sigs.indexOf(sig);
    if (i < 0) i = sigs.push(sig) - 1;
    return i;
  });

  const types: number[] = [];
  uleb(types, sigs.length);
  for (const sig of sigs) {
    const ps = sig === "" ? [] : (sig.split(",") as ValType[]);
    types.push(0x60);
    uleb(types, ps.length);
    for (const p of ps) types.push(VALTYPE[p]);
    uleb(types, 0);
  }
  section(out, 1, types);

  const imports: number[] = [];
  uleb(imports, 1);
  name(imports, "env");
  name(imports, "memory");
  imports.push(0x02, shared ? 0x03 : 0x00); // memory; limits: shared with a maximum, or no maximum
  uleb(imports, 1);
  if (shared) uleb(imports, SHARED_MAX_PAGES);
  section(out, 2, imports);

  const fns: number[] = [];
  uleb(fns, funcs.length);
  for (const t of typeIndex) uleb(fns, t);
  section(out, 3, fns);

  const exports: number[] = [];
  uleb(exports, funcs.length);
  funcs.forEach((f, i) => {
    name(exports, f.name);
    exports.push(0x00);
    uleb(exports, i);
  });
  section(out, 7, exports);

  const code: number[] = [];
  uleb(code, funcs.length);
  for (const f of funcs) code.push(...f.encode());
  section(out, 10, code);
  return Uint8Array.from(out);
}
