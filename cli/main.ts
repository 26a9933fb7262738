#!/usr/bin/env node
// The `syncbn` command line: parses flags (commander) and hands off to the
// command modules. No training or protocol logic here; errors are printed as one
// line with their code and the process exits non-zero.

import { Command } from "commander";
import { intArg } from "./commands.js";
import { ErrorCode, isSyncbnError } from "../shared/errors.js";
import { runConformance } from "./conformance.js";
import { registerTrainCommands } from "./commands.js";
import { readEnv } from "./env.js";
import { setKernelBackend } from "../worker/nn/kernels/backend.js";
import { registerSweepCommand } from "./sweep.js";


// SYNCBN_KERNELS=js|wasm picks the conv/linear kernels; worker processes inherit it.
try {
  const kernels = readEnv().kernels;
  if (kernels) setKernelBackend(kernels);
} catch (e) {
  console.error(`syncbn: ${(e as Error).message}`);
  process.exit(2);
}

const program = new Command();
program
  .name("syncbn")
  .description("Data-parallel training with synchronized batch normalization over a WebSocket coordinator")
  .showHelpAfterError("(run syncbn <command> --help for usage)");

registerTrainCommands(program);
registerSweepCommand(program);

program
  .command("conformance")
  .description("run PyTorch-computed sync-BN cases through a real coordinator and worker processes")
  .argument("<dir>", "folder of case *.json files (e.g. ../shared/conformance/cases)")
  .option("--dump <out>", "write what was computed to OUT/<name>.json")
  .option("--timeout <ms>", "deadline per case and per round", intArg("--timeout", 1), 60_000)
  .action(async (dir: string, o: { dump?: string; timeout: number }) => {
    const { failed } = await runConformance(dir, { dump: o.dump, timeoutMs: o.timeout, print: (l) => console.log(l) });
    process.exitCode = failed > 0 ? 1 : 0;
  });

// Exit codes: 0 ok, 1 the run failed, 2 bad usage or configuration.
program.parseAsync(process.argv).catch((e: unknown) => {
  if (isSyncbnError(e)) {
    console.error(`syncbn: ${e.message}`);
    process.exitCode = e.code === ErrorCode.BadConfig || e.beforeStart ? 2 : 1;
  } else {
    console.error(`syncbn: ${(e as Error).stack ?? String(e)}`);
    process.exitCode = 1;
  }
});
