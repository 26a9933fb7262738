// The one message a worker sends its launcher besides its exit: evaluation
// progress, so `syncbn train` can show `eval 1200/10000` instead of going silent
// for a long evaluation. Over the fork's IPC channel or a worker thread's parent
// port; never over the coordinator link, whose rounds it must not delay.

/** Lowest rank's worker → launcher: `done` of `total` test samples evaluated after step `step`. */
export interface EvalProgressMessage {
  type: "eval-progress";
  step: number;
  done: number;
  total: number;
}

export function isEvalProgress(v: unknown): v is EvalProgressMessage {
  if (typeof v !== "object" || v === null) return false;
  const m = v as Record<string, unknown>;
  return m.type === "eval-progress" && typeof m.step === "number" && typeof m.done === "number" && typeof m.total === "number";
}

/** Least time between two progress messages: a display needs a few per second, not one per eval batch. */
const SEND_EVERY_MS = 200;

/** An onEvalProgress for trainWorker that sends through `send`, at most every 200 ms, and the last batch always. */
export function evalProgressSender(send: (m: EvalProgressMessage) => void): (step: number, done: number, total: number) => void {
  let lastAt = Number.NEGATIVE_INFINITY;
  return (step, done, total) => {
    const now = performance.now();
    if (done < total && now - lastAt < SEND_EVERY_MS) return;
    lastAt = now;
    send({ type: "eval-progress", step, done, total });
  };
}
