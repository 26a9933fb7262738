#!/usr/bin/env node
// The `syncbn` command line: parses process.argv with the command tree of
// program.ts, which hands off to the command modules. No training or protocol
// logic here; every error is printed as one line with its code, and the exit code
// says what kind it was (below).

import "./gc.js"; // first: V8 flags before the other modules load
import { CommanderError } from "commander";
import { ErrorCode, isSyncbnError } from "../shared/errors.js";
import { readEnv } from "./env.js";
import { setKernelBackend } from "../worker/nn/kernels/backend.js";
import { disableNative, nativeKernels } from "../worker/nn/kernels/native.js";
import { setComputeThreads } from "../worker/nn/kernels/threads.js";
import { buildProgram } from "./program.js";

// SYNCBN_KERNELS=js|wasm|native picks the conv/linear kernels (train, sweep and worker resolve it with --kernels,
// cli/kernels.ts; the launcher hands its choice to its workers). SYNCBN_NATIVE=off: as if the addon were not built.
// SYNCBN_THREADS=N gives this process N compute threads (the launcher sets it per worker from --threads).
try {
  const { kernels, threads, nativeOff } = readEnv();
  if (nativeOff) disableNative("SYNCBN_NATIVE=off");
  if (kernels) setKernelBackend(kernels);
  if (threads) setComputeThreads(threads);
  // A gradient round's megabyte messages reuse freed memory instead of faulting in fresh pages on every
  // receive (native/addon.cc TuneAllocator; about 2× faster steps on worker processes). SYNCBN_MALLOC=default: glibc's.
  if (!nativeOff && process.env.SYNCBN_MALLOC !== "default") nativeKernels()?.tuneAllocator?.();
} catch (e) {
  console.error(`syncbn: ${(e as Error).message}`);
  process.exit(2);
}

const program = buildProgram();

/** The subcommand named on the command line, for the "see --help" hint. */
function commandOf(argv: readonly string[]): string {
  const name = argv.slice(2).find((a) => !a.startsWith("-"));
  return program.commands.some((c) => c.name() === name) ? `syncbn ${name}` : "syncbn";
}

/** Commander's message as one line that says what was wrong and where the usage is. */
function usageLine(e: CommanderError): string {
  const text = e.message.replace(/^error: /, "").replace(/\s*\n\s*/g, " ").trim();
  // "option '--lr <x>' argument 'abc' is invalid. --lr must be …": our parsers' reasons name the flag and value already.
  const invalid = /^option '(-\S+?)(?:, (-\S+))?(?: <[^>]*>)?' argument '(.*)' is invalid\. (.*)$/s.exec(text);
  let what = text;
  if (invalid) {
    const [, first, second, value, reason] = invalid;
    const flag = second ?? first!;
    what = reason!.startsWith(flag) || reason!.startsWith("--") ? reason! : `${flag} "${value}" is invalid: ${reason!.replace(/\.$/, "").replace(/^Allowed/, "allowed")}`;
  }
  return `${ErrorCode.BadConfig}: ${what.replace(/\.$/, "")}; see ${commandOf(process.argv)} --help`;
}

// Exit codes: 0 ok, 1 the run failed, 2 bad usage or configuration (found before anything started), 130 interrupted.
program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof CommanderError) {
    // --help and --version end here with exit code 0; "syncbn" alone prints the help and exits 2.
    if (e.exitCode !== 0 && e.code !== "commander.help") console.error(`syncbn: ${usageLine(e)}`);
    process.exitCode = e.exitCode === 0 ? 0 : 2;
  } else if (isSyncbnError(e)) {
    console.error(`syncbn: ${e.message}`);
    process.exitCode = e.code === ErrorCode.BadConfig || e.beforeStart ? 2 : 1;
  } else {
    console.error(`syncbn: ${(e as Error).stack ?? String(e)}`);
    process.exitCode = 1;
  }
});
