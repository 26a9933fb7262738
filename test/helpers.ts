// Test helpers: run the built CLI as a real child process with a deadline, and
// find the conformance case folders (the repository's own, and any extra ones
// beside it). Tests run against dist/ (npm test builds first).

import { nativeKernels } from "../worker/nn/kernels/native.js";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { dirname, join, resolve } from "node:path";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const CLI = join(ROOT, "dist", "cli", "main.js");
/** PyTorch-computed cases committed in the repository (scripts/make-conformance-cases.py). */
export const FIXTURE_CASES = join(ROOT, "test", "fixtures", "conformance");
/** Extra cases of the same format beside the repository, when someone put them there; never required. */
export const EXTRA_CASES = resolve(ROOT, "..", "shared", "conformance", "cases");

if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" (npm test does it) before the tests`);

/**
 * A fresh temporary folder, e.g. the working directory of a coordinator started
 * without --out, whose default runs/<time> folder must not land in the repository.
 */
export function scratchDir(label: string): string {
  return mkdtempSync(join(tmpdir(), `syncbn-${label}-`));
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunningCli {
  child: ChildProcess;
  done: Promise<CliResult>;
  stdout(): string;
  stderr(): string;
}

export function startCli(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): RunningCli {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, CI: "true", ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const done = new Promise<CliResult>((resolvePromise) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      // let the pipes drain
      setImmediate(() => resolvePromise({ code, signal, stdout: out, stderr: err }));
    });
  });
  return { child, done, stdout: () => out, stderr: () => err };
}

export function runCli(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<CliResult> {
  return startCli(args, opts).done;
}

/** Resolves when the predicate holds on the process's output, or rejects at the deadline. */
export async function waitForOutput(p: RunningCli, pred: (out: string) => boolean, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!pred(p.stdout() + p.stderr())) {
    if (Date.now() > until) throw new Error(`output did not match within ${timeoutMs} ms:\n${p.stdout()}\n${p.stderr()}`);
    if (p.child.exitCode !== null) throw new Error(`process exited (${p.child.exitCode}) before output matched:\n${p.stdout()}\n${p.stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Whether the `syncbn` processes tests start load the native addon: built, and not turned off (SYNCBN_NATIVE=off) for them. */
export function nativeInRuns(): boolean {
  return process.env.SYNCBN_NATIVE !== "off" && nativeKernels() !== null;
}
