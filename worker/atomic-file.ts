// Replacing a file so that a reader sees the old one or the whole new one, never
// a part of it: a temp file beside it, every write's byte count checked (writeSync
// may write fewer bytes than asked on a full disk), fsync, rename, fsync of the
// folder. Checkpoints, weights.safetensors and summary.json go through it.
// Not for appends (metrics.jsonl lines are appended in place).

import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { dirname } from "node:path";

/**
 * Writes `bytes` to `path` atomically. On any failure the temp file is removed,
 * the previous file at `path` is left as it was, and the error (a Node error with
 * its code, e.g. ENOSPC) is thrown for the caller to word. midWrite (fault
 * injection in tests) runs after half the bytes.
 */
export function writeFileAtomic(path: string, bytes: Uint8Array, midWrite?: () => void): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    const fd = openSync(tmp, "w");
    try {
      const half = bytes.length >> 1;
      writeAll(fd, bytes, 0, half);
      midWrite?.();
      writeAll(fd, bytes, half, bytes.length);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      // not created, or already renamed
    }
    throw e;
  }
  syncFolder(dirname(path));
}

/** Writes bytes[from, to) whole: loop on short writes until done or an error. */
function writeAll(fd: number, bytes: Uint8Array, from: number, to: number): void {
  let at = from;
  while (at < to) {
    const n = writeSync(fd, bytes, at, to - at);
    if (n <= 0) throw new Error(`short write: ${at - from} of ${to - from} bytes written (disk full?)`);
    at += n;
  }
}

/** fsync of the folder, so the rename itself survives a crash. Filesystems that cannot fsync a folder (EINVAL) are let be. */
function syncFolder(dir: string): void {
  let fd: number | null = null;
  try {
    fd = openSync(dir, "r");
    fsyncSync(fd);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "EINVAL" && code !== "ENOTSUP" && code !== "EISDIR") {
      throw new Error(`written, but its folder could not be synced to disk (${reasonOf(e)})`);
    }
  } finally {
    if (fd !== null) closeSync(fd);
  }
}

/** "ENOSPC: no space left on device" from a Node error, or its message. */
export function reasonOf(e: unknown): string {
  const message = (e as Error | undefined)?.message ?? String(e);
  const m = /^(E[A-Z]+): ([^,]*)/.exec(message);
  return m ? `${m[1]}: ${m[2]}` : message;
}
