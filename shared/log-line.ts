// The one helper every coordinator log line goes through: at most LOG_LINE_MAX
// characters, control characters escaped, so text a peer sent (a hello's fields
// end up in refusal messages) can neither flood the log nor forge lines in it.
// Not a logger: callers still write the line wherever they write.

/** Longest log line in characters, before the "… (N chars)" tail. */
export const LOG_LINE_MAX = 300;

/** `line` with control characters escaped, cut to `max` characters plus "… (N chars)" (N: the length of `line`) when longer. */
export function capLine(line: string, max = LOG_LINE_MAX): string {
  // Escaped before the cut, so the cut line is what gets written.
  const visible = line.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
  return visible.length <= max ? visible : `${visible.slice(0, max)}… (${line.length} chars)`;
}
