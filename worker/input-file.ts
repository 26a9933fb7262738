// Reading the untrusted files a run is given (IDX data, safetensors, ONNX models,
// checkpoints) with a bound: only a regular file (symlinks followed) is read, and
// only when its size is within the caller's limit, checked before anything is
// allocated. Not a parser: callers check the bytes and word the refusals.

import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from "node:fs";

/** The largest safetensors, ONNX or checkpoint file syncbn reads (1 GiB). */
export const MAX_MODEL_FILE_BYTES = 2 ** 30;

/** A file refused for what it is (not a regular file, too big); `reason` reads after "PATH: ". */
export class InputFileError extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

function kindOf(st: Stats): string {
  if (st.isDirectory()) return "a directory";
  if (st.isFIFO()) return "a FIFO";
  if (st.isCharacterDevice()) return "a character device";
  if (st.isBlockDevice()) return "a block device";
  if (st.isSocket()) return "a socket";
  return "not a regular file";
}

/**
 * The whole file at path, at most maxBytes of it. Opened non-blocking, so a FIFO
 * without a writer is refused at once instead of hanging the open; fstat on the
 * open descriptor (not stat on the path) so a file swapped in between cannot slip
 * past. A file that shrinks while read comes back short (its parser says truncated).
 * Throws InputFileError for a non-regular or too-large file, the fs error otherwise.
 */
export function readInputFile(path: string, maxBytes: number): Buffer {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new InputFileError(`${kindOf(st)}, not a regular file; give a file`);
    if (st.size > maxBytes) throw new InputFileError(`${st.size} bytes, over the limit of ${maxBytes} bytes for this file`);
    const buf = Buffer.allocUnsafe(st.size);
    let at = 0;
    while (at < st.size) {
      const n = readSync(fd, buf, at, st.size - at, at);
      if (n === 0) break;
      at += n;
    }
    return at === st.size ? buf : buf.subarray(0, at);
  } finally {
    closeSync(fd);
  }
}
