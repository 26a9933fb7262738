// Returns the coordinator's sent frames to the codec's pool. The coordinator
// sends one encoded result to every member in a synchronous loop; a microtask
// later, a frame whose every send went straight out (to the kernel, or cloned
// into a MessagePort) is released for reuse. One still queued in a slow peer's
// socket is left to the garbage collector: no per-send callbacks on the hot path.

import { releaseEncoded } from "../shared/codec.js";

const sentThisTick = new Map<ArrayBufferLike, { bytes: Uint8Array; flushed: boolean }>();

/** Records one send of `bytes`; `flushed` = the transport no longer reads them. */
export function noteSent(bytes: Uint8Array, flushed: boolean): void {
  const entry = sentThisTick.get(bytes.buffer);
  if (entry) {
    entry.flushed &&= flushed;
    return;
  }
  sentThisTick.set(bytes.buffer, { bytes, flushed });
  if (sentThisTick.size === 1) queueMicrotask(releaseSent);
}

function releaseSent(): void {
  for (const e of sentThisTick.values()) if (e.flushed) releaseEncoded(e.bytes);
  sentThisTick.clear();
}
