// The worker's connection to the coordinator: connect (with retries until a
// deadline), handshake, and await-able rounds. Every wait has a deadline; a
// coordinator error or disconnect rejects every pending round at once.

import WebSocket from "ws";
import { decode, encode } from "../shared/codec.js";
import type { RunConventions } from "../shared/config.js";
import { ErrorCode, SyncbnError, type ErrorContext } from "../shared/errors.js";
import {
  PROTOCOL_VERSION,
  describeRound,
  isServerMessage,
  type Contribution,
  type ErrorMessage,
  type Phase,
  type Resync,
  type RoundResult,
} from "../shared/protocol.js";

export interface ClientOptions {
  url: string;
  rank: number;
  worldSize: number;
  token: string;
  conventions: RunConventions;
  /** Keep retrying the connection this long (the coordinator may start later). */
  connectTimeoutMs: number;
  /** A round with no result after this long fails (set above the coordinator's deadline). */
  roundTimeoutMs: number;
  maxPayload: number;
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

interface Pending {
  resolve(r: RoundResult): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
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
  private readonly pending = new Map<string, Pending>();
  private failure: SyncbnError | null = null;
  private closing = false;
  private resync: Resync | null = null;
  /** Total time spent between sending a contribution and receiving its result. */
  waitMs = 0;
  /** Called before each contribution is sent (fault injection in tests; see cli/env.ts SYNCBN_FAULT). */
  beforeSend: ((step: number, phase: Phase, layer: number) => void) | null = null;

  private constructor(
    private readonly ws: WebSocket,
    readonly opts: ClientOptions,
  ) {
    ws.on("message", (data) => this.wsOnMessage(data as Buffer));
    ws.on("close", (code) => {
      if (this.closing) return;
      this.fail(
        this.failure ??
          new SyncbnError(ErrorCode.CoordinatorLost, `connection to the coordinator at ${opts.url} closed (code ${code}); the coordinator died or stopped the run`, {
            rank: opts.rank,
          }),
      );
    });
    ws.on("error", () => {
      // the close event follows and reports it
    });
  }

  static async connect(opts: ClientOptions): Promise<CoordinatorClient> {
    const deadline = Date.now() + opts.connectTimeoutMs;
    let lastError = "";
    for (;;) {
      try {
        const ws = await openSocket(opts, Math.max(100, deadline - Date.now()));
        return await CoordinatorClient.handshake(ws, opts, Math.max(1000, deadline - Date.now()));
      } catch (e) {
        if (e instanceof SyncbnError && e.code !== ErrorCode.CoordinatorLost) throw e; // refused: retrying will not help
        lastError = (e as Error).message;
      }
      if (Date.now() >= deadline) {
        throw new SyncbnError(
          ErrorCode.CoordinatorLost,
          `could not reach the coordinator at ${opts.url} within ${opts.connectTimeoutMs} ms (${lastError}); is it running, and is the address right?`,
          { rank: opts.rank },
        );
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  private static handshake(ws: WebSocket, opts: ClientOptions, timeoutMs: number): Promise<CoordinatorClient> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new SyncbnError(ErrorCode.CoordinatorLost, `no answer to hello within ${timeoutMs} ms`, { rank: opts.rank }));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        ws.removeAllListeners("message");
        ws.removeAllListeners("close");
      };
      ws.on("message", (data) => {
        done();
        const msg = safeDecode(data as Buffer);
        if (msg && msg.type === "welcome") resolve(new CoordinatorClient(ws, opts));
        else {
          ws.terminate();
          reject(msg && msg.type === "error" ? errorFromMessage(msg) : new SyncbnError(ErrorCode.BadMessage, "coordinator answered hello with an unexpected message", { rank: opts.rank }));
        }
      });
      ws.on("close", (code) => {
        done();
        reject(new SyncbnError(ErrorCode.CoordinatorLost, `coordinator closed the connection during the handshake (code ${code})`, { rank: opts.rank }));
      });
      ws.send(
        encode({ type: "hello", version: PROTOCOL_VERSION, rank: opts.rank, worldSize: opts.worldSize, token: opts.token, conventions: opts.conventions }),
      );
    });
  }

  get rank(): number {
    return this.opts.rank;
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
    if (this.failure) return Promise.reject(this.failure);
    if (this.resync) return Promise.reject(new ResyncSignal(this.resync));
    this.beforeSend?.(step, phase, layer);
    const key = `${step}/${phase}/${layer}`;
    const sent = performance.now();
    return new Promise<RoundResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(key);
        reject(
          new SyncbnError(
            ErrorCode.Timeout,
            `no result for ${describeRound(step, phase, layer)} from the coordinator within ${this.opts.roundTimeoutMs} ms`,
            { rank: this.opts.rank, step, layer, phase },
          ),
        );
      }, this.opts.roundTimeoutMs);
      const onResult = (r: RoundResult): void => {
        this.waitMs += performance.now() - sent;
        resolve(r);
      };
      this.pending.set(key, { resolve: onResult, reject, timer });
      const msg: Contribution = { type: "contrib", step, phase, layer, count, data };
      if (extra) msg.extra = extra;
      if (checksum !== undefined) msg.checksum = checksum;
      this.ws.send(encode(msg));
    });
  }

  /** Accept the latest resync: later contributions count in the new membership. */
  acknowledgeResync(): Resync {
    const r = this.resync;
    if (!r) throw new Error("acknowledgeResync without a pending resync");
    this.resync = null;
    this.ws.send(encode({ type: "resync-ack", generation: r.generation }));
    return r;
  }

  /** Tell the coordinator this worker finished, then close. */
  async bye(): Promise<void> {
    if (this.failure || this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(encode({ type: "bye" }));
    await this.close();
  }

  close(): Promise<void> {
    this.closing = true;
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.ws.terminate();
        resolve();
      }, 2000);
      this.ws.once("close", () => {
        clearTimeout(t);
        resolve();
      });
      this.ws.close(1000, "done");
    });
  }

  /** Reject everything pending and every later round with err. */
  private fail(err: SyncbnError): void {
    if (!this.failure) this.failure = err;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(this.failure);
    }
    this.pending.clear();
  }

  private wsOnMessage(data: Buffer): void {
    const msg = safeDecode(data);
    if (!msg) {
      this.fail(new SyncbnError(ErrorCode.BadMessage, "undecodable or invalid message from the coordinator", { rank: this.opts.rank }));
      this.ws.terminate();
      return;
    }
    if (msg.type === "error") {
      this.fail(errorFromMessage(msg));
      return;
    }
    if (msg.type === "resync") {
      this.resync = msg;
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new ResyncSignal(msg));
      }
      this.pending.clear();
      return;
    }
    if (msg.type !== "result") return;
    const key = `${msg.step}/${msg.phase}/${msg.layer}`;
    const p = this.pending.get(key);
    if (!p) return; // a result for a round this worker already gave up on
    this.pending.delete(key);
    clearTimeout(p.timer);
    p.resolve(msg);
  }
}

function safeDecode(data: Buffer): import("../shared/protocol.js").ServerMessage | null {
  try {
    const v = decode(data);
    return isServerMessage(v) ? v : null;
  } catch {
    return null;
  }
}

function openSocket(opts: ClientOptions, timeoutMs: number): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(opts.url, { perMessageDeflate: false, maxPayload: opts.maxPayload, handshakeTimeout: timeoutMs });
    ws.once("open", () => {
      ws.removeAllListeners("error");
      ws.on("error", () => {});
      resolve(ws);
    });
    ws.once("error", (e) => reject(new SyncbnError(ErrorCode.CoordinatorLost, e.message)));
  });
}
