// PyTorch's nn.PReLU (ONNX PRelu with the module's weight as slope): y = x for
// x > 0, a·x otherwise, with one trainable slope a per channel (dim 1 of the batch)
// or one for all. The slope's gradient Σ x·dy over x ≤ 0 is summed in float64 and
// rounded once; in a block of R ranks per rank segment, as the other param layers.
// Not a leaky ReLU with a fixed slope (activations.ts).

import { addToSum, BatchBuffer, sizeOf, type Layer, type Param } from "./layer.js";
import { requireLength, requireSaved } from "./linear.js";

export class PReLU implements Layer {
  readonly inShape: readonly number[];
  readonly outShape: readonly number[];
  readonly weight: Param; // (slopes): 1, or the channel count shape[0]
  private readonly size: number;
  /** Elements per channel of one sample: H·W, or 1 for (F) inputs. */
  private readonly plane: number;
  private readonly x: BatchBuffer; // (N, ...shape) the last training input, copied
  private readonly y: BatchBuffer; // (N, ...shape)
  private readonly dx: BatchBuffer; // (N, ...shape)
  private readonly sums: Float64Array; // (slopes)
  private readonly rounded: Float32Array; // (slopes) one rank's sums as float32
  private ranks = 1;
  private savedN = -1;

  constructor(readonly name: string, shape: readonly number[], slopes: number) {
    if (slopes !== 1 && slopes !== shape[0]) throw new RangeError(`layer ${name}: ${slopes} slopes for a (${shape.join(", ")}) input; PReLU takes 1 or one per channel (${shape[0]})`);
    this.inShape = [...shape];
    this.outShape = [...shape];
    this.size = sizeOf(shape);
    this.plane = sizeOf(shape.slice(1));
    this.weight = { name: `${name}.weight`, value: new Float32Array(slopes).fill(0.25), grad: new Float32Array(slopes), shape: [slopes] };
    this.x = new BatchBuffer(this.size);
    this.y = new BatchBuffer(this.size);
    this.dx = new BatchBuffer(this.size);
    this.sums = new Float64Array(slopes);
    this.rounded = new Float32Array(slopes);
  }

  params(): Param[] {
    return [this.weight];
  }

  /** The slope of element i of a sample. */
  private slope(i: number): number {
    const a = this.weight.value;
    return a.length === 1 ? a[0]! : a[Math.floor(i / this.plane)]!;
  }

  forward(x: Float32Array, n: number, train: boolean): Float32Array {
    const S = this.size;
    requireLength(this.name, "x", x, n * S);
    const y = this.y.view(n);
    for (let s = 0; s < n; s++) {
      for (let i = 0; i < S; i++) {
        const v = x[s * S + i]!;
        y[s * S + i] = v > 0 ? v : this.slope(i) * v;
      }
    }
    if (train) this.x.view(n).set(x.subarray(0, n * S));
    this.savedN = train ? n : -1;
    return y;
  }

  /** dx = dy for x > 0, a·dy otherwise (x = 0 included, as PyTorch); da = Σ x·dy over x ≤ 0. Overwrites the slope's grad. */
  backward(dy: Float32Array, n: number): Float32Array {
    requireSaved(this.name, n, this.savedN);
    const S = this.size, one = this.weight.value.length === 1;
    requireLength(this.name, "dy", dy, n * S);
    const x = this.x.view(n), dx = this.dx.view(n);
    if (n % this.ranks !== 0) throw new RangeError(`layer ${this.name}: a batch of ${n} samples does not split into ${this.ranks} rank segments`);
    const b = n / this.ranks;
    const grad64 = this.weight.grad64;
    grad64?.fill(0);
    this.sums.fill(0);
    for (let s = 0; s < n; s++) {
      for (let i = 0; i < S; i++) {
        const at = s * S + i, v = x[at]!, g = dy[at]!;
        if (v > 0) {
          dx[at] = g;
        } else {
          dx[at] = this.slope(i) * g;
          this.sums[one ? 0 : Math.floor(i / this.plane)]! += v * g;
        }
      }
      // The end of a rank's segment: its float32 grad into the block's float64 sum.
      if (grad64 && (s + 1) % b === 0) {
        this.rounded.set(this.sums);
        addToSum(grad64, this.rounded);
        this.sums.fill(0);
      }
    }
    if (grad64) for (let c = 0; c < grad64.length; c++) this.weight.grad[c] = grad64[c]!;
    else for (let c = 0; c < this.sums.length; c++) this.weight.grad[c] = this.sums[c]!;
    return dx;
  }

  setRankSegments(r: number): void {
    this.ranks = r;
    if (r > 1) this.weight.grad64 = new Float64Array(this.weight.value.length);
    else delete this.weight.grad64;
  }
}
