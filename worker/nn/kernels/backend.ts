// Which kernels the conv, linear and normalization layers use: "wasm" (WebAssembly
// SIMD128), "js" (the plain TypeScript reference twins) or "native" (issue 22: the
// N-API addon of native/: Conv2d on FMA GEMMs, wasm's values within rounding; the BN
// and GroupNorm passes, max pooling, ReLU, the residual add, gradient accumulation
// and SGD with wasm's bits; Linear and average pooling run their wasm path, and
// without the addon everything does, with a notice). Set once at startup: the CLI picks native where the addon loads
// (cli/kernels.ts, --kernels, SYNCBN_KERNELS); a layer reads it when built.
// Not a registry of kernels: the layers pick their own path from this one flag.

import { nativeKernels, nativeUnavailableReason } from "./native.js";
import { kernelModuleBytes } from "./wasm-kernels.js";

export type KernelBackend = "js" | "wasm" | "native";
/** The paths every layer has (the tests run each layer on each). */
export const KERNEL_BACKENDS: readonly KernelBackend[] = ["js", "wasm"];
/** What SYNCBN_KERNELS accepts: those, and "native" (the layers without native kernels on wasm). */
export const KERNEL_SETTINGS: readonly KernelBackend[] = [...KERNEL_BACKENDS, "native"];

// The few members of the WebAssembly JS API used here, typed locally: neither
// lib ES2022 nor @types/node 20 declares them, and lib DOM would bring the DOM.
export interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(deltaPages: number): number;
}
export interface WasmModule {
  readonly compiledKernelModule: unique symbol;
}
interface WasmApi {
  Module: new (bytes: Uint8Array) => WasmModule;
  Instance: new (module: WasmModule, imports: { env: { memory: WasmMemory } }) => { readonly exports: object };
  Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory;
}

let requested: KernelBackend = "wasm";
/** undefined: not compiled yet; null: this runtime cannot run it (reason in unavailableReason). */
let compiled: WasmModule | null | undefined;
/** The same for the shared-memory variant (compute threads). */
let compiledShared: WasmModule | null | undefined;
let unavailableReason = "";
let noticePrinted = false;
let nativeNoticePrinted = false;

export function setKernelBackend(backend: KernelBackend): void {
  requested = backend;
}

export function wasmApi(): WasmApi | undefined {
  return (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
}

/** The compiled kernel module, or null if WebAssembly SIMD is unavailable here. */
export function wasmKernelModule(): WasmModule | null {
  if (compiled === undefined) {
    const api = wasmApi();
    try {
      if (!api) throw new Error("no WebAssembly in this runtime");
      compiled = new api.Module(kernelModuleBytes());
    } catch (e) {
      compiled = null;
      unavailableReason = e instanceof Error ? e.message : String(e);
    }
  }
  return compiled;
}

/** The module importing a shared memory, or null where shared wasm memory (threads) is unavailable. */
export function sharedKernelModule(): WasmModule | null {
  if (compiledShared === undefined) {
    const api = wasmApi();
    try {
      compiledShared = api && wasmKernelModule() !== null ? new api.Module(kernelModuleBytes(true)) : null;
    } catch {
      compiledShared = null;
    }
  }
  return compiledShared;
}

/**
 * The backend new layers without native kernels use: the requested one ("wasm"
 * when "native" is requested), or "js" (with a one-time notice) if WASM cannot run.
 */
export function kernelBackend(): KernelBackend {
  const want = requested === "native" ? "wasm" : requested;
  if (want === "wasm" && wasmKernelModule() === null) {
    if (!noticePrinted) {
      noticePrinted = true;
      console.warn(`syncbn: WebAssembly SIMD kernels unavailable (${unavailableReason}); using the plain JS kernels`);
    }
    return "js";
  }
  return want;
}

/** The backend a new Conv2d uses: "native" when requested and the addon loads; else as kernelBackend, with a one-time notice why. */
export function convKernelBackend(): KernelBackend {
  if (requested !== "native") return kernelBackend();
  if (nativeKernels() !== null) return "native";
  if (!nativeNoticePrinted) {
    nativeNoticePrinted = true;
    console.warn(`syncbn: native kernels unavailable (${nativeUnavailableReason()}); using WebAssembly`);
  }
  return kernelBackend();
}

/**
 * The backend of the step kernels with a native path (BN and GroupNorm passes, max pooling,
 * ReLU, the residual add, gradient sums, SGD): Conv2d's choice, convKernelBackend.
 */
export function stepKernelBackend(): KernelBackend {
  return convKernelBackend();
}
