// Hellos that claim too much, sent to the coordinator of a real two-worker
// `syncbn train` run on each wire: 1e300 or 6e7 ranks, ranks and world sizes far
// outside the run, over-long tokens and settings; with the wrong token and with
// the right one. The coordinator answers each with
// an error code and lives on, its log lines stay short, and the run ends
// bit-identical to an undisturbed one. Then the same hellos on the thread
// transport, with hellos whose long or forged fields reach the log, and the
// log-line cap on its own.
import { mkdtempSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { describe, expect, it } from "vitest";
import { refusalLogger } from "../coordinator/admission.js";
import { startThreadCoordinator } from "../coordinator/threads.js";
import { decode, encode } from "../shared/codec.js";
import type { RunConventions } from "../shared/config.js";
import { ErrorCode } from "../shared/errors.js";
import { LOG_LINE_MAX, capLine } from "../shared/log-line.js";
import { PROTOCOL_VERSION } from "../shared/protocol.js";
import { toStreamUnit } from "../shared/stream-frames.js";
import { runCli, startCli, waitForOutput, type CliResult } from "./helpers.js";
import { expectSameCheckpointBits } from "./compare.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));
const TOKEN = "hello-bounds-token-7d21e0";
const RUN = ["train", "--workers", "2", "--model", "mlp", "--data", "synthetic", "--train-size", "2048", "--test-size", "100", "--batch", "8", "--steps", "400", "--seed", "5", "--pin-cpus", "off"];
const CONV: RunConventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch", unbiasedRunningVar: true, norm: "sync", training: "" };

/** A hello of world size 2 with the given token and overrides. */
const hello = (token: string, o: Record<string, unknown> = {}): Record<string, unknown> => ({ type: "hello", version: PROTOCOL_VERSION, rank: 0, worldSize: 2, token, conventions: CONV, ...o });

/** Each hostile hello and the error code it must be answered with. */
const HOSTILE: { what: string; msg: Record<string, unknown>; code: string }[] = [
  { what: "1e300 ranks, wrong token", msg: hello("guess", { ranks: 1e300 }), code: ErrorCode.Token },
  { what: "6e7 ranks, wrong token", msg: hello("guess", { ranks: 6e7 }), code: ErrorCode.Token },
  { what: "1e300 ranks", msg: hello(TOKEN, { ranks: 1e300 }), code: ErrorCode.Rank },
  { what: "6e7 ranks", msg: hello(TOKEN, { ranks: 6e7 }), code: ErrorCode.Rank },
  { what: "rank 1e300", msg: hello(TOKEN, { rank: 1e300, ranks: 6e7 }), code: ErrorCode.Rank },
  { what: "world size 1e300", msg: hello(TOKEN, { worldSize: 1e300, ranks: 6e7 }), code: ErrorCode.Rank },
  { what: "both ranks, taken", msg: hello(TOKEN, { ranks: 2 }), code: ErrorCode.DuplicateRank },
  { what: "a 4000-character token", msg: hello("t".repeat(4000), { ranks: 6e7 }), code: ErrorCode.BadMessage },
  { what: "17,000 characters of settings", msg: hello(TOKEN, { conventions: { ...CONV, training: "x".repeat(17_000) } }), code: ErrorCode.BadMessage },
];

/** Hellos for a free rank whose fields end up in the refusal's log line (during a run every rank is taken). */
const LONG_FIELDS: { what: string; msg: Record<string, unknown>; code: string }[] = [
  { what: "16,000 characters of settings", msg: hello(TOKEN, { rank: 1, conventions: { ...CONV, training: JSON.stringify({ model: "x".repeat(16_000) }) } }), code: ErrorCode.Conventions },
  { what: "a norm mode forging a log line", msg: hello(TOKEN, { rank: 1, conventions: { ...CONV, norm: "sync\ncoordinator: worker rank 9 joined" } }), code: ErrorCode.Conventions },
];

/** Sends one message as a connection's first, returns the code of the error the coordinator answers with. */
function answerCode(wire: "ws" | "tcp", port: number, msg: Record<string, unknown>): Promise<string> {
  const bytes = encode(msg as never);
  const codeOf = (b: Uint8Array): string => (decode(b) as { code?: string }).code ?? "none";
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no answer within 10 s")), 10_000);
    const done = (code: string): void => (clearTimeout(t), resolve(code));
    if (wire === "ws") {
      const ws = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false });
      ws.on("open", () => ws.send(bytes));
      ws.on("message", (d: Buffer) => (done(codeOf(d)), ws.terminate()));
      ws.on("error", () => {});
      return;
    }
    const sock = connect({ host: "127.0.0.1", port }, () => sock.write(toStreamUnit(bytes)));
    let got = Buffer.alloc(0);
    sock.on("data", (d: Buffer) => {
      got = Buffer.concat([got, d]);
      // One envelope: 0xc2, u32 little-endian length, msgpack.
      if (got.length >= 5 && got.length >= 5 + got.readUInt32LE(1)) (done(codeOf(got.subarray(5, 5 + got.readUInt32LE(1)))), sock.destroy());
    });
    sock.on("error", () => {});
  });
}

let calm: Promise<CliResult & { out: string }> | null = null;
function calmRun(): Promise<CliResult & { out: string }> {
  const out = tmp("calm");
  calm ??= runCli([...RUN, "--out", out], { timeoutMs: 480_000, env: { SYNCBN_TOKEN: TOKEN } }).then((r) => ({ ...r, out }));
  return calm;
}

describe("hellos that claim too much during a real run", () => {
  for (const wire of ["ws", "tcp"] as const) {
    it(`answers hellos of 1e300 and 6e7 ranks, out-of-world ranks and over-long fields with error codes in short log lines, and the run ends bit-identical (--wire ${wire})`, async () => {
      const undisturbed = calmRun();
      const out = tmp(`hellos-${wire}`);
      const run = startCli([...RUN, "--wire", wire, "--out", out], { timeoutMs: 480_000, env: { SYNCBN_TOKEN: TOKEN } });
      await waitForOutput(run, (o) => new RegExp(`coordinator ${wire}://127\\.0\\.0\\.1:\\d+`).test(o), 20_000);
      const port = Number(new RegExp(`coordinator ${wire}://127\\.0\\.0\\.1:(\\d+)`).exec(run.stdout())![1]);
      await waitForOutput(run, (o) => /step \d+/.test(o), 60_000);
      const codes: Record<string, string> = {};
      for (const h of HOSTILE) codes[h.what] = await answerCode(wire, port, h.msg);
      expect(codes).toEqual(Object.fromEntries(HOSTILE.map((h) => [h.what, h.code])));
      // Every hostile hello came while the run went on.
      expect(run.child.exitCode).toBeNull();
      const [a, b] = await Promise.all([run.done, undisturbed]);
      expect(a.code, a.stderr.slice(0, 2000)).toBe(0);
      expect(b.code, b.stderr.slice(0, 2000)).toBe(0);
      expect(a.stderr).not.toMatch(/RangeError|\n\s+at /);
      const refusals = a.stderr.split("\n").filter((l) => l.startsWith("coordinator: refused a hello"));
      expect(refusals).toHaveLength(HOSTILE.length);
      for (const l of a.stderr.split("\n")) expect(l.length, l.slice(0, 200)).toBeLessThanOrEqual("coordinator: ".length + LOG_LINE_MAX + "… (99999 chars)".length);
      expectSameCheckpointBits(join(out, "checkpoint.bin"), join(b.out, "checkpoint.bin"), 400);
    }, 600_000);
  }
});

describe("the hello bounds on the thread transport, and the log-line cap", () => {
  it("refuses hellos of 1e300 and 6e7 ranks and over-long fields on the thread transport with error codes, logs them in short unforged lines, and admits a worker after", async () => {
    const t = startThreadCoordinator({ worldSize: 2, token: TOKEN, conventions: CONV, roundTimeoutMs: 10_000 });
    const log: string[] = [];
    t.coordinator.events.onRefused = refusalLogger((l) => log.push(l));
    const ask = (msg: Record<string, unknown>): Promise<{ type: string; code?: string }> =>
      new Promise((resolve) => {
        const port = t.connect("test");
        port.once("message", (d: Uint8Array) => (resolve(decode(d) as { type: string; code?: string }), port.close()));
        port.postMessage(encode(msg as never));
      });
    try {
      const hellos = [...HOSTILE.filter((x) => x.code !== ErrorCode.DuplicateRank), ...LONG_FIELDS];
      for (const h of hellos) expect((await ask(h.msg)).code, h.what).toBe(h.code);
      expect(log).toHaveLength(hellos.length);
      for (const l of log) expect(l.length, l.slice(0, 200)).toBeLessThanOrEqual(LOG_LINE_MAX + "… (99999 chars)".length);
      expect(log.at(-2)).toMatch(/^refused a hello as rank 1 from test: SYNCBN_ERR_CONVENTIONS: .*… \(\d{5} chars\)$/);
      expect(log.at(-1)).toContain("worker has sync\\x0acoordinator: worker rank 9 joined");
      expect(log.join("\n")).not.toMatch(/^coordinator: worker rank 9 joined/m);
      expect(await ask(hello(TOKEN, { ranks: 2 }))).toMatchObject({ type: "welcome", rank: 0, ranks: 2 });
      expect(t.coordinator.failed).toBeNull();
    } finally {
      await t.close();
    }
  });

  it("cuts a long log line to 300 characters with an ellipsis and the original length, and escapes control characters", () => {
    expect(capLine("short line")).toBe("short line");
    expect(capLine("x".repeat(1000))).toBe(`${"x".repeat(LOG_LINE_MAX)}… (1000 chars)`);
    expect(capLine("a\nb\r\u001b[2J")).toBe("a\\x0ab\\x0d\\x1b[2J");
    expect(capLine("\n".repeat(200))).toHaveLength(LOG_LINE_MAX + "… (200 chars)".length);
  });
});
