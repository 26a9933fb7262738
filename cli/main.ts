#!/usr/bin/env node
// The `syncbn` command line: parses flags (commander) and hands off to the
// command modules. No training or protocol logic here; every error is printed as
// one line with its code, and the exit code says what kind it was (below).

import { readFileSync } from "node:fs";
import { Command, CommanderError, Option } from "commander";
import { ErrorCode, isSyncbnError } from "../shared/errors.js";
import { runConformance } from "./conformance.js";
import { registerTrainCommands } from "./commands.js";
import { readEnv } from "./env.js";
import { setKernelBackend } from "../worker/nn/kernels/backend.js";
import { disableNative } from "../worker/nn/kernels/native.js";
import { setComputeThreads } from "../worker/nn/kernels/threads.js";
import { registerSweepCommand } from "./sweep-flags.js";
import { registerLaunchCommand } from "./launch.js";
import { MAX_TIMER_MS, MAX_WORKERS, MIN_TIMEOUT_MS, intArg } from "./flags.js";


// SYNCBN_KERNELS=js|wasm|native picks the conv/linear kernels (train, sweep and worker resolve it with --kernels,
// cli/kernels.ts; the launcher hands its choice to its workers). SYNCBN_NATIVE=off: as if the addon were not built.
// SYNCBN_THREADS=N gives this process N compute threads (the launcher sets it per worker from --threads).
try {
  const { kernels, threads, nativeOff } = readEnv();
  if (nativeOff) disableNative("SYNCBN_NATIVE=off");
  if (kernels) setKernelBackend(kernels);
  if (threads) setComputeThreads(threads);
} catch (e) {
  console.error(`syncbn: ${(e as Error).message}`);
  process.exit(2);
}

const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };

const program = new Command();
program
  .name("syncbn")
  .description("Data-parallel training with synchronized batch normalization over a WebSocket coordinator")
  .version(pkg.version, "-V, --version", "print the syncbn version")
  // Parse errors become one line and exit 2 in the catch below (the settings copy to every subcommand made after this).
  .exitOverride()
  .configureOutput({ outputError: () => {} });

registerTrainCommands(program);
registerSweepCommand(program);
registerLaunchCommand(program);

program
  .command("conformance")
  .description("run PyTorch-computed sync-BN cases through a real coordinator and worker processes")
  .argument("<dir...>", "folders of case *.json files (the repository's: test/fixtures/conformance)")
  .option("--dump <out>", "write what was computed to OUT/<name>.json")
  .option("--timeout <ms>", `deadline per case and per round (${MIN_TIMEOUT_MS}..${MAX_TIMER_MS})`, intArg("--timeout", MIN_TIMEOUT_MS, MAX_TIMER_MS), 60_000)
  .option("--ranks-per-proc <R>", "pack each case's W ranks R to a worker process (all W in one when a block's slices differ)", intArg("--ranks-per-proc", 1, MAX_WORKERS), 1)
  .addOption(new Option("--workers-lang <lang>", "run the cases on the TypeScript workers, or on python/syncbn's SyncBatchNorm in PyTorch (one process per rank, tcp wire)").choices(["ts", "python"]).default("ts"))
  .option("--python <path>", "the Python interpreter with torch, for --workers-lang python", "python3")
  .action(async (dirs: string[], o: { dump?: string; timeout: number; ranksPerProc: number; workersLang: "ts" | "python"; python: string }) => {
    const { failed } = await runConformance(dirs, { dump: o.dump, timeoutMs: o.timeout, ranksPerProc: o.ranksPerProc, workersLang: o.workersLang, python: o.python, print: (l) => console.log(l) });
    process.exitCode = failed > 0 ? 1 : 0;
  });

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
