// Child process of bench/latency.ts: one worker timing sync-BN rounds three ways —
// through the real CoordinatorClient and coordinator, through bare `ws`, and
// through raw node:net (the floor), the same bytes each way. Driven by the parent
// over IPC; never run by hand.

import { connect, type Socket } from "node:net";
import WebSocket from "ws";
import { CoordinatorClient } from "../worker/client.js";
import { RoundSync } from "../worker/sync.js";
import { FLOOR_HEADER_BYTES, type LatencyCommand, type LatencyReply } from "./latency-wire.js";

const [url, tcpUrl, wsUrl, floorPort, rankText, worldText, channelsText, token] = process.argv.slice(2) as [string, string, string, string, string, string, string, string];
const rank = Number(rankText);
const world = Number(worldText);
const channels = Number(channelsText);
/** Elements per channel this worker contributes; > 1 so the global batch is valid. */
const COUNT = 8;

const connectTo = (to: string): Promise<CoordinatorClient> =>
  CoordinatorClient.connect({
    url: to,
    rank,
    worldSize: world,
    token,
    conventions: { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: "" },
    connectTimeoutMs: 20_000,
    roundTimeoutMs: 65_000,
    maxPayload: 64 * 1024 * 1024,
  });
const client = await connectTo(url);
const tcpClient = await connectTo(tcpUrl);

// The same 2·C+1 statistics every way: [mean(C), M2(C)] plus the count.
const moments = new Float64Array(2 * channels); // (2C)
for (let c = 0; c < channels; c++) {
  moments[c] = 0.5 + rank + c * 1e-3;
  moments[channels + c] = 3 + c * 1e-2;
}
const frameBytes = FLOOR_HEADER_BYTES + 8 * (2 * channels + 1);
const txFrame = new Uint8Array(new ArrayBuffer(frameBytes)); // [u32 length, u32 rank, float64 × (2C+1)]
new DataView(txFrame.buffer).setUint32(0, frameBytes - FLOOR_HEADER_BYTES, true);
new DataView(txFrame.buffer).setUint32(4, rank, true);
const txValues = new Float64Array(txFrame.buffer, FLOOR_HEADER_BYTES);
txValues.set(moments, 0);
txValues[2 * channels] = COUNT;
const tx = Buffer.from(txFrame.buffer);

const sock: Socket = await new Promise((resolve, reject) => {
  const s = connect({ host: "127.0.0.1", port: Number(floorPort), noDelay: true }, () => resolve(s));
  s.once("error", reject);
});
sock.setNoDelay(true);
let rxFill = 0;
let onFloorFrame: () => void = () => {};
sock.on("data", (chunk: Buffer) => {
  // One frame is outstanding at a time (barrier), so counting bytes finds its end.
  rxFill += chunk.length;
  if (rxFill >= frameBytes) {
    rxFill -= frameBytes;
    onFloorFrame();
  }
});

const bare = new WebSocket(wsUrl, { perMessageDeflate: false });
await new Promise<void>((resolve, reject) => {
  bare.once("open", () => resolve());
  bare.once("error", reject);
});
let onBareMessage: () => void = () => {};
bare.on("message", () => onBareMessage());

// Ours goes through RoundSync, exactly as a BN layer's forward round does in training.
const syncWs = new RoundSync(client);
const syncTcp = new RoundSync(tcpClient);
const local = { count: COUNT, mean: moments.subarray(0, channels), m2: moments.subarray(channels) };
let step = 0;

async function runOurs(sync: RoundSync, rounds: number): Promise<number[]> {
  const lat: number[] = new Array<number>(rounds);
  for (let i = 0; i < rounds; i++) {
    sync.step = step++;
    const t0 = performance.now();
    await sync.reduceMoments(0, local);
    lat[i] = performance.now() - t0;
  }
  return lat;
}

/** A callback-driven loop: send, wait for `setHandler`'s callback, repeat. */
function runLoop(rounds: number, send: () => void, setHandler: (h: () => void) => void): Promise<number[]> {
  const lat: number[] = new Array<number>(rounds);
  let i = 0;
  let t0 = 0;
  return new Promise((resolve) => {
    const go = (): void => {
      t0 = performance.now();
      send();
    };
    setHandler(() => {
      lat[i++] = performance.now() - t0;
      if (i === rounds) resolve(lat);
      else go();
    });
    go();
  });
}

process.on("message", (m: LatencyCommand) => {
  void (async () => {
    if (m.cmd === "exit") {
      sock.end();
      bare.terminate();
      await client.bye();
      await tcpClient.bye();
      process.disconnect();
      return;
    }
    const cpu0 = process.cpuUsage();
    const lat =
      m.cmd === "ours" || m.cmd === "tcp"
        ? await runOurs(m.cmd === "ours" ? syncWs : syncTcp, m.rounds)
        : m.cmd === "ws"
          ? await runLoop(m.rounds, () => bare.send(tx), (h) => (onBareMessage = h))
          : await runLoop(m.rounds, () => sock.write(tx), (h) => (onFloorFrame = h));
    const cpu = process.cpuUsage(cpu0);
    const reply: LatencyReply = { rank, lat, cpuUs: cpu.user + cpu.system };
    process.send!(reply);
  })();
});
process.send!({ rank, ready: true });
