// The worker's connection to the coordinator: connect (with retries until a
// deadline), handshake, and await-able rounds, over a Link — a WebSocket, or a
// MessagePort for the thread transport (worker/port-link.ts). Every wait has a
// deadline; a coordinator error or disconnect rejects every pending round at once.

import WebSocket from "ws";
import { MAX_KEY_LAYER, adoptFrame, decode, encode, frameRoundKey, releaseEncoded, roundKey } from "../shared/codec.js";
import type { RunConventions } from "../shared/config.js";
import { ErrorCode, SyncbnError, type ErrorContext } from "../shared/errors.js";
import {
  MAX_TIMER_MS,
  PROTOCOL_VERSION,
  TOO_MANY_PENDING,
  describeRound,
  isOutDirNotice,
  isServerMessage,
  type Contribution,
  type ErrorMessage,
  type OutDirNotice,
  type Phase,
  type Resync,
  type RoundResult,
  type ServerMessage,
} from "../shared/protocol.js";
import { openTcpLink } from "./tcp-link.js";

export interface ClientOptions {
  url: string;
  /** The first rank of the block this process hosts. */
  rank: number;
  /** How many consecutive ranks this process hosts (default 1). */
  ranks?: number;
  worldSize: number;
  token: string;
  conventions: RunConventions;
  /** Keep retrying the connection this long (the coordinator may start later). */
  connectTimeoutMs: number;
  /** A round with no result after this long fails (set above the coordinator's deadline). */
  roundTimeoutMs: number;
  maxPayload: number;
}

/** This process's rank, or the list of the ranks of its block: the `rank` of its errors. */
export function whoOf(opts: Pick<ClientOptions, "rank" | "ranks">): number | number[] {
  const size = opts.ranks ?? 1;
  return size === 1 ? opts.rank : Array.from({ length: size }, (_, k) => opts.rank + k);
}

/**
 * Not an error: the coordinator dropped a lost worker (elastic mode) and every
 * pending round is void. The training loop restores the step's starting state,
 * calls acknowledgeResync() and redoes the step with the new membership.
 */
export class ResyncSignal extends Error {
  constructor(readonly resync: Resync) {
    super(`resync: rank(s) ${resync.lost.join(", ")} lost; redo from step ${resync.step} with ranks ${resync.active.join(", ")}`);
    this.name = "ResyncSignal";
  }
}

/**
 * A message pipe to the coordinator. `send` may transfer the bytes (detaching
 * them) or write them out; the client reuses a sent frame only after the
 * coordinator's answer to it arrived, i.e. once every byte was delivered.
 */
export interface Link {
  send(bytes: Uint8Array): void;
  readonly isOpen: boolean;
  /** Close gracefully; resolves once closed (or forced closed after a grace period). */
  close(): Promise<void>;
  /** Drop at once. */
  terminate(): void;
  /** Where the coordinator is, for messages (a URL, or "in-process"). */
  readonly label: string;
  onMessage: ((bytes: Uint8Array) => void) | null;
  /** The connection closed (detail e.g. "code 1006"); called at most once. */
  onClose: ((detail: string) => void) | null;
  /**
   * Received bytes are the client's own (a MessagePort's clones): a result decoded
   * into the caller's buffer leaves its frame's memory to the codec's pool, for the
   * next contribution of that size (whose own frame was transferred away).
   */
  readonly ownsReceived?: boolean;
}

interface Pending {
  resolve(r: RoundResult): void;
  reject(e: Error): void;
  /** performance.now() at send, for waitMs. */
  sent: number;
  /** performance.now() after which the round fails. */
  deadline: number;
  step: number;
  phase: Phase;
  layer: number;
  /** Where the result's data goes (no allocation), if the caller gave a buffer. */
  into: Float64Array | Float32Array | undefined;
  /**
   * The contribution as sent. Its result proves the coordinator has every byte of
   * it, so the buffer goes back to the codec's pool then (not on a failed round).
   */
  frame: Uint8Array | null;
}

/** Rebuilds a coordinator-side error; its message already carries code and context. */
export function errorFromMessage(m: ErrorMessage): SyncbnError {
  const ctx: ErrorContext = {};
  if (m.rank !== undefined) ctx.rank = m.rank;
  if (m.step !== undefined) ctx.step = m.step;
  if (m.layer !== undefined) ctx.layer = m.layer;
  if (m.phase !== undefined) ctx.phase = m.phase;
  const known = Object.values(ErrorCode) as string[];
  const code = (known.includes(m.code) ? m.code : ErrorCode.BadMessage) as ErrorCode;
  const detail = m.message.replace(/^[A-Z_]+: (\[[^\]]*\] )?/, "");
  return new SyncbnError(code, detail, ctx);
}

export class CoordinatorClient {
  /** Pending rounds by roundKey(step, phase, layer). */
  private readonly pending = new Map<number, Pending>();
  private failure: SyncbnError | null = null;
  private closing = false;
  private resync: Resync | null = null;
  /**
   * Total time spent between sending a contribution and receiving its result,
   * except in the first round: that one also waits for every other worker to
   * start (processes, data, connections), which is start-up, kept in startupWaitMs.
   */
  waitMs = 0;
  startupWaitMs: number | null = null;
  /** Called before each contribution is sent (fault injection in tests; see cli/env.ts SYNCBN_FAULT). */
  beforeSend: ((step: number, phase: Phase, layer: number) => void) | null = null;

  /**
   * One timer for every round's deadline, armed while rounds are pending and
   * re-armed only when it fires: no timer work per round on the hot path.
   */
  private deadlineTimer: ReturnType<typeof setTimeout> | null = null;
  /** performance.now() until which the coordinator's join window is open (Welcome.joinWaitMs). */
  private readonly joinGraceUntil: number;

  private constructor(
    private readonly link: Link,
    readonly opts: ClientOptions,
    /** The coordinator's output folder, when its welcome named one. */
    readonly coordinatorOutDir: OutDirNotice | null = null,
    /** The welcome's joinWaitMs: rounds sent before performance.now() passes joinGraceUntil may wait for ranks still joining. */
    joinWaitMs = 0,
  ) {
    this.joinGraceUntil = performance.now() + joinWaitMs;
    link.onMessage = (bytes) => this.linkOnMessage(bytes);
    link.onClose = (detail) => {
      if (this.closing) return;
      this.fail(
        this.failure ??
          new SyncbnError(ErrorCode.CoordinatorLost, `connection to the coordinator at ${link.label} closed (${detail}); the coordinator died or stopped the run`, {
            rank: whoOf(opts),
          }),
      );
    };
  }

  static async connect(opts: ClientOptions): Promise<CoordinatorClient> {
    const deadline = Date.now() + opts.connectTimeoutMs;
    let lastError = "";
    /** Why the coordinator last closed an attempt before its hello to make room (coordinator/pending.ts), if it did. */
    let lastEviction = "";
    for (;;) {
      try {
        const link = await openLink(opts, Math.max(100, deadline - Date.now()));
        return await CoordinatorClient.handshake(link, opts, Math.max(1000, deadline - Date.now()));
      } catch (e) {
        if (e instanceof SyncbnError && e.code !== ErrorCode.CoordinatorLost) throw e; // refused: retrying will not help
        lastError = e instanceof SyncbnError ? e.detail : (e as Error).message;
        if (lastError.startsWith(TOO_MANY_PENDING)) lastEviction = lastError;
      }
      if (Date.now() >= deadline) {
        // Evicted: it is running, but flooded; that is the cause even if a last, deadline-shortened attempt timed out.
        const why = lastEviction === "" ? `${lastError}); is it running, and is the address right?` : lastEviction === lastError ? `${lastError})` : `${lastEviction}; last attempt: ${lastError})`;
        throw new SyncbnError(ErrorCode.CoordinatorLost, `could not reach the coordinator at ${opts.url} within ${opts.connectTimeoutMs} ms (${why}`, { rank: whoOf(opts) });
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Handshake over an already open link (the thread transport's MessagePort, or a WebSocket). */
  static overLink(link: Link, opts: ClientOptions): Promise<CoordinatorClient> {
    return CoordinatorClient.handshake(link, opts, opts.connectTimeoutMs);
  }

  private static handshake(link: Link, opts: ClientOptions, timeoutMs: number): Promise<CoordinatorClient> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        link.terminate();
        reject(new SyncbnError(ErrorCode.CoordinatorLost, `no answer to hello within ${timeoutMs} ms`, { rank: whoOf(opts) }));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        link.onMessage = null;
        link.onClose = null;
      };
      link.onMessage = (bytes) => {
        done();
        const msg = safeDecode(bytes);
        if (msg && msg.type === "welcome") {
          const joinWaitMs = typeof msg.joinWaitMs === "number" && msg.joinWaitMs > 0 ? Math.min(msg.joinWaitMs, MAX_TIMER_MS) : 0;
          resolve(new CoordinatorClient(link, opts, isOutDirNotice(msg.outDir) ? msg.outDir : null, joinWaitMs));
        }
        else {
          link.terminate();
          reject(msg && msg.type === "error" ? errorFromMessage(msg) : new SyncbnError(ErrorCode.BadMessage, "coordinator answered hello with an unexpected message", { rank: whoOf(opts) }));
        }
      };
      link.onClose = (detail) => {
        done();
        reject(new SyncbnError(ErrorCode.CoordinatorLost, `coordinator closed the connection during the handshake (${detail})`, { rank: whoOf(opts) }));
      };
      link.send(
        encode({ type: "hello", version: PROTOCOL_VERSION, rank: opts.rank, ranks: opts.ranks ?? 1, worldSize: opts.worldSize, token: opts.token, conventions: opts.conventions }),
      );
    });
  }

  get rank(): number {
    return this.opts.rank;
  }

  /**
   * A result decoded into the caller's buffer (roundInto) gives its frame's memory to
   * the next contribution of its size (Link.ownsReceived: the thread transport). On a
   * socket it is only one more copy, so a large round is better received as a view.
   */
  get reusesResultFrames(): boolean {
    return this.link.ownsReceived === true;
  }

  /** How many consecutive ranks, from `rank`, this process hosts. */
  get ranks(): number {
    return this.opts.ranks ?? 1;
  }

  /** Contribute to round (step, phase, layer) and wait for its reduced result. */
  round(
    step: number,
    phase: Phase,
    layer: number,
    count: number,
    data: Float64Array | Float32Array,
    extra?: Float64Array,
    checksum?: number,
  ): Promise<RoundResult> {
    return this.roundInto(undefined, step, phase, layer, count, data, extra, checksum);
  }

  /**
   * round(), with the result's data written into `into` when its type and length
   * match (the result's `data` is then `into`): the hot path of BN rounds, which
   * allocates no buffer per round. `into` must not be touched until the round settles.
   */
  roundInto(
    into: Float64Array | Float32Array | undefined,
    step: number,
    phase: Phase,
    layer: number,
    count: number,
    data: Float64Array | Float32Array,
    extra?: Float64Array,
    checksum?: number,
  ): Promise<RoundResult> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.resync) return Promise.reject(new ResyncSignal(this.resync));
    this.beforeSend?.(step, phase, layer);
    if (!Number.isInteger(layer) || layer < -1 || layer > MAX_KEY_LAYER) {
      return Promise.reject(new SyncbnError(ErrorCode.BadConfig, `round layer id ${layer} is outside -1..${MAX_KEY_LAYER}`, { rank: whoOf(this.opts), step, phase }));
    }
    const key = roundKey(step, phase, layer);
    const sent = performance.now();
    return new Promise<RoundResult>((resolve, reject) => {
      const msg: Contribution = { type: "contrib", step, phase, layer, count, data };
      if (extra) msg.extra = extra;
      if (checksum !== undefined) msg.checksum = checksum;
      const frame = encode(msg);
      // A round sent while the coordinator's join window is open may wait for ranks still joining, then its deadline from their join.
      const deadline = (sent < this.joinGraceUntil ? this.joinGraceUntil : sent) + this.opts.roundTimeoutMs;
      this.pending.set(key, { resolve, reject, sent, deadline, step, phase, layer, into, frame });
      this.deadlineTimer ??= this.armDeadline(deadline - sent);
      this.link.send(frame);
    });
  }

  private armDeadline(ms: number): ReturnType<typeof setTimeout> {
    const t = setTimeout(() => this.sweepDeadlines(), Math.min(ms, MAX_TIMER_MS));
    // The link keeps the process alive while it is open; the deadline alone must not.
    t.unref();
    return t;
  }

  /** Fails every round past its deadline; re-arms for the earliest one left. */
  private sweepDeadlines(): void {
    this.deadlineTimer = null;
    const now = performance.now();
    let next = Number.POSITIVE_INFINITY;
    for (const [key, p] of this.pending) {
      if (p.deadline > now) {
        next = Math.min(next, p.deadline);
        continue;
      }
      this.pending.delete(key);
      p.reject(
        new SyncbnError(
          ErrorCode.Timeout,
          `no result for ${describeRound(p.step, p.phase, p.layer)} from the coordinator within ${Math.round(p.deadline - p.sent)} ms`,
          { rank: whoOf(this.opts), step: p.step, layer: p.layer, phase: p.phase },
        ),
      );
    }
    if (next !== Number.POSITIVE_INFINITY) this.deadlineTimer = this.armDeadline(next - now + 1);
  }

  /** Accept the latest resync: later contributions count in the new membership. */
  acknowledgeResync(): Resync {
    const r = this.resync;
    if (!r) throw new Error("acknowledgeResync without a pending resync");
    this.resync = null;
    this.link.send(encode({ type: "resync-ack", generation: r.generation }));
    return r;
  }

  /** Name the BN layers, names[i] being layer i of the rounds (protocol LayerNames): shown by the dashboard and metrics. */
  nameLayers(names: readonly string[]): void {
    if (this.failure || !this.link.isOpen) return;
    this.link.send(encode({ type: "layers", names: [...names] }));
  }

  /** Tell the coordinator this worker finished, then close. */
  async bye(): Promise<void> {
    if (this.failure || !this.link.isOpen) return;
    this.link.send(encode({ type: "bye" }));
    await this.close();
  }

  close(): Promise<void> {
    this.closing = true;
    this.stopDeadline();
    return this.link.close();
  }

  private stopDeadline(): void {
    if (this.deadlineTimer !== null) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = null;
  }

  /** Reject everything pending and every later round with err. */
  private fail(err: SyncbnError): void {
    if (!this.failure) this.failure = err;
    this.stopDeadline();
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }

  private linkOnMessage(bytes: Uint8Array): void {
    // A result frame names its round in the header: find the caller's buffer before decoding.
    const frameKey = frameRoundKey(bytes);
    const msg = safeDecode(bytes, frameKey === null ? undefined : this.pending.get(frameKey)?.into);
    if (!msg) {
      this.fail(new SyncbnError(ErrorCode.BadMessage, "undecodable or invalid message from the coordinator", { rank: whoOf(this.opts) }));
      this.link.terminate();
      return;
    }
    if (msg.type === "error") {
      this.fail(errorFromMessage(msg));
      return;
    }
    if (msg.type === "resync") {
      this.resync = msg;
      for (const p of this.pending.values()) p.reject(new ResyncSignal(msg));
      this.pending.clear();
      return;
    }
    if (msg.type !== "result") return;
    const key = frameKey ?? roundKey(msg.step, msg.phase, msg.layer);
    const p = this.pending.get(key);
    if (!p) return; // a result for a round this worker already gave up on
    this.pending.delete(key);
    const waited = performance.now() - p.sent;
    if (this.startupWaitMs === null) this.startupWaitMs = waited;
    else this.waitMs += waited;
    if (p.frame) releaseEncoded(p.frame);
    if (this.link.ownsReceived && msg.data === p.into) {
      // Nothing may point into the frame once it is pooled: the extra (a few values) is copied out.
      if (msg.extra) msg.extra = msg.extra.slice();
      adoptFrame(bytes);
    }
    p.resolve(msg);
  }
}

function safeDecode(bytes: Uint8Array, into?: Float64Array | Float32Array): ServerMessage | null {
  try {
    const v = decode(bytes, into);
    return isServerMessage(v) ? v : null;
  } catch {
    return null;
  }
}

/**
 * Starts a graceful close (`begin`) and resolves on the "close" event, or forces
 * it (`force`) after graceMs: a peer that never answers cannot hold a close open.
 */
export function closeGracefully(conn: { once(event: "close", listener: () => void): unknown }, begin: () => void, force: () => void, graceMs = 2000): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      force();
      resolve();
    }, graceMs);
    conn.once("close", () => {
      clearTimeout(t);
      resolve();
    });
    begin();
  });
}

/** A connected Link to opts.url: tcp://HOST:PORT for the tcp wire, ws:// (or wss://) for WebSocket. */
async function openLink(opts: ClientOptions, timeoutMs: number): Promise<Link> {
  if (opts.url.startsWith("tcp://")) return openTcpLink(opts.url, opts.maxPayload, timeoutMs);
  return wsLink(await openSocket(opts, timeoutMs), opts.url);
}

function openSocket(opts: ClientOptions, timeoutMs: number): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    // A zero masking key: `ws` then sends the payload as it is (no masked copy of every
    // frame) and the coordinator skips unmasking it. Unpredictable keys (RFC 6455) guard
    // proxies against bytes a browser script chose; a worker sends its own, and servers accept any key.
    const ws = new WebSocket(opts.url, { perMessageDeflate: false, maxPayload: opts.maxPayload, handshakeTimeout: timeoutMs, generateMask: zeroMask });
    ws.once("open", () => {
      ws.removeAllListeners("error");
      ws.on("error", () => {});
      resolve(ws);
    });
    ws.once("error", (e) => reject(new SyncbnError(ErrorCode.CoordinatorLost, e.message)));
    // Any HTTP answer but the upgrade (the coordinator's 503 when it evicts a connection before its
    // hello): its short body says why, and the connect loop retries.
    ws.once("unexpected-response", (req, res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        if (body.length < 1024) body += chunk;
      });
      res.on("error", () => {});
      // "close" follows "end", and also comes when the answer breaks off.
      res.once("close", () => {
        req.destroy();
        reject(new SyncbnError(ErrorCode.CoordinatorLost, body.trim() || `the coordinator answered HTTP ${res.statusCode} instead of a WebSocket upgrade`));
      });
    });
  });
}

function zeroMask(mask: Uint8Array): void {
  mask.fill(0);
}

/** A Link over a connected `ws` WebSocket (binary frames only; no compression). */
function wsLink(ws: WebSocket, url: string): Link {
  const link: Link = {
    label: url,
    onMessage: null,
    onClose: null,
    get isOpen() {
      return ws.readyState === WebSocket.OPEN;
    },
    send: (bytes) => ws.send(bytes, { binary: true }),
    terminate: () => ws.terminate(),
    close: () => (ws.readyState === WebSocket.CLOSED ? Promise.resolve() : closeGracefully(ws, () => ws.close(1000, "done"), () => ws.terminate())),
  };
  ws.on("message", (data) => link.onMessage?.(data as Buffer));
  ws.on("close", (code, reason) => link.onClose?.(`code ${code}${reason.length > 0 ? ` ${reason.toString()}` : ""}`));
  return link;
}
