// A rogue client throws ≥ 10,000 malformed or hostile messages at the coordinator
// of a real training run: the coordinator survives, the rogue is disconnected with
// an error code, and the run's results are bit-identical to an undisturbed run.
import { mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { describe, expect, it } from "vitest";
import { Rng } from "../shared/rng.js";
import { encode, decode } from "../shared/codec.js";
import { PROTOCOL_VERSION } from "../shared/protocol.js";
import { readCheckpoint } from "../worker/checkpoint.js";
import { runCli, startCli, waitForOutput } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));
const TOKEN = "fuzz-secret-token-0f3c9a";
const RUN = ["train", "--workers", "2", "--model", "mlp", "--data", "synthetic", "--train-size", "2048", "--test-size", "100", "--batch", "8", "--steps", "1500", "--seed", "9", "--checkpoint-every", "500", "--transport", "process"];
const CONV = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: "" };

/** One hostile message of a random kind. */
function hostile(rng: Rng): Uint8Array | string {
  const kind = rng.int(12);
  const f64 = (n: number, bad = false) => Float64Array.from({ length: n }, () => (bad && rng.next() < 0.3 ? [Number.NaN, Infinity, -Infinity][rng.int(3)]! : rng.normal()));
  switch (kind) {
    case 0: // random bytes
      return Uint8Array.from({ length: 1 + rng.int(200) }, () => rng.int(256));
    case 1: { // truncated msgpack
      const b = encode({ type: "contrib", step: 1, phase: "fwd", layer: 0, count: 4, data: f64(8) });
      return b.subarray(0, 1 + rng.int(b.length - 1));
    }
    case 2: // huge declared lengths: str32 / bin32 / array32 claiming ~4 GB
      return Uint8Array.of([0xdb, 0xc6, 0xdd][rng.int(3)]!, 0xff, 0xff, 0xff, 0xf0, 1, 2, 3);
    case 3: // wrong types in a hello
      return encode({ type: "hello", version: "1", rank: "zero", worldSize: null, token: 7, conventions: [] } as never);
    case 4: // a well-formed hello with a wrong token
      return encode({ type: "hello", version: PROTOCOL_VERSION, rank: rng.int(2), worldSize: 2, token: "guess", conventions: CONV } as never);
    case 5: // the right shape, but no hello first: wrong step/layer contributions
      return encode({ type: "contrib", step: rng.int(1e9), phase: "fwd", layer: rng.int(1000), count: rng.int(100), data: f64(2 * (1 + rng.int(8))) });
    case 6: // NaN/Inf statistics
      return encode({ type: "contrib", step: 0, phase: "bwd", layer: 0, count: 8, data: f64(512, true) });
    case 7: // text frame
      return JSON.stringify({ type: "hello", rank: 0 });
    case 8: // wrong version
      return encode({ type: "hello", version: 999, rank: 0, worldSize: 2, token: TOKEN.slice(0, 3), conventions: CONV } as never);
    case 9: // deeply nested arrays
      return Uint8Array.from({ length: 2000 }, () => 0x91);
    case 10: // empty frame
      return new Uint8Array(0);
    default: // a bye without a hello
      return encode({ type: "bye" });
  }
}

/** Sends `total` hostile messages over many connections; returns the error codes received. */
async function fuzz(url: string, total: number, seed: number): Promise<{ sent: number; codes: Map<string, number>; closes: number }> {
  const rng = new Rng(seed);
  const codes = new Map<string, number>();
  let sent = 0;
  let closes = 0;
  const perConnection = 25;
  while (sent < total) {
    await new Promise<void>((resolve) => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      const timer = setTimeout(() => ws.terminate(), 5000);
      ws.on("open", () => {
        for (let i = 0; i < perConnection && sent < total; i++, sent++) ws.send(hostile(rng));
        // one oversize frame every 40 connections (maxPayload is 256 MiB; this one is just big and invalid)
        if (rng.next() < 0.025) ws.send(new Uint8Array(4 * 1024 * 1024).fill(0xc1));
      });
      ws.on("message", (d: Buffer) => {
        try {
          const m = decode(d) as { type?: string; code?: string };
          if (m.type === "error" && m.code) codes.set(m.code, (codes.get(m.code) ?? 0) + 1);
        } catch {
          codes.set("undecodable", (codes.get("undecodable") ?? 0) + 1);
        }
      });
      ws.on("error", () => {});
      ws.on("close", () => {
        closes++;
        clearTimeout(timer);
        resolve();
      });
    });
  }
  return { sent, codes, closes };
}

describe("hostile client during a real run", () => {
  it("survives 10,000 malformed messages, disconnects the rogue with error codes, and leaves the results bit-identical", async () => {
    const calm = tmp("calm");
    const attacked = tmp("attacked");
    const env = { SYNCBN_TOKEN: TOKEN };
    const calmRun = runCli([...RUN, "--out", calm], { env, timeoutMs: 420_000 });
    const run = startCli([...RUN, "--out", attacked], { env, timeoutMs: 420_000 });
    await waitForOutput(run, (o) => /coordinator ws:\/\/127\.0\.0\.1:\d+/.test(o), 60_000);
    const url = /coordinator (ws:\/\/127\.0\.0\.1:\d+)/.exec(run.stdout())![1]!;
    await waitForOutput(run, (o) => /step \d+/.test(o), 90_000);
    const result = await fuzz(url, 10_000, 42);
    // the whole attack happened while the run was in progress
    expect(run.child.exitCode).toBeNull();
    const [r, rc] = await Promise.all([run.done, calmRun]);
    expect(result.sent).toBeGreaterThanOrEqual(10_000);
    expect(r.code, r.stderr).toBe(0);
    expect(rc.code, rc.stderr).toBe(0);
    // the rogue was told why, with codes, and thrown out every time
    expect(result.codes.get("SYNCBN_ERR_BAD_MESSAGE") ?? 0).toBeGreaterThan(100);
    expect(result.codes.get("SYNCBN_ERR_TOKEN") ?? 0).toBeGreaterThan(0);
    expect(result.closes).toBeGreaterThanOrEqual(10_000 / 25);
    // identical training results
    const a = readCheckpoint(join(attacked, "checkpoint.bin"));
    const b = readCheckpoint(join(calm, "checkpoint.bin"));
    expect(a.header.step).toBe(1500);
    b.params.forEach((p, i) => expect(Buffer.from(a.params[i]!.buffer).equals(Buffer.from(p.buffer))).toBe(true));
    b.bn.forEach((s, i) => expect(Array.from(a.bn[i]!.var)).toEqual(Array.from(s.var)));
    // the token never shows up in output, metrics or summary
    const written = readdirSync(attacked).filter((f) => f.endsWith(".json") || f.endsWith(".jsonl")).map((f) => readFileSync(join(attacked, f), "utf8"));
    for (const text of [r.stdout, r.stderr, ...written]) expect(text).not.toContain(TOKEN);
  }, 480_000);
});
