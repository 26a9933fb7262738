// The buffers and staging shared by the normalization passes that work on the
// caller's arrays where they are (NormJs in norm-passes.ts, NormNative in
// norm-native.ts): y, xhat and dx are their own per-batch buffers, and x and dy
// are read in place, so staging returns them as they are. (The WebAssembly passes
// stage into their memory instead: norm-wasm.ts.)

import { BatchBuffer } from "../layer.js";

export class DirectPasses {
  readonly y: BatchBuffer; // (N, C, S)
  readonly xhat: BatchBuffer; // (N, C, S)
  readonly dx: BatchBuffer; // (N, C, S)

  constructor(perSample: number) {
    this.y = new BatchBuffer(perSample);
    this.xhat = new BatchBuffer(perSample);
    this.dx = new BatchBuffer(perSample);
  }

  stageInput(x: Float32Array): Float32Array {
    return x;
  }

  stageGrad(dy: Float32Array): Float32Array {
    return dy;
  }
}
