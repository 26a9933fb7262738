// The pointwise activations ONNX exports of common CNNs use besides ReLU: Sigmoid
// (and so SiLU = x·sigmoid(x) through a Mul), Tanh, Softplus, Elu, Erf, HardSigmoid, HardSwish, LeakyRelu
// and Clip (ReLU6). One layer, forward and backward per kind side by side, each
// element computed in float64 and rounded once; the derivative conventions at the
// kinks are PyTorch's. Not ReLU (relu.ts has the fast paths) and no params.

import { BatchBuffer, sizeOf, type Layer, type Param } from "./layer.js";
import { requireLength, requireSaved } from "./linear.js";

export type ActivationKind =
  | { readonly op: "sigmoid" }
  | { readonly op: "tanh" }
  /** log(1 + eˣ), x itself above 20 (PyTorch's threshold); Mish is x·tanh(softplus(x)) through Tanh and Mul. */
  | { readonly op: "softplus" }
  /** x for x > 0, alpha·(eˣ − 1) otherwise. */
  | { readonly op: "elu"; readonly alpha: number }
  /** The error function; GELU is x·(1 + erf(x/√2))/2 through Div, Add and Mul. */
  | { readonly op: "erf" }
  /** y = max(0, min(1, alpha·x + beta)); PyTorch's hardsigmoid is alpha = 1/6, beta = 1/2. */
  | { readonly op: "hardsigmoid"; readonly alpha: number; readonly beta: number }
  /** y = x·max(0, min(1, x/6 + 1/2)), PyTorch's hardswish. */
  | { readonly op: "hardswish" }
  /** y = x for x > 0, alpha·x otherwise. */
  | { readonly op: "leakyrelu"; readonly alpha: number }
  /** y = min(max(x, min), max); ReLU6 is min 0, max 6. */
  | { readonly op: "clip"; readonly min: number; readonly max: number };

const TWO_OVER_SQRT_PI = 2 / Math.sqrt(Math.PI);

/**
 * erf(x) to about 1e-15 (JavaScript has none): the Maclaurin series below 2.5 (terms
 * at most e^6.25 ≈ 500, so ~1e-14 of cancellation), erfc's continued fraction above
 * (evaluated from its 60th term back; converges fast there); ±1 beyond 6.
 */
export function erf(x: number): number {
  const a = Math.abs(x);
  if (Number.isNaN(x)) return NaN;
  if (a >= 6) return Math.sign(x);
  if (a < 2.5) {
    let term = x, sum = x;
    const x2 = x * x;
    for (let n = 1; n < 80 && Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
      term *= -x2 / n;
      sum += term / (2 * n + 1);
    }
    return TWO_OVER_SQRT_PI * sum;
  }
  // erfc(a) = e^(−a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + 2/(a + …)))))
  let f = a;
  for (let k = 60; k >= 1; k--) f = a + k / 2 / f;
  const erfc = Math.exp(-a * a) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}

/** 1/6 as the float32 attribute PyTorch's exporter writes for hardsigmoid: read back as the exact 1/6 PyTorch computes with. */
const SIXTH_F32 = Math.fround(1 / 6);

export class Activation implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  private readonly size: number;
  private readonly x: BatchBuffer; // (N, ...shape) the last training input, copied
  private readonly y: BatchBuffer; // (N, ...shape)
  private readonly dx: BatchBuffer; // (N, ...shape)
  private readonly kind: ActivationKind;
  private savedN = -1;

  constructor(readonly name: string, shape: readonly number[], kind: ActivationKind) {
    this.inShape = [...shape];
    this.outShape = [...shape];
    this.size = sizeOf(shape);
    this.x = new BatchBuffer(this.size);
    this.y = new BatchBuffer(this.size);
    this.dx = new BatchBuffer(this.size);
    this.kind = kind.op === "hardsigmoid" && Math.fround(kind.alpha) === SIXTH_F32 ? { ...kind, alpha: 1 / 6 } : kind;
  }

  params(): Param[] {
    return [];
  }

  /** One pass over x. */
  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const len = n * this.size;
    requireLength(this.name, "x", x, len);
    const y = this.y.view(n);
    const k = this.kind;
    switch (k.op) {
      case "sigmoid":
        for (let i = 0; i < len; i++) y[i] = 1 / (1 + Math.exp(-x[i]!));
        break;
      case "tanh":
        for (let i = 0; i < len; i++) y[i] = Math.tanh(x[i]!);
        break;
      case "softplus":
        for (let i = 0; i < len; i++) y[i] = x[i]! > 20 ? x[i]! : Math.log1p(Math.exp(x[i]!));
        break;
      case "elu":
        for (let i = 0; i < len; i++) y[i] = x[i]! > 0 ? x[i]! : k.alpha * Math.expm1(x[i]!);
        break;
      case "erf":
        for (let i = 0; i < len; i++) y[i] = erf(x[i]!);
        break;
      case "hardsigmoid":
        for (let i = 0; i < len; i++) y[i] = Math.max(0, Math.min(1, k.alpha * x[i]! + k.beta));
        break;
      case "hardswish":
        for (let i = 0; i < len; i++) {
          const v = x[i]!;
          y[i] = (v * Math.min(Math.max(v + 3, 0), 6)) / 6;
        }
        break;
      case "leakyrelu":
        for (let i = 0; i < len; i++) {
          const v = x[i]!;
          y[i] = v > 0 ? v : k.alpha * v;
        }
        break;
      case "clip":
        // NaN passes through, as torch.clamp.
        for (let i = 0; i < len; i++) {
          const v = x[i]!;
          y[i] = v < k.min ? k.min : v > k.max ? k.max : v;
        }
        break;
    }
    if (train) this.x.view(n).set(x.subarray(0, len));
    this.savedN = train ? n : -1;
    return y;
  }

  /** dy (n, ...shape) → dx; the kinks take PyTorch's side (see each case). */
  backward(dy: Float32Array, n: number): Float32Array {
    requireSaved(this.name, n, this.savedN);
    const len = n * this.size;
    requireLength(this.name, "dy", dy, len);
    const x = this.x.view(n), y = this.y.view(n), dx = this.dx.view(n);
    const k = this.kind;
    switch (k.op) {
      case "sigmoid":
        // From the output, as PyTorch's sigmoid_backward: dy·y·(1 − y).
        for (let i = 0; i < len; i++) dx[i] = dy[i]! * y[i]! * (1 - y[i]!);
        break;
      case "tanh":
        // From the output, as PyTorch's tanh_backward: dy·(1 − y²).
        for (let i = 0; i < len; i++) dx[i] = dy[i]! * (1 - y[i]! * y[i]!);
        break;
      case "softplus":
        // softplus_backward: dy·eˣ/(eˣ + 1), dy above the threshold.
        for (let i = 0; i < len; i++) {
          const z = Math.exp(x[i]!);
          dx[i] = x[i]! > 20 ? dy[i]! : (dy[i]! * z) / (z + 1);
        }
        break;
      case "elu":
        // elu_backward: dy for x > 0, dy·alpha·eˣ otherwise (x = 0 included).
        for (let i = 0; i < len; i++) dx[i] = x[i]! > 0 ? dy[i]! : dy[i]! * k.alpha * Math.exp(x[i]!);
        break;
      case "erf":
        for (let i = 0; i < len; i++) dx[i] = dy[i]! * TWO_OVER_SQRT_PI * Math.exp(-x[i]! * x[i]!);
        break;
      case "hardsigmoid":
        // alpha inside the open ramp, 0 on its flat parts and at its ends (hardsigmoid_backward: −3 < x < 3).
        for (let i = 0; i < len; i++) {
          const t = k.alpha * x[i]! + k.beta;
          dx[i] = t > 0 && t < 1 ? dy[i]! * k.alpha : 0;
        }
        break;
      case "hardswish":
        // PyTorch 1.13's hardswish_backward (measured, test/fixtures/onnx-ops): 0 below −3, dy·(x/3 + 1/2) on [−3, 3), dy from 3 on.
        for (let i = 0; i < len; i++) {
          const v = x[i]!;
          dx[i] = v < -3 ? 0 : v < 3 ? dy[i]! * (v / 3 + 0.5) : dy[i]!;
        }
        break;
      case "leakyrelu":
        for (let i = 0; i < len; i++) dx[i] = x[i]! > 0 ? dy[i]! : dy[i]! * k.alpha;
        break;
      case "clip":
        // Strictly inside (min, max), as hardtanh_backward (ReLU6's): 0 at the bounds.
        for (let i = 0; i < len; i++) {
          const v = x[i]!;
          dx[i] = v > k.min && v < k.max ? dy[i]! : 0;
        }
        break;
    }
    return dx;
  }
}
