// Helpers of the native step-kernel tests (native-passes.test.ts, native-off.test.ts):
// bit comparison, hostile data, and a layer's outputs over a few steps on one backend.
import { expect } from "vitest";
import { Rng } from "../shared/rng.js";
import { setKernelBackend, type KernelBackend } from "../worker/nn/kernels/backend.js";
import type { Layer } from "../worker/nn/layer.js";
import { normals } from "./compare.js";

/**
 * The same bits, element for element (+0 against −0 too), NaN against NaN whatever
 * its payload: a NaN made from non-NaN inputs (∞ − ∞) is x86's default NaN
 * natively, sign bit set, and may be another where V8 makes it.
 */
export function expectBits(what: string, got: Float32Array | Float64Array, want: Float32Array | Float64Array): void {
  expect(got.length, `${what} length`).toBe(want.length);
  const U = got instanceof Float64Array ? BigUint64Array : Uint32Array;
  const g = new U(got.buffer, got.byteOffset, got.length), w = new U(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < w.length; i++) {
    if (g[i] !== w[i] && !(Number.isNaN(got[i]) && Number.isNaN(want[i]))) {
      expect.fail(`${what}: first difference at ${i} of ${w.length}: ${got[i]} vs ${want[i]}`);
    }
  }
}

/** Normals with NaN, ±Inf, −0 and huge values sprinkled in when `hostile`. */
export function data(rng: Rng, len: number, hostile: boolean, shift = 0): Float32Array {
  const a = normals(rng, len);
  for (let i = 0; i < len; i++) a[i] += shift;
  if (hostile) {
    const specials = [NaN, Infinity, -Infinity, -0, 3e38, -3e38];
    for (let k = 0; k < Math.min(len, 6); k++) a[Math.floor(rng.uniform(0, 1) * len)] = specials[k]!;
  }
  return a;
}

/** Forward (train), backward, eval forward, `steps` times; every output and param grad copied. */
export function layerRun(make: () => Layer, n: number, steps: number, seed: number): Float32Array[] {
  const layer = make(), rng = new Rng(seed), len = n * layer.inShape.reduce((a, b) => a * b, 1);
  const out: Float32Array[] = [];
  for (let t = 0; t < steps; t++) {
    const y = layer.forward(data(rng, len, false, 1), n, true) as Float32Array;
    out.push(y.slice());
    out.push((layer.backward(data(rng, len, false), n) as Float32Array).slice());
    for (const p of layer.params()) out.push(p.grad.slice());
    out.push((layer.forward(data(rng, len, false), n, false) as Float32Array).slice());
  }
  return out;
}

export function onBackend<T>(backend: KernelBackend, f: () => T): T {
  setKernelBackend(backend);
  try {
    return f();
  } finally {
    setKernelBackend("wasm");
  }
}

