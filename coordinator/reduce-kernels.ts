// Where the coordinator's per-element loops run: the finiteness check of each
// contribution (finite.ts) and the float64 sums of a round (reduce.ts). On the
// native addon when it loaded in this process (native/reduce.cc: vector code,
// blocks that stay in cache), else the TypeScript loops; the same bits either
// way, since only the order of elements changes, never the order of the parts
// summed into one (test/reduce.test.ts compares the two).

import { nativeKernels } from "../worker/nn/kernels/native.js";

export interface ReduceKernels {
  /** No NaN or ±Inf in a. */
  allFinite(a: Float32Array | Float64Array): boolean;
  /** out = Σ parts in order, in float64 from 0, rounded once to out's type; each part at least out's length. */
  sumParts(out: Float32Array | Float64Array, parts: readonly (Float32Array | Float64Array)[]): void;
}

let useNative = true;

/** The native loops, or null: the addon is not loaded here (or too old to have them), or turned off by useNativeReduce(false). */
export function reduceKernels(): ReduceKernels | null {
  if (!useNative) return null;
  const k = nativeKernels() as (ReduceKernels & object) | null;
  return k && typeof k.sumParts === "function" && typeof k.allFinite === "function" ? k : null;
}

/** Tests and benches: run the TypeScript loops (false) or the native ones when loaded (true, the default). */
export function useNativeReduce(on: boolean): void {
  useNative = on;
}
