// The --out check every command runs before anything starts: the folder exists or
// can be created, is a folder, and takes a new file (a probe written and removed).
// A refusal is one BadConfig line (exit 2). Not where outputs are written.

import { closeSync, existsSync, mkdirSync, openSync, statSync, unlinkSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { reasonOf } from "../worker/atomic-file.js";

/** Creates `dir` if missing and proves it writable; throws a one-line BadConfig error naming `flag` otherwise. */
export function prepareOutDir(dir: string, flag = "--out"): void {
  const bad = (what: string): never => {
    throw new SyncbnError(ErrorCode.BadConfig, `${flag} ${dir} ${what}; choose a writable folder`);
  };
  try {
    if (!statSync(dir).isDirectory()) bad("is a file, not a folder");
  } catch (e) {
    if (e instanceof SyncbnError) throw e;
    try {
      makeFolders(dir);
    } catch (e2) {
      bad(`cannot be created (${reasonOf(e2)})`);
    }
  }
  // access(W_OK) says yes to root on a folder without write bits; only a real file says yes or no.
  const probe = join(dir, `.syncbn-write-test-${process.pid}`);
  try {
    closeSync(openSync(probe, "wx"));
    unlinkSync(probe);
  } catch (e) {
    bad(`is not writable (${reasonOf(e)})`);
  }
}

/** mkdir -p one level at a time: a recursive mkdir on a read-only mount reports ENOENT, this the real EROFS. */
function makeFolders(dir: string): void {
  const missing: string[] = [];
  for (let d = resolve(dir); !existsSync(d); d = dirname(d)) missing.unshift(d);
  for (const d of missing) mkdirSync(d);
}
