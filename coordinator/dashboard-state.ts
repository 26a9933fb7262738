// What the live dashboard shows, kept in the coordinator's process with bounded
// memory: per-rank progress and timings (from the gradient round's per-rank
// extras the workers already send), loss and test accuracy, round spans per
// phase, BN-spread history. A read-only round observer; no HTTP here (dashboard.ts).

import { namedRanks } from "../shared/errors.js";
import { GradExtra, SumRound, type Phase } from "../shared/protocol.js";
import type { BnSpreadRecord } from "./bn-spread.js";
import type { CompletedRound, Coordinator, RoundObserver } from "./coordinator.js";

/** Points kept per series; past it every other point is dropped and the stride doubles. */
export const MAX_POINTS = 1000;

/** A downsampled history: every `stride`-th offered point is kept, at most MAX_POINTS. */
export class Series {
  points: (number | null)[][] = [];
  stride = 1;
  private offered = 0;
  /** Bumped when points are dropped, so listeners know to resend everything. */
  version = 0;

  constructor(readonly max = MAX_POINTS) {}

  add(point: (number | null)[]): void {
    if (this.offered++ % this.stride !== 0) return;
    this.points.push(point);
    if (this.points.length > this.max) {
      this.points = this.points.filter((_, i) => i % 2 === 0);
      // The kept points are the offered ones at multiples of the new stride, so `offered` goes on counting as is.
      this.stride *= 2;
      this.version++;
    }
  }
}

/** Last LATENCY_WINDOW round spans per phase, in ms, for percentiles. */
export const LATENCY_WINDOW = 1024;

class Ring {
  private readonly values = new Float64Array(LATENCY_WINDOW);
  private n = 0;
  add(v: number): void {
    this.values[this.n++ % LATENCY_WINDOW] = v;
  }
  percentiles(): { rounds: number; p50: number; p90: number; p99: number } | null {
    const k = Math.min(this.n, LATENCY_WINDOW);
    if (k === 0) return null;
    const s = this.values.slice(0, k).sort();
    const at = (q: number): number => s[Math.min(k - 1, Math.floor(q * k))]!;
    return { rounds: this.n, p50: at(0.5), p90: at(0.9), p99: at(0.99) };
  }
}

/** One row per worker process: a rank, or the block of consecutive ranks one process hosts. */
export interface RankView {
  /** The (first) rank. */
  rank: number;
  /** How many ranks the process hosts (1 unless --ranks-per-proc). */
  ranks: number;
  status: "waiting" | "running" | "finished" | "lost" | "stopped";
  /** Why a lost rank was lost (the coordinator's reason or error). */
  error: string | null;
  /** Last step whose gradient round the rank contributed to. */
  step: number | null;
  samples: number | null;
  /** The worker's own report of its previous step: time outside rounds and time waiting in them. */
  computeMs: number | null;
  waitMs: number | null;
  samplesPerSecond: number | null;
}

interface RankTiming {
  step: number;
  samples: number;
  computeMs: number;
  waitMs: number;
}

export interface DashboardRun {
  title: string;
  /** Settings shown as a table: the launcher's, or the first worker's hello. */
  settings: Record<string, string | number | boolean | null>;
  /** Whether BN statistics reach the coordinator in this norm mode, and if not why. */
  bnNote: string | null;
}

export class DashboardState implements RoundObserver {
  readonly loss = new Series();
  readonly accuracy = new Series();
  /** Per BN layer: [step, meanDevMean, meanDevMax, logVarMean, logVarMaxAbs, runningMeanGap, runningLogVar, meanDev by rank…, logVar by rank…]. */
  readonly bn = new Map<number, Series>();
  readonly latestBn = new Map<number, BnSpreadRecord>();
  private readonly timings: (RankTiming | null)[];
  private readonly finished = new Set<number>();
  private readonly spans = new Map<Phase, Ring>();
  private lastStep: number | null = null;
  private lastLoss: number | null = null;
  /** The last step's learning rate (GradExtra.lr: the schedule's, with warm-up). */
  private lastLr: number | null = null;
  private totalSteps: number | null = null;
  private readonly started = Date.now();

  constructor(
    private readonly coordinator: Coordinator,
    private readonly describe: () => DashboardRun,
  ) {
    this.timings = new Array<RankTiming | null>(coordinator.worldSize).fill(null);
  }

  afterRound(round: CompletedRound, result: { count: number; data: Float64Array | Float32Array; extra?: Float64Array }): void {
    let ring = this.spans.get(round.phase);
    if (!ring) this.spans.set(round.phase, (ring = new Ring()));
    ring.add(performance.now() - round.opened);
    // Steps as metrics.jsonl counts them: completed steps, the first is 1 (round.step counts from 0).
    const done = round.step + 1;
    if (round.phase === "grad" && result.extra) {
      round.members.forEach((rank, i) => {
        const e = round.parts[i]?.extra;
        if (!e) return; // a block's other ranks: its process sent one part, at its first rank
        // A process of R ranks reports its times × R (per rank, summed over its ranks): its own time is / R.
        const size = this.coordinator.blockOf(rank).size;
        const t = this.timings[rank] ?? (this.timings[rank] = { step: 0, samples: 0, computeMs: 0, waitMs: 0 });
        t.step = done;
        t.samples = e[GradExtra.count]!;
        t.computeMs = e[GradExtra.computeMs]! / size;
        t.waitMs = e[GradExtra.syncWaitMs]! / size;
      });
      const x = result.extra;
      const count = x[GradExtra.count]!;
      this.lastStep = done;
      this.lastLoss = x[GradExtra.lossSum]! / count;
      this.lastLr = x[GradExtra.lr] ?? null;
      // Every rank reports the same total (a process of R ranks R times); the round summed them.
      this.totalSteps ??= x[GradExtra.totalSteps]! / round.members.length;
      this.loss.add([done, this.lastLoss]);
    } else if (round.phase === "sum" && round.layer === SumRound.Eval) {
      const d = result.data;
      this.accuracy.add([done, d[1]! / d[2]!]);
    }
  }

  rankFinished(rank: number): void {
    this.finished.add(rank);
  }

  addBn(r: BnSpreadRecord): void {
    let s = this.bn.get(r.layer);
    if (!s) this.bn.set(r.layer, (s = new Series()));
    s.add([r.step, r.meanDevMean, r.meanDevMax, r.logVarMean, r.logVarMaxAbs, r.runningMeanGap, r.runningLogVar, ...r.meanDev, ...r.logVar]);
    this.latestBn.set(r.layer, r);
  }

  ranks(): RankView[] {
    const c = this.coordinator;
    const connected = new Set(c.connectedRanks());
    const failure = c.failed;
    const blamed = new Set(namedRanks(failure));
    const rows: RankView[] = [];
    for (let rank = 0; rank < c.worldSize; rank += c.blockOf(rank).size) {
      const size = c.blockOf(rank).size;
      const t = this.timings[rank] ?? null;
      const lost = c.lostWorkers.find((l) => l.rank === rank);
      let status: RankView["status"] = "waiting";
      let error: string | null = null;
      if (lost) [status, error] = ["lost", lost.reason];
      else if (this.finished.has(rank)) status = "finished";
      else if (failure && blamed.has(rank)) [status, error] = ["lost", `${failure.code}: ${failure.message}`];
      else if (failure) [status, error] = ["stopped", `${failure.code}: ${failure.message}`];
      else if (connected.has(rank)) status = "running";
      const busy = t ? t.computeMs + t.waitMs : 0;
      rows.push({
        rank,
        ranks: size,
        status,
        error,
        step: t?.step ?? null,
        samples: t?.samples ?? null,
        computeMs: t?.computeMs ?? null,
        waitMs: t?.waitMs ?? null,
        samplesPerSecond: t && busy > 0 ? (t.samples / busy) * 1000 : null,
      });
    }
    return rows;
  }

  /** Everything but the histories: small, sent at every tick. */
  summary(): object {
    const ranks = this.ranks();
    const timed = ranks.filter((r) => r.computeMs !== null && r.waitMs !== null && r.status === "running");
    const wait = timed.reduce((a, r) => a + r.waitMs!, 0);
    const all = timed.reduce((a, r) => a + r.waitMs! + r.computeMs!, 0);
    const latency: Record<string, object> = {};
    for (const [phase, ring] of this.spans) {
      const p = ring.percentiles();
      if (p) latency[phase] = p;
    }
    const f = this.coordinator.failed;
    return {
      run: this.describe(),
      world: this.coordinator.worldSize,
      step: this.lastStep,
      totalSteps: this.totalSteps,
      loss: this.lastLoss,
      lr: this.lastLr,
      elapsedSeconds: (Date.now() - this.started) / 1000,
      state: f ? "failed" : ranks.every((r) => r.status === "finished" || r.status === "lost") && this.lastStep !== null ? "finished" : "running",
      failure: f ? `${f.code}: ${f.message}` : null,
      ranks,
      latency,
      syncShare: all > 0 ? wait / all : null,
      bnLatest: [...this.latestBn.values()].sort((a, b) => a.layer - b.layer),
      /** The BN layers' names by layer id, as the first worker sent them (null: none sent). */
      layerNames: this.coordinator.layerNames,
    };
  }

  /** The histories, whole. */
  histories(): { loss: Series; accuracy: Series; bn: [number, Series][] } {
    return { loss: this.loss, accuracy: this.accuracy, bn: [...this.bn.entries()].sort((a, b) => a[0] - b[0]) };
  }
}
