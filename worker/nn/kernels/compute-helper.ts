// One compute thread of a worker (threads.ts): waits for a task on its control
// words, runs its part on the kernels of the task's shared memory, says done.
// Memories arrive on its port before the first task that names them. An error is
// reported to the layer's thread (failed word + a message), never thrown here.

import { receiveMessageOnPort, workerData } from "node:worker_threads";
import { wasmApi, type WasmMemory, type WasmModule } from "./backend.js";
import { convPart } from "./conv-parts.js";
import { CTRL, type HelperData } from "./threads.js";
import type { KernelExports } from "./wasm-kernels.js";

const data = workerData as HelperData;
const ctrl = new Int32Array(data.ctrl);
const api = wasmApi()!;
const kernels = new Map<number, KernelExports>();
const args = ctrl.subarray(CTRL.args);
let seen = 0;
Atomics.store(ctrl, CTRL.ready, 1);

for (;;) {
  Atomics.wait(ctrl, CTRL.seq, seen);
  const seq = Atomics.load(ctrl, CTRL.seq);
  if (seq === seen) continue;
  try {
    for (let m = receiveMessageOnPort(data.port); m; m = receiveMessageOnPort(data.port)) {
      const { id, memory } = m.message as { id: number; memory: WasmMemory };
      kernels.set(id, new api.Instance(data.module as WasmModule, { env: { memory } }).exports as KernelExports);
    }
    const k = kernels.get(args[1]!);
    if (!k) throw new Error(`no memory ${args[1]} registered`);
    convPart(k, args, data.part);
  } catch (e) {
    Atomics.store(ctrl, CTRL.failed, 1);
    data.port.postMessage(e instanceof Error ? e.message : String(e));
  }
  seen = seq;
  Atomics.store(ctrl, CTRL.done, seq);
  Atomics.notify(ctrl, CTRL.done);
}
