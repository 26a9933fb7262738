// A run's output folder as it was when the run prepared it: its identity (device,
// inode, creation time), and the check made before every write into it, so that a folder
// deleted (rm -rf) or replaced during a run stops the run with SYNCBN_ERR_OUTPUT
// instead of a partial metrics.jsonl or a checkpoint landing in whatever now has
// that name. Not the creation check (cli/out-dir.ts), not the writes themselves.

import { statSync } from "node:fs";
import { ErrorCode, SyncbnError, type ErrorContext } from "../shared/errors.js";

export interface FolderIdentity {
  dir: string;
  // bigint: an inode number may exceed 2^53 on some file systems.
  dev: bigint;
  ino: bigint;
  /** Creation time, ns (0 where the file system keeps none): a folder deleted and made again often gets the same inode number. */
  born: bigint;
}

/** The identity of `dir` now; throws the Node error (ENOENT, …) when it cannot be read. */
export function folderIdentity(dir: string): FolderIdentity {
  const st = statSync(dir, { bigint: true });
  return { dir, dev: st.dev, ino: st.ino, born: st.birthtimeNs };
}

/** Throws SYNCBN_ERR_OUTPUT naming the folder unless `id.dir` is still the folder it was when `id` was taken. */
export function checkFolderStill(id: FolderIdentity, context: ErrorContext = {}): void {
  let now: FolderIdentity | null = null;
  try {
    now = folderIdentity(id.dir);
  } catch {
    // gone (ENOENT), or a parent replaced by a file (ENOTDIR): either way not the run's folder
  }
  if (now && now.dev === id.dev && now.ino === id.ino && now.born === id.born) return;
  const what = now ? "another folder now has its name" : "it no longer exists";
  throw new SyncbnError(
    ErrorCode.Output,
    `the output folder ${id.dir} was deleted or replaced during the run (${what}); nothing more is written there and the run stops; resume from a checkpoint kept elsewhere, or start again`,
    context,
  );
}
