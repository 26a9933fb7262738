// What a worker started by hand (`syncbn worker`) adds to the training loop: its
// output folder when --out is not given, and, for rank 0, the run's progress line
// and eval lines, computed from the summed results every worker receives anyway.
// Not used by the launcher's workers: `syncbn train` shows the run itself.

import { hostname } from "node:os";
import type { OutDirNotice, RoundResult } from "../shared/protocol.js";
import type { TrainSettings } from "../worker/settings.js";
import { RunMonitor } from "./monitor.js";
import { prepareOutDir } from "./out-dir.js";
import { defaultOutDir } from "./run-record.js";

/**
 * Where a hand-started worker without --out writes (only the process hosting rank
 * 0 writes, and elastic take-overs need --out): the coordinator's folder when the
 * coordinator runs on this host (its welcome names the folder and the host), so
 * weights and checkpoint land beside its summary; else `runs/<time>` here. null: this
 * process writes nothing. Throws BadConfig when the folder cannot be written.
 */
export function workerOutDir(notice: OutDirNotice | null, rank: number, host = hostname()): string | null {
  if (rank !== 0) return null;
  const dir = notice && notice.host === host ? notice.path : defaultOutDir();
  prepareOutDir(dir);
  return dir;
}

export interface WorkerView {
  onResult(r: RoundResult): void;
  onEvalProgress(step: number, done: number, total: number): void;
  /** Clears the in-place line (TTY) so what follows starts on a clean line. */
  end(): void;
}

/** Rank 0's display: the launcher's progress line and eval lines, from the summed gradient and eval results. */
export function startWorkerView(s: TrainSettings, world: number, ranksPerProc: number, tty: boolean, status: (line: string) => void): WorkerView {
  const monitor = new RunMonitor({
    worldSize: world,
    ranksPerProc,
    perWorkerBatch: s.batch,
    norm: s.norm,
    model: s.model,
    data: s.data,
    evalStats: s.evalStats,
    preciseBatches: s.preciseBatches,
    // The coordinator writes metrics.jsonl and summary.json; this view only prints.
    outDir: null,
    totalSteps: null,
    stepsPerEpoch: null,
    startStep: 0,
    tty,
    print: (l) => console.log(l),
    status,
    columns: () => process.stdout.columns,
  });
  return {
    onResult: (r) => monitor.onRound({ step: r.step, phase: r.phase, layer: r.layer, count: r.count, data: r.data, extra: r.extra }),
    onEvalProgress: (step, done, total) => monitor.evalProgress(step, done, total),
    end: () => {
      if (tty) status("");
    },
  };
}
