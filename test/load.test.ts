// Load: 64 lightweight clients (statistics only, C = 512) run 10,000 rounds
// against a real coordinator process on loopback; no round may fail and the
// coordinator's memory stays flat. Latency percentiles go to bench/results.md.
import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { ROOT } from "./helpers.js";

interface LoadResult {
  p50Ms: number;
  p99Ms: number;
  failedRounds: number;
  firstError?: string;
  rssStartMiB: number;
  rssEndMiB: number;
}

describe("load", () => {
  it("completes 10,000 rounds of 64 clients × 512 channels with no failed round and flat coordinator memory", async () => {
    const { runLoad } = (await import(join(ROOT, "dist", "bench", "load.js"))) as {
      runLoad(o: { clients: number; channels: number; rounds: number; processes: number }): Promise<LoadResult>;
    };
    const r = await runLoad({ clients: 64, channels: 512, rounds: 10_000, processes: 4 });
    console.log(`load: p50 ${r.p50Ms.toFixed(3)} ms, p99 ${r.p99Ms.toFixed(3)} ms, coordinator RSS ${r.rssStartMiB.toFixed(1)} → ${r.rssEndMiB.toFixed(1)} MiB`);
    expect(r.failedRounds, r.firstError).toBe(0);
    expect(Number.isFinite(r.p50Ms) && Number.isFinite(r.p99Ms)).toBe(true);
    expect(r.rssEndMiB - r.rssStartMiB).toBeLessThan(64);
  }, 600_000);
});
