// The one-line progress display of a run: fitting its fields to the terminal's
// width (dropping or shortening the least useful first), writing it in place on a
// TTY and every N steps in a plain log, and the eval progress line. Formatting and
// pacing only: what the numbers mean is the monitor's (cli/monitor.ts).

/** "1 step", "2 steps": every count the CLI prints goes through this. */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * One field of the progress line. `keep`: lower is kept longer when the line is too
 * wide (the step is 0 and never dropped); `short`: a narrower form tried before
 * the field is dropped.
 */
export interface ProgressField {
  text: string;
  short?: string;
  keep: number;
  /** What joins it to the field before (default " · "). */
  glue?: string;
}

/** Separator between fields. */
const SEP = " · ";

/**
 * The fields joined in their order, fitted to `columns`: first the fields with a
 * short form take it, least-kept first; then fields are dropped, least-kept first;
 * a line that still does not fit is cut. One column stays free: a line that fills
 * the last column makes some terminals wrap, and `\r` then rewrites only the
 * wrapped part, which is how a 145-character line at 80 columns left one line
 * of scrollback per step. `columns` undefined (not a terminal): nothing is fitted.
 */
export function fitProgressLine(fields: readonly ProgressField[], columns: number | undefined): string {
  const live = fields.map((f) => ({ ...f, shown: f.text as string | null }));
  const line = (): string =>
    live
      .filter((f) => f.shown !== null)
      .map((f, i) => (i === 0 ? f.shown : `${f.glue ?? SEP}${f.shown}`))
      .join("");
  if (columns === undefined || columns <= 0) return line();
  const room = Math.max(1, columns - 1);
  const byDropOrder = [...live].sort((a, b) => b.keep - a.keep);
  for (const f of byDropOrder) {
    if (line().length <= room) return line();
    if (f.short !== undefined) f.shown = f.short;
  }
  for (const f of byDropOrder) {
    if (line().length <= room) return line();
    if (f.keep > 0) f.shown = null;
  }
  const l = line();
  return l.length <= room ? l : `${l.slice(0, Math.max(0, room - 1))}…`;
}

/** A text progress bar of `width` cells for a fraction in [0, 1]. */
export function progressBar(fraction: number, width = 20): string {
  const filled = Math.max(0, Math.min(width, Math.round(fraction * width)));
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}]`;
}

/** Plain logs: about this many progress lines per run (and the last step always). */
export const LOG_LINES_PER_RUN = 20;

/** Plain logs: print step `done` (1-based) of `total`? About LOG_LINES_PER_RUN lines per run, the first and the last step always. */
export function logThisStep(done: number, total: number | null, firstDone: number): boolean {
  const every = total ? Math.max(1, Math.round(total / LOG_LINES_PER_RUN)) : 50;
  return done === firstDone || done % every === 0 || (total !== null && done === total);
}

/** The eval progress line: `eval after step 200: 1200/10000 test samples`. */
export function evalProgressText(step: number, done: number, total: number): string {
  return `eval after step ${step}: ${Math.min(done, total)}/${total} test samples`;
}
