// `--transport thread` and `--wire tcp` against the default worker processes over
// WebSocket: the same coordinator logic over MessagePorts or raw TCP must give the
// same run, bit for bit.
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readCheckpoint, type Checkpoint } from "../worker/checkpoint.js";
import { runCli } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));

const RUN = ["train", "--model", "mlp", "--data", "synthetic", "--train-size", "512", "--test-size", "200", "--steps", "6", "--workers", "3", "--checksum-every", "2"];

/** Every float of a checkpoint, as the raw bits of its tensors, by name. */
function bitsByName(ck: Checkpoint): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  const bytes = (a: Float32Array | Float64Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  ck.params.forEach((p, i) => out.set(ck.header.params[i]!.name, bytes(p)));
  ck.momentum.forEach((m, i) => out.set(`momentum[${i}]`, bytes(m)));
  ck.bn.forEach((s, i) => {
    out.set(`${ck.header.bn[i]!.name}.runningMean`, bytes(s.mean));
    out.set(`${ck.header.bn[i]!.name}.runningVar`, bytes(s.var));
  });
  return out;
}

describe("--transport thread, --wire tcp and --pin-cpus", () => {
  it("train the same parameters, momentum and running stats, bit for bit, as unpinned worker processes over WebSocket", async () => {
    const dirs = { process: tmp("proc"), thread: tmp("thread"), tcp: tmp("tcp"), pinned: tmp("pinned") };
    const runs = await Promise.all([
      runCli([...RUN, "--out", dirs.process, "--transport", "process", "--pin-cpus", "off"], { timeoutMs: 90_000 }),
      // One rank per thread, as per process: packing ranks sums the monitor's losses in another order (weights stay bit-identical, ranks-per-proc.test.ts).
      runCli([...RUN, "--out", dirs.thread, "--transport", "thread", "--ranks-per-proc", "1"], { timeoutMs: 90_000 }),
      runCli([...RUN, "--out", dirs.tcp, "--wire", "tcp"], { timeoutMs: 90_000 }),
      ...(process.platform === "linux" ? [runCli([...RUN, "--out", dirs.pinned, "--pin-cpus", "on"], { timeoutMs: 90_000 })] : []),
    ]);
    for (const r of runs) expect(r.code, r.stderr).toBe(0);
    expect(runs[2]!.stdout).toMatch(/coordinator tcp:\/\/127\.0\.0\.1:\d+/);
    if (runs[3]) expect(runs[3].stdout).toMatch(/worker processes pinned to CPUs \d+, \d+, \d+ by rank/);
    const others = [dirs.thread, dirs.tcp, ...(runs[3] ? [dirs.pinned] : [])];
    const a = readCheckpoint(join(dirs.process, "checkpoint.bin"));
    const bitsA = bitsByName(a);
    const summary = (d: string): { finalTrainLoss: number; testAccuracy: number; testLoss: number } => JSON.parse(readFileSync(join(d, "summary.json"), "utf8"));
    for (const other of others) {
      const b = readCheckpoint(join(other, "checkpoint.bin"));
      expect(b.header).toEqual(a.header);
      const bitsB = bitsByName(b);
      expect([...bitsB.keys()]).toEqual([...bitsA.keys()]);
      for (const [name, bits] of bitsA) expect(Buffer.from(bitsB.get(name)!).equals(Buffer.from(bits)), `${name} differs in ${other}`).toBe(true);
      // The monitor saw the same run: same losses and eval results.
      expect(summary(other)).toMatchObject({
        finalTrainLoss: summary(dirs.process).finalTrainLoss,
        testAccuracy: summary(dirs.process).testAccuracy,
        testLoss: summary(dirs.process).testLoss,
      });
    }
  });

  it("refuses --wire and --pin-cpus on with --transport thread, saying why", async () => {
    const [wire, pin] = await Promise.all([
      runCli([...RUN, "--out", tmp("thread-wire"), "--transport", "thread", "--wire", "tcp"], { timeoutMs: 30_000 }),
      runCli([...RUN, "--out", tmp("thread-pin"), "--transport", "thread", "--pin-cpus", "on"], { timeoutMs: 30_000 }),
    ]);
    expect(wire.code).toBe(2);
    expect(wire.stderr).toMatch(/--wire applies to worker processes/);
    expect(pin.code).toBe(2);
    expect(pin.stderr).toMatch(/--pin-cpus pins worker processes/);
  });

  it("reports a failing worker thread by rank with its error, as it does a failing worker process", async () => {
    const out = tmp("thread-fail");
    // One sample per worker through local BN: every worker fails in its first forward (as PyTorch's BN does).
    const r = await runCli([...RUN, "--out", out, "--transport", "thread", "--ranks-per-proc", "1", "--model", "mlp", "--norm", "local", "--batch", "1"], { timeoutMs: 60_000 });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/worker rank \d exited with code 1/);
    expect(r.stderr).toMatch(/rank \d: syncbn: SYNCBN_ERR_SINGLE_VALUE: \[rank \d/);
  });

  it("uses the kernels SYNCBN_KERNELS names in worker threads too: js threads match js processes bit for bit", async () => {
    const cnn = ["train", "--model", "cnn", "--data", "synthetic", "--train-size", "64", "--test-size", "16", "--steps", "2", "--workers", "2", "--batch", "4"];
    const dirs = { procJs: tmp("k-proc-js"), threadJs: tmp("k-thread-js"), threadWasm: tmp("k-thread-wasm") };
    const runs = await Promise.all([
      runCli([...cnn, "--out", dirs.procJs, "--transport", "process"], { timeoutMs: 90_000, env: { SYNCBN_KERNELS: "js" } }),
      runCli([...cnn, "--out", dirs.threadJs, "--transport", "thread"], { timeoutMs: 90_000, env: { SYNCBN_KERNELS: "js" } }),
      runCli([...cnn, "--out", dirs.threadWasm, "--transport", "thread"], { timeoutMs: 90_000, env: { SYNCBN_KERNELS: "wasm" } }),
    ]);
    for (const r of runs) expect(r.code, r.stderr).toBe(0);
    const weights = (d: string): Buffer => readFileSync(join(d, "weights.safetensors"));
    expect(weights(dirs.threadJs).equals(weights(dirs.procJs)), "js threads differ from js processes").toBe(true);
    // The two backends round differently on this run, so a thread that ignored the setting would be seen.
    expect(weights(dirs.threadWasm).equals(weights(dirs.threadJs)), "wasm and js threads ended bit-identical").toBe(false);
  });
});
