// Round-latency benchmark (issue 5 §1): one sync-BN round of 2·C+1 statistics,
// from worker send to result received, with W worker processes, four ways in
// the same processes, interleaved block by block: through the real coordinator
// on the ws wire (ours) and on the tcp wire, through bare `ws` (what the
// WebSocket layer alone costs), and the floor, a raw node:net barrier all-reduce
// of the same bytes. Not a test.

import { fork, type ChildProcess } from "node:child_process";
import { createServer, type Server, type Socket } from "node:net";
import { pathToFileURL } from "node:url";
import { WebSocketServer, type WebSocket } from "ws";
import { pinProcess, workerPinning } from "../cli/affinity.js";
import { startCoordinatorServer, type CoordinatorServer, type Wire } from "../coordinator/server.js";
import { FLOOR_HEADER_BYTES, LATENCY_METHODS, type LatencyCommand, type LatencyMethod, type LatencyReply } from "./latency-wire.js";
import { fmt, loadLine, machineLine, spread, table, verdict, type Spread } from "./stats.js";

export interface LatencyOptions {
  worlds: readonly number[];
  channels: readonly number[];
  /** Unmeasured warm-up: this many rounds per method, twice over (JIT, sockets, page faults). */
  warmup: number;
  /** Measured rounds per method = blocks × roundsPerBlock; methods rotate order per block. */
  blocks: number;
  roundsPerBlock: number;
  /** Node flags for the worker processes (e.g. --cpu-prof for profiling the bench). */
  childExecArgv?: string[];
  /** "off": leave the worker processes to the OS instead of pinning them as `syncbn train` does. */
  pinCpus?: "auto" | "off";
  /** Methods to run (default all; fewer for profiling one). */
  methods?: readonly LatencyMethod[];
  log(line: string): void;
}

export const DEFAULT_LATENCY: Omit<LatencyOptions, "log"> = {
  worlds: [2, 4, 8],
  channels: [64, 1024],
  warmup: 2500,
  // Many short blocks, the methods rotating: drifting load and scheduling luck hit every method alike.
  blocks: 12,
  roundsPerBlock: 250,
};

export interface LatencyRow {
  world: number;
  channels: number;
  ours: Spread;
  tcp: Spread;
  ws: Spread;
  floor: Spread;
  /** ours.median / floor.median */
  ratio: number;
  /** tcp.median / floor.median */
  tcpRatio: number;
  /** ws.median / floor.median: the WebSocket layer's own share. */
  wsRatio: number;
  /** CPU µs per round of the central process (coordinator or summing server) and of the mean worker process. */
  cpuUs: Record<LatencyMethod, { central: number; worker: number }>;
  load: string;
}

/** Target of issue 5: ours ≤ 1.5 × the floor. */
export const LATENCY_TARGET = 1.5;

const CLIENT_SCRIPT = new URL("./latency-client.js", import.meta.url);

/** Sums W float64 vectors in rank order into one reusable output; bench-only. */
class RankOrderSum {
  readonly rx: Float64Array[];
  readonly out: Float64Array;
  private arrived = 0;
  constructor(
    readonly world: number,
    readonly values: number,
  ) {
    this.rx = Array.from({ length: world }, () => new Float64Array(values));
    this.out = new Float64Array(values);
  }
  /** Marks rank's vector as arrived; true when all have (and out holds the sum). */
  arrive(): boolean {
    if (++this.arrived < this.world) return false;
    this.arrived = 0;
    this.out.fill(0);
    for (const v of this.rx) for (let i = 0; i < this.values; i++) this.out[i]! += v[i]!;
    return true;
  }
}

/** The floor's central process: fixed-size frames over node:net, one write of the result per socket. */
async function startFloor(world: number, channels: number): Promise<Server> {
  const values = 2 * channels + 1;
  const frameBytes = FLOOR_HEADER_BYTES + 8 * values;
  const sum = new RankOrderSum(world, values);
  const rxBytes = sum.rx.map((v) => new Uint8Array(v.buffer));
  const fill = new Array<number>(world).fill(0);
  const socks: Socket[] = [];
  const out = Buffer.alloc(frameBytes);
  out.writeUInt32LE(8 * values, 0);
  const server = createServer({ noDelay: true }, (s) => {
    socks.push(s);
    let rank = -1;
    s.on("data", (chunk: Buffer) => {
      if (rank < 0) rank = chunk.readUInt32LE(4); // the first frame names the rank
      socks[rank] = s;
      let off = 0;
      while (off < chunk.length) {
        const f = fill[rank]!;
        const take = Math.min(chunk.length - off, frameBytes - f);
        // Header bytes are skipped; the values land aligned in rx[rank].
        const from = Math.max(f, FLOOR_HEADER_BYTES);
        if (f + take > FLOOR_HEADER_BYTES) rxBytes[rank]!.set(chunk.subarray(off + (from - f), off + take), from - FLOOR_HEADER_BYTES);
        fill[rank] = f + take;
        off += take;
        if (fill[rank] === frameBytes) {
          fill[rank] = 0;
          if (sum.arrive()) {
            Buffer.from(sum.out.buffer).copy(out, FLOOR_HEADER_BYTES);
            for (const t of socks.slice(0, world)) t.write(out);
          }
        }
      }
    });
    s.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  server.on("close", () => socks.forEach((s) => s.destroy()));
  return server;
}

/** Bare `ws`: the same frames as binary messages, the result as one message to all. */
async function startBareWs(world: number, channels: number): Promise<WebSocketServer> {
  const values = 2 * channels + 1;
  const sum = new RankOrderSum(world, values);
  const peers: WebSocket[] = [];
  const out = Buffer.alloc(FLOOR_HEADER_BYTES + 8 * values);
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate: false });
  await new Promise<void>((r) => wss.once("listening", () => r()));
  wss.on("connection", (ws) => {
    ws.on("message", (data: Buffer) => {
      const rank = data.readUInt32LE(4);
      peers[rank] = ws;
      new Uint8Array(sum.rx[rank]!.buffer).set(data.subarray(FLOOR_HEADER_BYTES));
      if (sum.arrive()) {
        Buffer.from(sum.out.buffer).copy(out, FLOOR_HEADER_BYTES);
        for (const p of peers) p.send(out);
      }
    });
  });
  return wss;
}

function waitFor<T>(procs: ChildProcess[], pred: (m: unknown) => m is T): Promise<T[]> {
  return Promise.all(
    procs.map(
      (p) =>
        new Promise<T>((resolve, reject) => {
          const onMsg = (m: unknown): void => {
            if (pred(m)) {
              p.off("message", onMsg);
              p.off("exit", onExit);
              resolve(m);
            }
          };
          const onExit = (code: number | null): void => reject(new Error(`latency client exited with code ${code}`));
          p.on("message", onMsg);
          p.once("exit", onExit);
        }),
    ),
  );
}

const isReady = (m: unknown): m is { ready: true } => typeof m === "object" && m !== null && "ready" in m;
const isReply = (m: unknown): m is LatencyReply => typeof m === "object" && m !== null && "lat" in m;

interface Block {
  lat: number[];
  /** CPU µs per round: the central process (this one) and the mean worker. */
  centralCpuUs: number;
  workerCpuUs: number;
}

async function runBlock(procs: ChildProcess[], cmd: LatencyMethod, rounds: number): Promise<Block> {
  const replies = waitFor(procs, isReply);
  const cpu0 = process.cpuUsage();
  for (const p of procs) p.send({ cmd, rounds } satisfies LatencyCommand);
  const rs = await replies;
  const cpu = process.cpuUsage(cpu0);
  return {
    lat: rs.flatMap((r) => r.lat),
    centralCpuUs: (cpu.user + cpu.system) / rounds,
    workerCpuUs: rs.reduce((a, r) => a + r.cpuUs, 0) / rs.length / rounds,
  };
}

async function measure(world: number, channels: number, o: LatencyOptions): Promise<LatencyRow> {
  const token = "bench";
  const startOn = (wire: Wire): Promise<CoordinatorServer> =>
    startCoordinatorServer({ host: "127.0.0.1", port: 0, worldSize: world, token, conventions: null, roundTimeoutMs: 60_000, maxPayload: 64 * 1024 * 1024, wire });
  const coord = await startOn("ws");
  const tcpCoord = await startOn("tcp");
  const floor = await startFloor(world, channels);
  const bare = await startBareWs(world, channels);
  const floorPort = (floor.address() as { port: number }).port;
  const wsUrl = `ws://127.0.0.1:${(bare.address() as { port: number }).port}`;
  const procs = Array.from({ length: world }, (_, rank) =>
    fork(CLIENT_SCRIPT, [coord.url, tcpCoord.url, wsUrl, String(floorPort), String(rank), String(world), String(channels), token], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      execArgv: o.childExecArgv ?? [],
    }),
  );
  // Placed as `syncbn train` places its worker processes (--pin-cpus auto), for every method alike.
  const pinning = o.pinCpus === "off" ? null : workerPinning("auto", world);
  if (pinning) procs.forEach((p, rank) => pinProcess(p.pid!, pinning[rank]!));
  try {
    await waitFor(procs, isReady);
    const methods = o.methods ?? LATENCY_METHODS;
    for (let w = 0; w < 2; w++) for (const m of methods) await runBlock(procs, m, o.warmup);
    const blocks: Record<LatencyMethod, Block[]> = { ours: [], tcp: [], ws: [], floor: [] };
    for (let b = 0; b < o.blocks; b++) {
      // Rotate the order, so drifting load hits every method alike.
      for (let k = 0; k < methods.length; k++) {
        const m = methods[(b + k) % methods.length]!;
        blocks[m].push(await runBlock(procs, m, o.roundsPerBlock));
      }
    }
    if (coord.coordinator.failed) throw coord.coordinator.failed;
    if (tcpCoord.coordinator.failed) throw tcpCoord.coordinator.failed;
    const s = Object.fromEntries(LATENCY_METHODS.map((m) => [m, spread(blocks[m].flatMap((b) => b.lat))])) as Record<LatencyMethod, Spread>;
    const mean = (bs: Block[], k: "centralCpuUs" | "workerCpuUs"): number => bs.reduce((a, b) => a + b[k], 0) / bs.length;
    const cpuUs = Object.fromEntries(LATENCY_METHODS.map((m) => [m, { central: mean(blocks[m], "centralCpuUs"), worker: mean(blocks[m], "workerCpuUs") }])) as LatencyRow["cpuUs"];
    return { world, channels, ...s, ratio: s.ours.median / s.floor.median, tcpRatio: s.tcp.median / s.floor.median, wsRatio: s.ws.median / s.floor.median, cpuUs, load: loadLine() };
  } finally {
    for (const p of procs) if (p.connected) p.send({ cmd: "exit" } satisfies LatencyCommand);
    await Promise.race([Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null ? r(null) : p.once("exit", r))))), new Promise((r) => setTimeout(r, 3000))]);
    for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
    await coord.close();
    await tcpCoord.close();
    await new Promise((r) => floor.close(r));
    for (const c of bare.clients) c.terminate();
    await new Promise((r) => bare.close(r));
  }
}

export async function runLatencyBench(o: LatencyOptions): Promise<LatencyRow[]> {
  const rows: LatencyRow[] = [];
  for (const w of o.worlds) {
    for (const c of o.channels) {
      const r = await measure(w, c, o);
      o.log(
        `latency W=${w} C=${c}: ours ${fmt(r.ours.median)} / ${fmt(r.ours.p90)} ms, tcp ${fmt(r.tcp.median)} / ${fmt(r.tcp.p90)} (ratio ${fmt(r.tcpRatio, 2)}, CPU ${fmt(r.cpuUs.tcp.central, 0)}/${fmt(r.cpuUs.tcp.worker, 0)}), bare ws ${fmt(r.ws.median)} / ${fmt(r.ws.p90)}, floor ${fmt(r.floor.median)} / ${fmt(r.floor.p90)}; ` +
          `ratio ${fmt(r.ratio, 2)} (ws alone ${fmt(r.wsRatio, 2)}); CPU µs/round central ${fmt(r.cpuUs.ours.central, 0)}/${fmt(r.cpuUs.ws.central, 0)}/${fmt(r.cpuUs.floor.central, 0)}, ` +
          `worker ${fmt(r.cpuUs.ours.worker, 0)}/${fmt(r.cpuUs.ws.worker, 0)}/${fmt(r.cpuUs.floor.worker, 0)} (load ${r.load})`,
      );
      rows.push(r);
    }
  }
  return rows;
}

export function latencyMarkdown(rows: readonly LatencyRow[], o: Omit<LatencyOptions, "log">): string[] {
  return [
    `One sync-BN round (2·C+1 float64 statistics), worker send → result received, W worker processes on 127.0.0.1. ` +
      `Per method ${o.blocks * o.roundsPerBlock} rounds per worker after 2 × ${o.warmup} warm-up rounds, the four methods rotating in blocks of ${o.roundsPerBlock} rounds in the same processes; ` +
      `median and p90 over all workers' rounds; the worker processes are pinned to CPUs as \`syncbn train\` pins its workers by default (\`--pin-cpus auto\`; \`--unpinned\` leaves them to the OS). **ours (ws)** = CoordinatorClient → the real coordinator (validation, rank-order Chan merge, running stats) over the default WebSocket wire; ` +
      `**ours (tcp)** = the same client and coordinator over \`--wire tcp\`; ` +
      `**bare ws** = the same bytes through plain \`ws\` (what the WebSocket layer alone costs); **floor** = raw \`node:net\` barrier all-reduce of the same bytes (central process sums, writes back). ` +
      `Target: ours ≤ ${LATENCY_TARGET} × floor.`,
    "",
    ...table(
      ["W", "C", "ours (ws) median / p90 ms", "ours (tcp) median / p90 ms", "bare ws median / p90 ms", "floor median / p90 ms", "ws / floor", "tcp / floor", `target ≤ ${LATENCY_TARGET} (ws; tcp)`, "bare ws / floor", "load (1/5/15 min)"],
      rows.map((r) => [
        String(r.world),
        String(r.channels),
        `${fmt(r.ours.median)} / ${fmt(r.ours.p90)}`,
        `${fmt(r.tcp.median)} / ${fmt(r.tcp.p90)}`,
        `${fmt(r.ws.median)} / ${fmt(r.ws.p90)}`,
        `${fmt(r.floor.median)} / ${fmt(r.floor.p90)}`,
        fmt(r.ratio, 2),
        fmt(r.tcpRatio, 2),
        `${verdict(r.ratio <= LATENCY_TARGET)}; ${verdict(r.tcpRatio <= LATENCY_TARGET)}`,
        fmt(r.wsRatio, 2),
        r.load,
      ]),
    ),
    "",
    "CPU time per round (user + system, µs; less sensitive to load than latency): the central process and the mean worker process.",
    "",
    ...table(
      ["W", "C", "coordinator (ws)", "coordinator (tcp)", "bare ws server", "floor server", "our worker (ws)", "our worker (tcp)", "bare ws worker", "floor worker"],
      rows.map((r) => [
        String(r.world),
        String(r.channels),
        ...(["ours", "tcp", "ws", "floor"] as const).map((m) => fmt(r.cpuUs[m].central, 0)),
        ...(["ours", "tcp", "ws", "floor"] as const).map((m) => fmt(r.cpuUs[m].worker, 0)),
      ]),
    ),
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const log = (l: string): void => console.log(l);
  log(machineLine());
  const args = process.argv.slice(2);
  const o: LatencyOptions = { ...DEFAULT_LATENCY, log };
  if (args.includes("--quick")) Object.assign(o, { warmup: 2000, blocks: 3, roundsPerBlock: 300 });
  const list = (flag: string): number[] | null => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1]!.split(",").map(Number) : null;
  };
  o.worlds = list("--worlds") ?? o.worlds;
  o.channels = list("--channels") ?? o.channels;
  const only = args.indexOf("--methods");
  if (only >= 0) o.methods = args[only + 1]!.split(",") as LatencyMethod[];
  if (args.includes("--unpinned")) o.pinCpus = "off";
  const prof = args.indexOf("--cpu-prof-dir");
  if (prof >= 0) o.childExecArgv = ["--cpu-prof", "--cpu-prof-interval", "50", "--cpu-prof-dir", args[prof + 1]!];
  const rows = await runLatencyBench(o);
  for (const l of latencyMarkdown(rows, o)) log(l);
}
