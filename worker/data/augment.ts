// Training-time augmentation of `--augment crop-flip`: a random crop after zero
// padding of P on each side, then a horizontal flip with probability 1/2 (the
// CIFAR recipe of He et al. 2016, torchvision's RandomCrop(padding=P) +
// RandomHorizontalFlip). Each sample's draws come from (seed, epoch, sample
// index) alone, so results do not depend on workers, ranks or their packing.
// Not applied to evaluation or PreciseBN batches.

import { Rng, deriveSeed } from "../../shared/rng.js";
import type { Augment } from "../settings.js";

/** The seed stream of augmentation (worker/train.ts uses 1 and 2 for init and shuffling). */
export const SEED_AUGMENT = 3;

export interface AugmentOptions {
  kind: Augment;
  pad: number;
  seed: number;
}

/** One sample's draws: crop offsets in 0..2P (P = no shift) and the flip. */
export interface SampleDraw {
  dy: number;
  dx: number;
  flip: boolean;
}

/** The draws of dataset sample `index` in `epoch` (0-based), into `out` (default: a new one) with `rng` reseeded. */
export function drawFor(o: AugmentOptions, epoch: number, index: number, rng = new Rng(0), out: SampleDraw = { dy: 0, dx: 0, flip: false }): SampleDraw {
  rng.reseed(deriveSeed(o.seed, SEED_AUGMENT, epoch, index));
  const span = 2 * o.pad + 1;
  out.dy = rng.int(span);
  out.dx = rng.int(span);
  out.flip = rng.int(2) === 1;
  return out;
}

export class Augmenter {
  private readonly scratch: Float32Array; // (C, H, W) of one sample
  private readonly rng = new Rng(0);
  private readonly draw: SampleDraw = { dy: 0, dx: 0, flip: false };

  constructor(readonly o: AugmentOptions, private readonly shape: readonly [number, number, number]) {
    this.scratch = new Float32Array(shape[0] * shape[1] * shape[2]);
  }

  /**
   * Augments in place the n samples of x (n, C, H, W) whose dataset indices are
   * indices[from .. from+n), in `epoch`. Padding is zeros of the normalized input
   * (the per-channel mean of the normalization), not raw black pixels. Cost: two
   * passes over the batch (copy to scratch, write back), no allocation.
   */
  apply(x: Float32Array, indices: ArrayLike<number>, from: number, n: number, epoch: number): void {
    if (this.o.kind === "none") return;
    const [c, h, w] = this.shape;
    const per = c * h * w;
    const P = this.o.pad;
    const s = this.scratch;
    for (let b = 0; b < n; b++) {
      const d = drawFor(this.o, epoch, indices[from + b]!, this.rng, this.draw);
      const base = b * per;
      s.set(x.subarray(base, base + per));
      // out(y, x) = in(y + dy − P, x' + dx − P), x' = W−1−x when flipped; 0 outside the image.
      for (let ch = 0; ch < c; ch++) {
        const plane = ch * h * w;
        for (let y = 0; y < h; y++) {
          const sy = y + d.dy - P;
          const row = base + plane + y * w;
          if (sy < 0 || sy >= h) {
            x.fill(0, row, row + w);
            continue;
          }
          const srow = plane + sy * w;
          for (let xx = 0; xx < w; xx++) {
            const sx = (d.flip ? w - 1 - xx : xx) + d.dx - P;
            x[row + xx] = sx >= 0 && sx < w ? s[srow + sx]! : 0;
          }
        }
      }
    }
  }
}
