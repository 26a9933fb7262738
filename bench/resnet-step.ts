// resnet:3 step times through the real CLI on Fashion-MNIST-shaped input
// (synthetic 1×28×28): 4 workers × 8 with --norm sync and --norm local
// (ms/step, median of the summary), and 1 worker × 32 (samples/s). Prints a
// markdown table; `node dist/bench/resnet-step.js [--steps N]`. Not a test: no
// assertion on time; numbers on a shared machine move with its load.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const CLI = resolve(dirname(fileURLToPath(import.meta.url)), "..", "cli", "main.js");
const stepsAt = process.argv.indexOf("--steps");
const steps = stepsAt > 0 ? Number(process.argv[stepsAt + 1]) : 30;

interface Summary {
  msPerStep: number;
  syncWaitMsPerStep: number;
  samplesPerSecond: number;
}

function run(workers: number, batch: number, norm: string): Summary {
  const out = mkdtempSync(join(tmpdir(), "syncbn-resnet-bench-"));
  execFileSync(process.execPath, [
    CLI, "train", "--model", "resnet:3", "--workers", String(workers), "--batch", String(batch), "--norm", norm,
    "--steps", String(steps), "--train-size", String(Math.max(2000, steps * workers * batch)), "--test-size", "16", "--out", out,
  ], { stdio: "ignore" });
  return JSON.parse(readFileSync(join(out, "summary.json"), "utf8")) as Summary;
}

const load = (): string => loadavg().map((v) => v.toFixed(2)).join(" / ");
const before = load();
const sync = run(4, 8, "sync");
const local = run(4, 8, "local");
const single = run(1, 32, "sync");
console.log([
  `resnet:3 on 1×28×28, ${steps} steps, medians from summary.json (first 5 steps excluded); load ${before} before, ${load()} after.`,
  "",
  "| run | ms/step | of which sync wait | samples/s |",
  "|---|---|---|---|",
  `| 4 workers × 8, --norm sync | ${sync.msPerStep.toFixed(1)} | ${sync.syncWaitMsPerStep.toFixed(1)} | ${sync.samplesPerSecond.toFixed(0)} |`,
  `| 4 workers × 8, --norm local | ${local.msPerStep.toFixed(1)} | ${local.syncWaitMsPerStep.toFixed(1)} | ${local.samplesPerSecond.toFixed(0)} |`,
  `| 1 worker × 32 | ${single.msPerStep.toFixed(1)} | – | ${single.samplesPerSecond.toFixed(0)} |`,
  "",
  `sync/local = ${(sync.msPerStep / local.msPerStep).toFixed(2)}×`,
].join("\n"));
