// Inverted dropout as PyTorch trains it: in a training forward each element is
// kept with probability 1 − p and scaled by 1/(1 − p) (float32, as the mask
// PyTorch multiplies by), dropped to 0 otherwise; backward multiplies dy by the
// same mask. An eval forward is the identity. The mask is a function of (seed,
// dropout index, rank, step) alone: rank r's B samples draw from their own stream
// whether r runs in its own process or in a block of ranks (a batch of R
// segments), and a redone step draws the same mask. Not PyTorch's RNG stream.

import { Rng } from "../../shared/rng.js";
import { BatchBuffer, sizeOf, type Layer, type Param } from "./layer.js";
import { requireLength, requireSaved } from "./linear.js";

/** Where a worker is when it draws a mask: the run's seed, the ranks of its batch segments, the step. */
export interface DropoutClock {
  readonly seed: number;
  /** The rank of the first (or only) segment of a training batch. */
  readonly firstRank: number;
  /** Segments per training batch: R ranks hosted by one process, else 1. */
  readonly ranks: number;
  /** The step being trained (read at every training forward). */
  step(): number;
}

/** A 32-bit mix (murmur3 finalizer) of h and v: one seed per (seed, index, rank, step). */
function mix(h: number, v: number): number {
  h = Math.imul(h ^ (v >>> 0), 0xcc9e2d51);
  h = (h << 15) | (h >>> 17);
  h = Math.imul(h, 0x1b873593);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  return h >>> 0;
}

/** The seed of the mask stream of dropout `index` for `rank` at `step`. */
export function dropoutSeed(seed: number, index: number, rank: number, step: number): number {
  return mix(mix(mix(mix(0x5bd1e995, seed), index), rank), step);
}

export class Dropout implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  private readonly size: number;
  /** float32(1/(1 − p)), or 0 for p = 1 (every element dropped, as PyTorch). */
  readonly scale: number;
  private readonly mask: BatchBuffer; // (N, ...shape): 0 or scale
  private readonly y: BatchBuffer; // (N, ...shape)
  private readonly dx: BatchBuffer; // (N, ...shape)
  private readonly rng = new Rng(0);
  /** Samples of the last training forward; 0 when it was the identity (p = 0). */
  private savedN = -1;
  private identity = false;

  constructor(
    readonly name: string,
    shape: readonly number[],
    /** The probability p of dropping an element, in [0, 1]. */
    readonly ratio: number,
    /** Which dropout of the model this is (its own stream per index). */
    readonly index: number,
    private readonly clock: DropoutClock,
  ) {
    if (!(ratio >= 0 && ratio <= 1)) throw new RangeError(`layer ${name}: dropout ratio must be in [0, 1], got ${ratio}`);
    this.inShape = [...shape];
    this.outShape = [...shape];
    this.size = sizeOf(shape);
    this.scale = ratio === 1 ? 0 : Math.fround(1 / (1 - ratio));
    this.mask = new BatchBuffer(this.size);
    this.y = new BatchBuffer(this.size);
    this.dx = new BatchBuffer(this.size);
  }

  params(): Param[] {
    return [];
  }

  /** Training: y = x·mask, one uniform draw per element; eval or p = 0: x itself (no copy). */
  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const len = n * this.size;
    requireLength(this.name, "x", x, len);
    this.savedN = train ? n : -1;
    this.identity = this.ratio === 0;
    if (!train || this.identity) return x;
    const r = this.clock.ranks;
    if (n % r !== 0) throw new RangeError(`layer ${this.name}: a batch of ${n} samples does not split into ${r} rank segments`);
    const b = n / r;
    const mask = this.mask.view(n), y = this.y.view(n);
    const step = this.clock.step(), p = this.ratio, scale = this.scale;
    for (let seg = 0; seg * b < n; seg++) {
      this.rng.reseed(dropoutSeed(this.clock.seed, this.index, this.clock.firstRank + seg, step));
      const end = (seg + 1) * b * this.size;
      for (let i = seg * b * this.size; i < end; i++) mask[i] = this.rng.next() < p ? 0 : scale;
    }
    for (let i = 0; i < len; i++) y[i] = x[i]! * mask[i]!;
    return y;
  }

  /** dx = dy·mask (dy itself after an identity forward). */
  backward(dy: Float32Array, n: number): Float32Array {
    requireSaved(this.name, n, this.savedN);
    const len = n * this.size;
    requireLength(this.name, "dy", dy, len);
    if (this.identity) return dy;
    const mask = this.mask.view(n), dx = this.dx.view(n);
    for (let i = 0; i < len; i++) dx[i] = dy[i]! * mask[i]!;
    return dx;
  }
}
