// The `syncbn` command tree (commander): every command with its flags and
// action, built without parsing anything. main.ts parses process.argv with it;
// test/docs-commands.test.ts parses the documented commands with the actions
// swapped out. Not the place for env reading or exit codes (main.ts).

import { Command, Option } from "commander";
import { runConformance } from "./conformance.js";
import { registerTrainCommands } from "./commands.js";
import { registerSweepCommand } from "./sweep-flags.js";
import { registerLaunchCommand } from "./launch.js";
import { MAX_TIMER_MS, MAX_WORKERS, MIN_TIMEOUT_MS, intArg } from "./flags.js";
import { syncbnVersion } from "./run-record.js";

/** The program: parse errors throw a CommanderError (exitOverride) and print nothing of their own. */
export function buildProgram(): Command {
  const program = new Command();
  program
    .name("syncbn")
    .description("Data-parallel training with synchronized batch normalization over a WebSocket coordinator")
    .version(syncbnVersion(), "-V, --version", "print the syncbn version")
    // Parse errors become one line and exit 2 in main.ts (the settings copy to every subcommand made after this).
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
  return program;
}
