// Wires a run's live views to its coordinator: the BN-spread tracker (whose
// records go to metrics.jsonl through the monitor) and, with --dashboard, the
// dashboard state and its HTTP server. Used by `train`, `coordinator` and `sweep`;
// the views only observe the run.

import { BN_SPREAD_EVERY, BnSpreadTracker, bnNote } from "../coordinator/bn-spread.js";
import type { Coordinator } from "../coordinator/coordinator.js";
import { startDashboard, type DashboardServer } from "../coordinator/dashboard.js";
import { DashboardState, type DashboardRun } from "../coordinator/dashboard-state.js";
import type { RunMonitor } from "./monitor.js";

export interface LiveOptions {
  /** null: no dashboard (the default). */
  dashboard: { host: string; port: number } | null;
  /** The user's run token ("" = none); required for a dashboard off loopback. */
  token: string;
  /** Sample the BN spread every N steps (default BN_SPREAD_EVERY). */
  bnEvery?: number;
}

export interface LiveViews {
  /** The dashboard's URL, when one is served. */
  url: string | null;
  server: DashboardServer | null;
  close(): Promise<void>;
}

function describeRun(c: Coordinator): DashboardRun {
  const conv = c.runConventions;
  if (!conv) return { title: `waiting for the first of ${c.worldSize} workers`, settings: { workers: c.worldSize }, bnNote: null };
  const t = (conv.training ? JSON.parse(conv.training) : {}) as Record<string, string | number | boolean | null>;
  const settings: DashboardRun["settings"] = { workers: c.worldSize, norm: conv.norm, ...t, bnEps: conv.eps, bnMomentum: conv.momentum, bnMomentumStyle: conv.momentumStyle, unbiasedRunningVar: conv.unbiasedRunningVar };
  for (const [k, v] of Object.entries(settings)) if (typeof v === "object" && v !== null) settings[k] = JSON.stringify(v);
  const title = `${t.model ?? "?"} · --norm ${conv.norm} · ${c.worldSize} workers × ${t.batch ?? "?"} · ${t.data ?? "?"}`;
  return { title, settings, bnNote: bnNote(conv.norm, c.worldSize) };
}

/** Attach the BN-spread tracker (always) and the dashboard (when asked); call before workers start. */
export async function attachLiveViews(c: Coordinator, monitor: () => RunMonitor | null, o: LiveOptions): Promise<LiveViews> {
  const state = o.dashboard ? new DashboardState(c, () => describeRun(c)) : null;
  c.observers.push(
    new BnSpreadTracker(
      c,
      (r) => {
        monitor()?.record(r);
        state?.addBn(r);
      },
      o.bnEvery ?? BN_SPREAD_EVERY,
    ),
  );
  if (!state || !o.dashboard) return { url: null, server: null, close: async () => {} };
  c.observers.push(state);
  const server = await startDashboard({ ...o.dashboard, token: o.token, state });
  return { url: server.url, server, close: () => server.close() };
}
