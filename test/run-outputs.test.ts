// What a newcomer sees and gets from real `syncbn` processes: where the outputs
// go (also for a coordinator and workers started by hand without --out), the
// settings recorded with them, the progress line on an 80-column terminal, eval
// progress, help wording, and a prompt exit after the summary.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CLI, nativeInRuns, runCli, startCli, waitForOutput } from "./helpers.js";

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), `syncbn-${p}-`));
const SMALL = ["--model", "mlp", "--data", "synthetic", "--train-size", "1024", "--test-size", "200"];

describe("a run's outputs and its end", () => {
  it("exits within 2 s of printing its summary, and its last line says where the outputs went", async () => {
    const out = tmp("exit");
    const run = startCli(["train", "--workers", "2", "--batch", "4", "--steps", "8", "--lr", "0.07", "--seed", "5", "--out", out, ...SMALL], { timeoutMs: 90_000 });
    let summaryAt: number | null = null;
    run.child.stdout!.on("data", () => {
      if (summaryAt === null && /^done: /m.test(run.stdout())) summaryAt = Date.now();
    });
    const r = await run.done;
    const exitedAt = Date.now();
    expect(r.code, r.stderr).toBe(0);
    expect(summaryAt).not.toBeNull();
    // Before the fix a 5 s settle timer held every finished run open after its summary.
    expect(exitedAt - summaryAt!).toBeLessThan(2000);
    const lines = r.stdout.trim().split("\n");
    expect(lines[lines.length - 1]).toBe(`outputs: ${out} (weights.safetensors, checkpoint.bin, metrics.jsonl, summary.json)`);
    expect(r.stdout).toMatch(/done: mlp, --norm sync, 2 workers × 4 samples \(global batch 8\), 8 steps/);
  });

  it("records every setting, the exact command line and the versions in summary.json and the first metrics.jsonl line", async () => {
    const out = tmp("record");
    const args = ["train", "--workers", "2", "--batch", "4", "--steps", "3", "--lr", "0.07", "--momentum", "0.8", "--weight-decay", "0.001", "--seed", "5", "--norm", "local", "--threads", "1", "--out", out, ...SMALL];
    const r = await runCli(args, { env: { SYNCBN_TOKEN: "never-recorded" } });
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as Record<string, unknown>;
    const first = JSON.parse(readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n")[0]!) as Record<string, unknown>;
    for (const record of [summary, first]) {
      expect(record.settings).toMatchObject({ lr: 0.07, momentum: 0.8, weightDecay: 0.001, seed: 5, norm: "local", model: "mlp", data: "synthetic", batch: 4, steps: 3, bnEps: 1e-5, workers: 2, ranksPerProcess: 1, threads: 1, kernels: nativeInRuns() ? "native" : "wasm" });
      expect(record.command).toBe(`syncbn ${args.join(" ")}`);
      expect(record.versions).toEqual({ syncbn: expect.stringMatching(/^\d+\.\d+\.\d+/), node: process.version });
    }
    expect(first.type).toBe("start");
    expect(readFileSync(join(out, "summary.json"), "utf8")).not.toMatch(/never-recorded/);
  });

  it("saves weights, checkpoint, metrics and summary in one runs/<time> folder when a coordinator and workers are started by hand without --out", async () => {
    const cwd = tmp("by-hand");
    const coord = startCli(["coordinator", "--world", "2", "--port", "0", "--token", "s3cret"], { cwd, timeoutMs: 90_000 });
    try {
      await waitForOutput(coord, (o) => /listening on ws:\/\/\S+/.test(o), 15_000);
      const url = /listening on (ws:\/\/\S+)/.exec(coord.stdout())![1]!;
      expect(coord.stdout()).toMatch(/; output in runs\/\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\n/);
      const worker = (rank: number): Promise<{ code: number | null; stdout: string; stderr: string }> =>
        runCli(["worker", "--coordinator", url, "--rank", String(rank), "--world", "2", "--token", "s3cret", "--steps", "50", ...SMALL], { cwd, timeoutMs: 90_000 });
      const [w0, w1] = await Promise.all([worker(0), worker(1)]);
      const c = await coord.done;
      for (const r of [c, w0, w1]) expect(r.code, r.stderr).toBe(0);
      const runs = readdirSync(join(cwd, "runs"));
      expect(runs).toHaveLength(1);
      const dir = join(cwd, "runs", runs[0]!);
      for (const f of ["weights.safetensors", "checkpoint.bin", "metrics.jsonl", "summary.json"]) expect(existsSync(join(dir, f)), f).toBe(true);
      const outputs = `outputs: runs/${runs[0]} (weights.safetensors, checkpoint.bin, metrics.jsonl, summary.json)`;
      expect(c.stdout.trim().split("\n").pop()).toBe(outputs);
      // Rank 0 shows the run (progress and eval lines) and says where it wrote; rank 1 says it wrote nothing.
      expect(w0.stdout).toMatch(/^step 50\/50 epoch 1\/1 · loss \(avg 20 steps\) \d\.\d{4} /m);
      expect(w0.stdout).toMatch(/^eval after step 50 \(epoch 1\): test accuracy/m);
      expect(w0.stdout.trim().split("\n").pop()).toMatch(/^outputs: .*runs\/\S+ \(weights\.safetensors, checkpoint\.bin/);
      expect(w1.stdout.trim()).toBe("outputs: none from this worker (rank 0 writes weights.safetensors and checkpoint.bin)");
      const summary = JSON.parse(readFileSync(join(dir, "summary.json"), "utf8")) as Record<string, unknown>;
      expect(summary.command).toBe("syncbn coordinator --world 2 --port 0 --token ***");
      expect(summary.settings).toMatchObject({ lr: 0.05, steps: 50, model: "mlp", norm: "sync" });
    } finally {
      coord.child.kill("SIGKILL");
    }
  });
});

/** Runs the CLI on a pseudo-terminal of `cols` columns (util-linux `script`); null where there is none. */
function onTerminal(args: string[], cols: number, cwd: string): Promise<{ code: number | null; output: string }> | null {
  if (!existsSync("/usr/bin/script")) return null;
  const quoted = [process.execPath, CLI, ...args].map((a) => `'${a}'`).join(" ");
  const env = { ...process.env };
  delete env.CI;
  const child = spawn("/usr/bin/script", ["-qfec", `stty cols ${cols} rows 40; exec ${quoted}`, "/dev/null"], { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr.on("data", (d: Buffer) => (output += d.toString()));
  return new Promise((resolve) => child.on("exit", (code) => resolve({ code, output })));
}

describe("on a terminal", () => {
  it("keeps the progress line within 80 columns, updates it in place, and shows evaluation progress", async (ctx) => {
    const out = tmp("tty");
    const run = onTerminal(["train", "--workers", "2", "--batch", "4", "--steps", "30", "--eval-every", "10", "--out", out, "--model", "mlp", "--train-size", "1024", "--test-size", "2000", "--eval-batch", "100"], 80, out);
    if (!run) return ctx.skip("no /usr/bin/script to give the run a terminal");
    const { code, output } = await run;
    expect(code, output).toBe(0);
    const plain = output.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
    // Every piece a terminal shows on one row, between carriage returns and newlines, fits in 80 columns.
    const rows = plain.split(/\r\n|\n|\r/).filter((l) => /^(\[[#.]+\] )?step \d+\/30/.test(l));
    expect(rows.length).toBeGreaterThan(0);
    for (const row of rows) expect(row.length, row).toBeLessThan(80);
    // In place: 30 steps do not leave 30 lines; each update starts with \r.
    const newlineEnded = plain.split("\n").filter((l) => /step \d+\/30/.test(l.split("\r").pop() ?? ""));
    expect(newlineEnded.length).toBeLessThanOrEqual(1);
    expect(output).toMatch(/\rstep \d+\/30|\r\[[#.]+\] step \d+\/30/);
    expect(plain).toMatch(/eval after step 10: \d+\/2000 test samples/);
    expect(plain).toMatch(/eval after step 30 \(epoch 1\): test accuracy/);
  });
});

describe("help", () => {
  it("names PATH.onnx for --model and every output file for --out", async () => {
    const train = await runCli(["train", "--help"]);
    expect(train.code).toBe(0);
    const flat = train.stdout.replace(/\s+/g, " ");
    expect(flat).toMatch(/--model <kind> mlp \| cnn \| resnet:N \(resnet:3 = ResNet-20\) \| PATH\.onnx/);
    expect(flat).toMatch(/--out <dir> folder for weights\.safetensors, checkpoint\.bin, metrics\.jsonl and summary\.json/);
    const worker = await runCli(["worker", "--help"]);
    expect(worker.stdout.replace(/\s+/g, " ")).toMatch(/--out <dir> folder for weights\.safetensors and checkpoint\.bin \(rank 0 writes them; default: the coordinator's folder when it runs on this host, else runs\/<time>\)/);
  });
});
