// The fallback when the addon is not there (as SYNCBN_NATIVE=off or a failed build
// leaves it): native requested, the step kernels run on wasm with wasm's bits. Runs
// on every machine: this file turns the addon off for its own worker only.

import { describe, expect, it } from "vitest";
import type { BnConventions } from "../shared/config.js";
import { BatchNorm } from "../worker/nn/batchnorm.js";
import { ReLU } from "../worker/nn/relu.js";
import { stepKernelBackend } from "../worker/nn/kernels/backend.js";
import { disableNative, nativeKernels, nativeUnavailableReason } from "../worker/nn/kernels/native.js";
import { expectBits, layerRun, onBackend } from "./step-kernels.js";

disableNative("turned off by native-off.test.ts");
const CONV: BnConventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true };

describe("without the addon", () => {
  it("says why it is unavailable", () => {
    expect(nativeKernels()).toBeNull();
    expect(nativeUnavailableReason()).toContain("turned off by native-off.test.ts");
  });

  it("native requested: the step kernels run on wasm, with the same results", () => {
    expect(onBackend("native", () => stepKernelBackend())).toBe("wasm");
    for (const make of [() => new BatchNorm("bn", 0, [4, 3, 3], CONV, null), () => new ReLU("relu", [4, 3, 3])]) {
      const nat = onBackend("native", () => layerRun(make, 4, 2, 9));
      const wasm = onBackend("wasm", () => layerRun(make, 4, 2, 9));
      nat.forEach((a, k) => expectBits(`output ${k}`, a, wasm[k]!));
    }
  });
});
