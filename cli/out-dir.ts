// The --out check every command runs before anything starts: the folder exists or
// can be created, is a folder, and takes a new file (a probe written and removed).
// A refusal is one BadConfig line (exit 2). Not where outputs are written, nor the
// check during the run that the folder is still there (worker/out-folder.ts).

import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, statSync, unlinkSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { reasonOf } from "../worker/atomic-file.js";
import { folderIdentity, type FolderIdentity } from "../worker/out-folder.js";

/**
 * Creates `dir` if missing and proves it writable; throws a one-line BadConfig
 * error naming `flag` otherwise. Returns the folder's identity, which the run's
 * writes check (worker/out-folder.ts).
 */
export function prepareOutDir(dir: string, flag = "--out"): FolderIdentity {
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
  const failed = probeWrite(dir);
  if (failed) bad(`is not writable (${reasonOf(failed)})`);
  return folderIdentity(dir);
}

/**
 * What prepareOutDir would refuse, found without creating anything (a probe file
 * is written and removed in the nearest folder that exists): for the checks made
 * before a coordinator listens, when the folder itself is created only later.
 */
export function checkOutDir(dir: string, flag = "--out"): void {
  const bad = (what: string): never => {
    throw new SyncbnError(ErrorCode.BadConfig, `${flag} ${dir} ${what}; choose a writable folder`);
  };
  const target = resolve(dir);
  let d = target;
  while (!existsSync(d) && dirname(d) !== d) d = dirname(d);
  if (!isFolder(d)) bad(d === target ? "is a file, not a folder" : `cannot be created (${d} is a file, not a folder)`);
  const failed = probeWrite(d);
  if (failed) bad(d === target ? `is not writable (${reasonOf(failed)})` : `cannot be created (${reasonOf(failed)})`);
}

/** The error of writing a new file in `dir` (null: it took one, now removed). */
function probeWrite(dir: string): unknown {
  // access(W_OK) says yes to root on a folder without write bits; only a real file says yes or no.
  // pid and random bytes: workers on several hosts may share the folder, and their pids may be equal.
  const probe = join(dir, `.syncbn-write-test-${process.pid}-${randomBytes(4).toString("hex")}`);
  try {
    closeSync(openSync(probe, "wx"));
    unlinkSync(probe);
    return null;
  } catch (e) {
    return e;
  }
}

/**
 * mkdir -p one level at a time: a recursive mkdir on a read-only mount reports
 * ENOENT, this the real EROFS. Workers of one run create the same folder at the
 * same moment: a level another process made in between is success, a file there is not.
 */
function makeFolders(dir: string): void {
  const missing: string[] = [];
  for (let d = resolve(dir); !existsSync(d); d = dirname(d)) missing.unshift(d);
  for (const d of missing) {
    try {
      mkdirSync(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST" || !isFolder(d)) throw e;
    }
  }
}

function isFolder(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}
