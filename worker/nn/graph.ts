// The graph runtime: a model is a small directed acyclic graph of ops, each with
// forward and backward side by side; one executor orders it once (the order the
// builder added the nodes, which is topological by construction) and loops. A
// value read by several nodes gets the sum of their gradients, accumulated in one
// place (`contribute`). Not an autograd tape: the graph is fixed when it is built.

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { BatchBuffer, sizeOf, type Layer, type Param } from "./layer.js";
import { stepKernelBackend } from "./kernels/backend.js";
import { nativeKernels, type NativeKernels } from "./kernels/native.js";
import { requestedComputeThreads } from "./kernels/threads.js";
import { requireLength } from "./linear.js";

/** A node's computation: k inputs, one output; views it returns are its own, overwritten on its next call. */
export interface Op {
  readonly name: string;
  /** Per-sample shape of each input. */
  readonly inShapes: readonly (readonly number[])[];
  readonly outShape: readonly number[];
  params(): Param[];
  /** xs[i]: (n, ...inShapes[i]) → (n, ...outShape). May be async (sync BN waits for a round). */
  forward(xs: readonly Float32Array[], n: number, train: boolean): Float32Array | Promise<Float32Array>;
  /** dy: (n, ...outShape) for the last training forward → one dx per input; overwrites param grads. */
  backward(dy: Float32Array, n: number): readonly Float32Array[] | Promise<readonly Float32Array[]>;
  /**
   * Optional (Layer.backwardInput): backward's dx only; the param grads wait for
   * finishParamGrads, which the graph calls while a later node's round is in flight
   * (a sync BN's backward), else before that node runs, and always before backward returns.
   */
  readonly backwardInputs?: (dy: Float32Array, n: number) => readonly Float32Array[];
  readonly finishParamGrads?: () => void;
}

/** A one-input Layer as an Op; `layer` stays reachable (BN layers, PreciseBN, tests). */
export class LayerOp implements Op {
  readonly inShapes: readonly (readonly number[])[];
  /** The one-element result array backward hands out: reused, never reallocated. */
  private readonly dxs: Float32Array[] = [new Float32Array(0)];
  /**
   * The input of the last forward (a view its producer owns, valid until that
   * producer's next forward): what cross-iteration BN reads of the conv before it.
   */
  lastInput: Float32Array = new Float32Array(0);

  readonly backwardInputs?: (dy: Float32Array, n: number) => readonly Float32Array[];
  readonly finishParamGrads?: () => void;

  constructor(readonly layer: Layer) {
    this.inShapes = [layer.inShape];
    if (layer.backwardInput && layer.finishParamGrads) {
      const input = layer.backwardInput.bind(layer);
      this.backwardInputs = (dy, n) => this.one(input(dy, n));
      this.finishParamGrads = layer.finishParamGrads.bind(layer);
    }
  }

  get name(): string {
    return this.layer.name;
  }

  get outShape(): readonly number[] {
    return this.layer.outShape;
  }

  params(): Param[] {
    return this.layer.params();
  }

  forward(xs: readonly Float32Array[], n: number, train: boolean): Float32Array | Promise<Float32Array> {
    this.lastInput = xs[0]!;
    return this.layer.forward(xs[0]!, n, train);
  }

  backward(dy: Float32Array, n: number): readonly Float32Array[] | Promise<readonly Float32Array[]> {
    const dx = this.layer.backward(dy, n);
    if (dx instanceof Promise) return dx.then((d) => this.one(d));
    return this.one(dx);
  }

  private one(dx: Float32Array): readonly Float32Array[] {
    this.dxs[0] = dx;
    return this.dxs;
  }
}

/** The addon when the step kernels run native (Add, gradient sums), else null: the TypeScript loops (same bits). */
function nativeStep(): NativeKernels | null {
  return stepKernelBackend() === "native" ? nativeKernels() : null;
}

/** y = a + b, same shape (the residual join). Backward hands dy to both inputs: no copy. */
export class Add implements Op {
  readonly inShapes: readonly (readonly number[])[];
  readonly outShape: readonly number[];
  private readonly size: number;
  private readonly y: BatchBuffer; // (N, ...shape)
  private readonly dxs: Float32Array[] = [new Float32Array(0), new Float32Array(0)];
  private readonly native = nativeStep();
  /** The native add's parts (--threads; the same bits). */
  private readonly threads = requestedComputeThreads();

  constructor(readonly name: string, shape: readonly number[]) {
    this.inShapes = [shape, shape];
    this.outShape = shape;
    this.size = sizeOf(shape);
    this.y = new BatchBuffer(this.size);
  }

  params(): Param[] {
    return [];
  }

  forward(xs: readonly Float32Array[], n: number, _train: boolean): Float32Array {
    const a = xs[0]!, b = xs[1]!, len = n * this.size;
    requireLength(this.name, "a", a, len);
    requireLength(this.name, "b", b, len);
    const y = this.y.view(n);
    if (this.native) this.native.add(y, a, b, len, this.threads);
    else for (let i = 0; i < len; i++) y[i] = a[i]! + b[i]!;
    return y;
  }

  backward(dy: Float32Array, n: number): readonly Float32Array[] {
    requireLength(this.name, "dy", dy, n * this.size);
    this.dxs[0] = dy;
    this.dxs[1] = dy;
    return this.dxs;
  }
}

/** A value of the graph: the graph input or one node's output. */
export interface Value {
  readonly id: number;
  readonly shape: readonly number[];
}

interface Node {
  readonly op: Op;
  readonly inputs: readonly number[]; // value ids
  readonly output: number; // value id
  /** The forward's argument array, refilled on every call (no allocation per step). */
  readonly args: Float32Array[];
}

/** Adds nodes in an order that is topological by construction: a node reads only values that exist. */
export class GraphBuilder {
  private readonly shapes: (readonly number[])[] = [];
  private readonly nodes: Node[] = [];
  readonly input: Value;

  constructor(inShape: readonly number[]) {
    this.input = this.newValue(inShape);
  }

  private newValue(shape: readonly number[]): Value {
    this.shapes.push(shape);
    return { id: this.shapes.length - 1, shape };
  }

  /** Appends op reading `inputs`; their shapes must be the op's input shapes. */
  apply(op: Op, ...inputs: Value[]): Value {
    if (inputs.length !== op.inShapes.length) {
      throw new RangeError(`graph: ${op.name} takes ${op.inShapes.length} inputs, given ${inputs.length}`);
    }
    inputs.forEach((v, i) => {
      if (v.id >= this.shapes.length || this.shapes[v.id] !== v.shape) throw new RangeError(`graph: ${op.name} reads a value of another graph`);
      const want = op.inShapes[i]!;
      if (v.shape.length !== want.length || v.shape.some((d, k) => d !== want[k])) {
        throw new SyncbnError(ErrorCode.BadConfig, `graph: ${op.name} expects input ${i} of shape ${want.join("×")}, got ${v.shape.join("×")}`);
      }
    });
    const output = this.newValue(op.outShape);
    this.nodes.push({ op, inputs: inputs.map((v) => v.id), output: output.id, args: inputs.map(() => new Float32Array(0)) });
    return output;
  }

  /** The op whose output is v, or null for the graph input. */
  producerOf(v: Value): Op | null {
    return this.nodes.find((node) => node.output === v.id)?.op ?? null;
  }

  /** Appends a one-input layer. */
  layer(layer: Layer, input: Value): Value {
    return this.apply(new LayerOp(layer), input);
  }

  /** The graph whose output is `output`; every node's output must be read by someone. */
  finish(output: Value): Graph {
    const readers = new Int32Array(this.shapes.length);
    for (const node of this.nodes) for (const v of node.inputs) readers[v]++;
    readers[output.id]++;
    for (const node of this.nodes) {
      if (readers[node.output] === 0) throw new RangeError(`graph: the output of ${node.op.name} is never used`);
    }
    return new Graph(this.nodes, this.shapes, readers, output.id);
  }
}

export class Graph {
  /** The gradient of each value in the current backward, or null until a reader sent one. */
  private readonly grads: (Float32Array | null)[];
  /** Forward values: [0] the input, then each node's output (views the ops own). */
  private readonly values: Float32Array[];
  /** Gradient contributions received so far per value in this backward. */
  private readonly received: Int32Array;
  /** Where the gradients of values with several readers are summed; null for one reader. */
  private readonly sums: (BatchBuffer | null)[];
  private readonly native = nativeStep();
  /** The native add's parts (--threads; the same bits). */
  private readonly threads = requestedComputeThreads();
  /** The node whose weight gradient backward has yet to make (Op.finishParamGrads), or null. */
  private pending: Op | null = null;

  constructor(
    /** In execution order: topological. */
    readonly nodes: readonly Node[],
    readonly shapes: readonly (readonly number[])[],
    /** Number of nodes reading each value (the output counts one more). */
    private readonly readers: Int32Array,
    readonly output: number,
  ) {
    this.grads = shapes.map(() => null);
    this.values = shapes.map(() => new Float32Array(0));
    this.received = new Int32Array(shapes.length);
    this.sums = shapes.map((s, v) => (readers[v]! > 1 ? new BatchBuffer(sizeOf(s)) : null));
  }

  get ops(): Op[] {
    return this.nodes.map((n) => n.op);
  }

  /**
   * x: (n, ...inShape) → output (n, ...outShape). With `stopAt`, returns the input
   * of that node (its first input) instead, running only the nodes before it.
   */
  async forward(x: Float32Array, n: number, train: boolean, stopAt?: Op): Promise<Float32Array> {
    const values = this.values;
    values[0] = x;
    for (const node of this.nodes) {
      if (node.op === stopAt) return values[node.inputs[0]!]!;
      for (let i = 0; i < node.inputs.length; i++) node.args[i] = values[node.inputs[i]!]!;
      const out = node.op.forward(node.args, n, train);
      values[node.output] = out instanceof Promise ? await out : out;
    }
    if (stopAt) throw new RangeError(`graph: ${stopAt.name} is not a node of this graph`);
    return values[this.output]!;
  }

  /**
   * dOut: (n, ...outShape) → every param's grad, nodes in reverse order. A node that
   * can (a conv: Op.backwardInputs) makes its dx at once and its weight gradient
   * later, while the next round-waiting node's round is in flight: that work fills
   * the wait instead of idling through it (the same bits: the same passes on the
   * same inputs, which stay untouched, as no node runs twice in one backward).
   */
  async backward(dOut: Float32Array, n: number): Promise<void> {
    this.received.fill(0);
    this.grads.fill(null);
    this.contribute(this.output, dOut, n);
    try {
      for (let k = this.nodes.length - 1; k >= 0; k--) {
        const node = this.nodes[k]!;
        const dy = this.grads[node.output];
        if (!dy || this.received[node.output] !== this.readers[node.output]) {
          throw new RangeError(`graph: ${node.op.name} reached before all its readers' gradients`);
        }
        const op = node.op;
        let out: readonly Float32Array[] | Promise<readonly Float32Array[]>;
        if (op.backwardInputs) {
          // At most one pending: its passes and this one's share the pool's scratch.
          this.finishPending();
          out = op.backwardInputs(dy, n);
          this.pending = op;
        } else {
          out = op.backward(dy, n);
        }
        let dxs: readonly Float32Array[];
        if (out instanceof Promise) {
          // The node has sent its round: the pending weight gradient runs while it is in flight.
          this.finishPending();
          dxs = await out;
        } else {
          dxs = out;
        }
        // The graph input needs no gradient.
        for (let i = 0; i < node.inputs.length; i++) if (node.inputs[i] !== 0) this.contribute(node.inputs[i]!, dxs[i]!, n);
      }
    } finally {
      this.finishPending();
    }
  }

  /** The pending node's weight gradient (Op.finishParamGrads), if any. */
  private finishPending(): void {
    const op = this.pending;
    if (!op) return;
    this.pending = null;
    op.finishParamGrads!();
  }

  /** The one place gradients of a value add up: a single reader's view is used as is; several are summed in reverse node order. */
  private contribute(v: number, g: Float32Array, n: number): void {
    const sum = this.sums[v];
    const first = this.received[v] === 0;
    this.received[v]++;
    if (!sum) {
      this.grads[v] = g;
      return;
    }
    const acc = sum.view(n);
    if (first) {
      acc.set(g.length === acc.length ? g : g.subarray(0, acc.length));
      this.grads[v] = acc;
    } else if (this.native) {
      this.native.addInto(acc, g, acc.length, this.threads);
    } else {
      for (let i = 0; i < acc.length; i++) acc[i]! += g[i]!;
    }
  }
}
