// The default layout of a run's W ranks on this machine: worker threads or worker
// processes, and how many ranks each hosts, decided from the work of one rank's
// step (model FLOPs per sample × batch, from the layer shapes). Every layout gives
// the same results bit for bit (--rank-grads exact, test/ranks-per-proc.test.ts,
// test/transport.test.ts), so this chooses speed only. Not the checks of a block
// (cli/blocks.ts) nor the launching (cli/train.ts).

import { availableParallelism } from "node:os";
import { Conv2d } from "../worker/nn/conv2d.js";
import { Linear } from "../worker/nn/linear.js";
import type { Model } from "../worker/nn/model.js";
import { ONE_RANK_PER_PROC_UP_TO, resolveRanksPerProc, type RanksPerProc } from "./blocks.js";
import { plural } from "./progress-line.js";

/**
 * Below this many training FLOPs per rank and step, threads packing several ranks
 * win: a sync round through the coordinator and the scheduling of processes cost
 * more than a thread's; above it one process per rank (each rank isolated, the
 * shape of a multi-host run). Measured on 2 cores (docs/defaults.md): cnn, 4 ranks
 * × 8 (0.05 GFLOP): 43.8 ms/step on 4 processes, 11.9 on 2 threads × 2 ranks; with
 * the native kernels resnet:3 4 × 8 (1.5 GFLOP) 138–161 against 109, and 4 × 32
 * (6.0 GFLOP) 393–407 against 347–381: threads still ahead, hence 16 GFLOP.
 */
export const THREADS_BELOW_FLOPS_PER_RANK_STEP = 16e9;

/** Forward FLOPs of one sample: 2 per multiply-add of every convolution and linear layer (norms, pools, ReLUs are a few per value and left out). */
export function forwardFlopsPerSample(model: Model): number {
  let flops = 0;
  for (const l of model.layers) {
    if (l instanceof Conv2d) {
      const g = l.geometry;
      flops += 2 * g.cout * g.cin * g.kernel * g.kernel * g.outH * g.outW;
    } else if (l instanceof Linear) {
      flops += 2 * l.inFeatures * l.outFeatures;
    }
  }
  return flops;
}

/** Training FLOPs of one sample: forward, dx and dW, each one forward's worth. */
export function trainFlopsPerSample(model: Model): number {
  return 3 * forwardFlopsPerSample(model);
}

export interface LayoutRequest {
  /** --transport as given (undefined: decided here). */
  transport?: "process" | "thread";
  /** --ranks-per-proc as given (undefined: decided here). */
  ranksPerProc?: RanksPerProc;
  /** Why the run needs worker processes, if it does (fault injection, elastic, a --wire given, --pin-cpus on); null if not. */
  needsProcesses: string | null;
}

export interface Layout {
  transport: "process" | "thread";
  ranksPerProc: number;
  /** The layout and why, for the start line and the run record: "2 threads × 2 ranks (auto: …)". */
  description: string;
}

const num = (x: number): string => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toPrecision(2));

/** "0.3 MFLOP", "4.1 GFLOP". */
export function flopsText(x: number): string {
  if (x >= 1e9) return `${num(x / 1e9)} GFLOP`;
  if (x >= 1e6) return `${num(x / 1e6)} MFLOP`;
  return `${num(x / 1e3)} kFLOP`;
}

/**
 * The layout of a run of `world` ranks × `batch` samples of a model of
 * `flopsPerSample` training FLOPs: the flags as given, and each flag not given
 * decided by the work of one rank's step. Small work: threads, ranks packed so
 * there are no more threads than cores; big work: one process per rank (up to
 * ONE_RANK_PER_PROC_UP_TO ranks, packed to the cores above). Refusals of bad
 * blocks are resolveRanksPerProc's.
 */
export function chooseLayout(r: LayoutRequest, world: number, norm: string, flopsPerSample: number, batch: number, cores = availableParallelism()): Layout {
  const work = flopsPerSample * batch;
  const small = work < THREADS_BELOW_FLOPS_PER_RANK_STEP && r.needsProcesses === null;
  const transport = r.transport ?? (small ? "thread" : "process");
  // An explicit --transport process without --ranks-per-proc keeps its meaning of before: one process per rank.
  const spec = r.ranksPerProc ?? (small && transport === "thread" ? "auto" : undefined);
  const ranksPerProc = resolveRanksPerProc(spec, world, norm, cores);
  const units = Math.ceil(world / ranksPerProc);
  const what = transport === "thread" ? plural(units, "thread") : plural(units, "process", "processes");
  const shape = `${what} × ${plural(ranksPerProc, "rank")}${world % ranksPerProc ? ` (the last ${world % ranksPerProc})` : ""}`;
  if (r.transport !== undefined && r.ranksPerProc !== undefined) return { transport, ranksPerProc, description: `${shape} (as given)` };
  const perStep = `${flopsText(flopsPerSample)}/sample × ${batch} = ${flopsText(work)} per rank-step`;
  const why =
    r.needsProcesses !== null
      ? `worker processes for ${r.needsProcesses}`
      : small
        ? `below ${flopsText(THREADS_BELOW_FLOPS_PER_RANK_STEP)}: threads, ≤ ${plural(cores, "core")}`
        : `from ${flopsText(THREADS_BELOW_FLOPS_PER_RANK_STEP)}: compute-bound, one process per rank${world > ONE_RANK_PER_PROC_UP_TO ? ` up to ${ONE_RANK_PER_PROC_UP_TO}` : ""}`;
  const given = [r.transport !== undefined ? "--transport" : "", r.ranksPerProc !== undefined ? "--ranks-per-proc" : ""].filter(Boolean).join(", ");
  return { transport, ranksPerProc, description: `${shape} (auto: ${perStep}, ${why}${given ? `; ${given} as given` : ""})` };
}
