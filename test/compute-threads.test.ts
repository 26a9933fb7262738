// Compute threads (--threads): a convolution split over helper threads on a shared
// wasm memory gives the one-thread bits (layer level, on the built dist, whose
// helper script exists there), and whole runs with --threads 2 end on the same
// bytes as with --threads 1, through real worker processes and threads; bad
// values are refused before start.

import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "./helpers.js";

const dist = (p: string): string => new URL(`../dist/${p}`, import.meta.url).href;

describe("a convolution on compute threads", () => {
  it("gives y, dx, dW and db bit for bit as on one thread, for uneven splits of samples and rows, training and eval", async () => {
    // The built modules: a helper thread runs dist/worker/nn/kernels/compute-helper.js.
    const { setComputeThreads, computeThreads } = (await import(dist("worker/nn/kernels/threads.js"))) as typeof import("../worker/nn/kernels/threads.js");
    const { Conv2d } = (await import(dist("worker/nn/conv2d.js"))) as typeof import("../worker/nn/conv2d.js");
    const { Rng } = (await import(dist("shared/rng.js"))) as typeof import("../shared/rng.js");
    const shapes: [number, number, number, number, number, number, number][] = [
      [16, 16, 3, 1, 1, 12, 12], // resnet's 3×3
      [16, 32, 3, 2, 1, 14, 14], // stride 2
      [32, 64, 1, 2, 0, 8, 8], // 1×1 shortcut, stride 2
      [3, 6, 3, 1, 1, 5, 7], // cout = 6: row blocks of 4 split 1 + 1 over 3 threads, the last one short
    ];
    const bits = (a: Float32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("base64");
    const passes = (): string[][] =>
      shapes.map((sh) => {
        const conv = new Conv2d("conv", ...sh, new Rng(5), "wasm");
        const rng = new Rng(9);
        const out: string[] = [];
        for (const n of [5, 1, 3, 8]) {
          const x = new Float32Array(n * sh[0] * sh[5] * sh[6]).map(() => rng.normal());
          const y = conv.forward(x, n, true);
          const dy = new Float32Array(y.length).map(() => rng.normal());
          out.push(bits(y), bits(conv.backward(dy, n)), bits(conv.weight.grad), bits(conv.bias!.grad));
          out.push(bits(conv.forward(x.subarray(0, x.length - sh[0] * sh[5] * sh[6]), n - 1, false)));
        }
        return out;
      });
    expect(computeThreads()).toBe(1);
    const one = passes();
    setComputeThreads(3);
    expect(computeThreads()).toBe(3);
    const three = passes();
    expect(three).toEqual(one);
  });
});

describe("--threads", () => {
  async function train(threads: string, model: string, transport = "process"): Promise<{ out: string; stdout: string }> {
    const out = mkdtempSync(join(tmpdir(), `syncbn-threads-${threads}-`));
    const r = await runCli(
      ["train", "--workers", "1", "--batch", "8", "--model", model, "--steps", "6", "--train-size", "200", "--test-size", "50", "--threads", threads, "--transport", transport, "--out", out],
      { timeoutMs: 240_000 },
    );
    expect(r.code, r.stdout + r.stderr).toBe(0);
    return { out, stdout: r.stdout };
  }
  const weights = (dir: string): Buffer => readFileSync(join(dir, "weights.safetensors"));

  it.each(["cnn", "resnet:1"])("ends a %s run on the same bytes with 2 compute threads as with 1 (worker processes and worker threads)", async (model) => {
    const one = await train("1", model);
    const two = await train("2", model);
    expect(two.stdout).toMatch(/1 worker \(2 compute threads each\)/);
    expect(one.stdout).not.toMatch(/compute threads/);
    expect(weights(two.out).equals(weights(one.out))).toBe(true);
    const twoThreaded = await train("2", model, "thread");
    expect(weights(twoThreaded.out).equals(weights(one.out))).toBe(true);
  });

  it.each([
    ["0", /--threads must be an integer in 1\.\.64, got "0"/],
    ["many", /--threads must be an integer in 1\.\.64, got "many"/],
  ])("refuses --threads %s before start, in one line, exit 2", async (v, msg) => {
    const r = await runCli(["train", "--workers", "1", "--steps", "1", "--threads", v], { timeoutMs: 60_000 });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(msg);
    expect(r.stdout).not.toMatch(/syncbn train:/);
  });

  it("refuses a bad SYNCBN_THREADS in one line, exit 2", async () => {
    const r = await runCli(["train", "--workers", "1", "--steps", "1"], { timeoutMs: 60_000, env: { SYNCBN_THREADS: "0" } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/SYNCBN_THREADS must be an integer in 1\.\.64, got "0"/);
  });
});
