// The worker's WebSocket frames carry a zero masking key (worker/client.ts), so
// `ws` sends each payload as it is instead of a masked copy and the coordinator
// skips unmasking. Read off the wire by a bare node:net server that answers the
// upgrade itself; the real runs over ws (transport.test.ts, train.test.ts) show the
// coordinator takes such frames.

import { createHash } from "node:crypto";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { describe, expect, it } from "vitest";
import { decode } from "../shared/codec.js";
import { CoordinatorClient } from "../worker/client.js";

const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

interface WireFrame {
  opcode: number;
  masked: boolean;
  mask: Buffer;
  payload: Buffer;
}

/** The first client frame after the upgrade, as sent (payload not unmasked). */
function firstFrame(): Promise<{ url: string; frame: Promise<WireFrame>; close(): void }> {
  return new Promise((resolveServer) => {
    let resolveFrame: (f: WireFrame) => void = () => {};
    const frame = new Promise<WireFrame>((r) => (resolveFrame = r));
    const sockets = new Set<Socket>();
    const server = createServer((sock) => {
      sockets.add(sock);
      let buf = Buffer.alloc(0);
      let upgraded = false;
      sock.on("data", (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        if (!upgraded) {
          const end = buf.indexOf("\r\n\r\n");
          if (end < 0) return;
          const key = /sec-websocket-key: *(\S+)/i.exec(buf.subarray(0, end).toString("latin1"))![1]!;
          const accept = createHash("sha1").update(key + WS_GUID).digest("base64");
          sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
          buf = buf.subarray(end + 4);
          upgraded = true;
        }
        if (buf.length < 2) return;
        let len = buf[1]! & 0x7f;
        let at = 2;
        if (len === 126) [len, at] = [buf.readUInt16BE(2), 4];
        else if (len === 127) [len, at] = [Number(buf.readBigUInt64BE(2)), 10];
        const masked = (buf[1]! & 0x80) !== 0;
        const maskBytes = masked ? 4 : 0;
        if (buf.length < at + maskBytes + len) return;
        resolveFrame({ opcode: buf[0]! & 0x0f, masked, mask: buf.subarray(at, at + maskBytes), payload: buf.subarray(at + maskBytes, at + maskBytes + len) });
      });
    });
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      resolveServer({
        url: `ws://127.0.0.1:${port}`,
        frame,
        close: () => {
          for (const s of sockets) s.destroy();
          server.close();
        },
      });
    });
  });
}

describe("the worker's WebSocket", () => {
  it("sends its frames with a zero masking key, the payload exactly as encoded", async () => {
    const server = await firstFrame();
    const connecting = CoordinatorClient.connect({
      url: server.url,
      rank: 2,
      worldSize: 3,
      token: "t",
      conventions: { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "local", training: "" },
      connectTimeoutMs: 1500,
      roundTimeoutMs: 1000,
      maxPayload: 1 << 20,
    }).catch((e: Error) => e);
    const frame = await server.frame;
    server.close();
    expect(frame.opcode).toBe(2); // binary
    expect(frame.masked).toBe(true); // a client frame is always masked (RFC 6455), here by the key 0
    expect([...frame.mask]).toEqual([0, 0, 0, 0]);
    // Unmasked by a zero key is itself: the hello decodes straight off the wire.
    expect(decode(frame.payload)).toMatchObject({ type: "hello", rank: 2, worldSize: 3, token: "t" });
    expect(await connecting).toBeInstanceOf(Error); // no welcome ever came
  });
});
