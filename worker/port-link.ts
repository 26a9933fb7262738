// A Link (worker/client.ts) over a MessagePort, for `--transport thread`: the
// worker thread's end of the channel to the in-process coordinator. Frames are
// transferred (the ArrayBuffer moves, nothing is copied); results arrive cloned,
// so their memory is this thread's to reuse (Link.ownsReceived).

import type { MessagePort } from "node:worker_threads";
import { CoordinatorClient, type Link } from "./client.js";
import { conventionsOf, type TrainSettings } from "./settings.js";

/** What a worker thread needs to join the in-process coordinator. */
export interface PortJoin {
  port: MessagePort;
  /** The first rank of the thread's block. */
  rank: number;
  /** Ranks of the block (default 1). */
  ranks?: number;
  worldSize: number;
  token: string;
  settings: TrainSettings;
  roundTimeoutMs: number;
}

/** A CoordinatorClient over the thread's MessagePort (no URL, no payload limit). */
export function connectOverPort(d: PortJoin): Promise<CoordinatorClient> {
  return CoordinatorClient.overLink(portLink(d.port), {
    url: "in-process",
    rank: d.rank,
    ranks: d.ranks ?? 1,
    worldSize: d.worldSize,
    token: d.token,
    conventions: conventionsOf(d.settings),
    connectTimeoutMs: 60_000,
    roundTimeoutMs: d.roundTimeoutMs,
    maxPayload: 0,
  });
}

export function portLink(port: MessagePort): Link {
  let open = true;
  let closed: () => void = () => {};
  const whenClosed = new Promise<void>((r) => (closed = r));
  const link: Link = {
    label: "in-process coordinator",
    onMessage: null,
    onClose: null,
    get isOpen() {
      return open;
    },
    send: (bytes) => {
      if (!open) return;
      // Transfer when the bytes own their buffer (frames); cut msgpack views to size first.
      const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
      port.postMessage(own, [own.buffer as ArrayBuffer]);
    },
    terminate: () => port.close(),
    ownsReceived: true,
    close: () => {
      port.close();
      return whenClosed;
    },
  };
  port.on("message", (data: unknown) => link.onMessage?.(data instanceof Uint8Array ? data : new Uint8Array(0)));
  port.once("close", () => {
    open = false;
    closed();
    link.onClose?.("channel closed");
  });
  return link;
}
