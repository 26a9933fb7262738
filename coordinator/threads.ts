// The coordinator's in-memory transport for `--transport thread`: each worker
// thread gets one end of a MessageChannel, the other end becomes a Peer of the
// same socket-free Coordinator the ws server feeds. Same bytes, same logic, same
// results; no sockets. Not a scheduler: cli/threads.ts starts the threads.

import { MessageChannel, type MessagePort } from "node:worker_threads";
import { Coordinator, type CoordinatorOptions, type Peer } from "./coordinator.js";
import { noteSent } from "./frame-release.js";

export interface ThreadCoordinator {
  coordinator: Coordinator;
  /** For log lines: where the coordinator is. */
  url: string;
  /** A new connection: the returned port goes to a worker thread (transfer it). */
  connect(label: string): MessagePort;
  close(): Promise<void>;
}

export function startThreadCoordinator(opts: CoordinatorOptions): ThreadCoordinator {
  const coordinator = new Coordinator(opts);
  const ports = new Set<MessagePort>();
  return {
    coordinator,
    url: "in-process (worker threads)",
    connect(label: string): MessagePort {
      const { port1, port2 } = new MessageChannel();
      attachPort(coordinator, port1, label);
      ports.add(port1);
      port1.once("close", () => ports.delete(port1));
      return port2;
    },
    close: async () => {
      coordinator.shutdown("coordinator shut down");
      for (const p of ports) p.close();
    },
  };
}

function attachPort(coordinator: Coordinator, port: MessagePort, label: string): void {
  let open = true;
  const peer: Peer = {
    label,
    send: (bytes) => {
      if (!open) return;
      // The coordinator sends one buffer to several peers, so it is cloned, not
      // transferred; a view into a larger buffer (msgpack) is cut to size first,
      // as a clone copies the whole underlying buffer.
      port.postMessage(bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice());
      noteSent(bytes, true);
    },
    close: () => {
      // Let the error message arrive before the channel goes away.
      setTimeout(() => port.close(), 50).unref();
    },
  };
  port.on("message", (data: unknown) => {
    // Anything but bytes is fed through as empty bytes: it fails decoding like any bad message.
    coordinator.receive(peer, data instanceof Uint8Array ? data : new Uint8Array(0));
  });
  port.once("close", () => {
    open = false;
    coordinator.disconnected(peer, "worker thread ended");
  });
}
