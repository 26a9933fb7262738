// One process of lightweight load clients: K CoordinatorClients (statistics only,
// no model) that each run R forward rounds of C channels against a coordinator
// and report every round's latency to the parent over IPC.
// argv: URL TOKEN WORLD FIRST_RANK K ROUNDS CHANNELS

import { CoordinatorClient } from "../worker/client.js";
import { Rng } from "../shared/rng.js";
import { runChildMain } from "../cli/procs.js";

export interface LoadClientReport {
  type: "load-report";
  latenciesMs: number[];
  failed: number;
  error?: string;
}

async function main(): Promise<LoadClientReport> {
  const [url, token, worldText, firstText, kText, roundsText, chText] = process.argv.slice(2);
  const world = Number(worldText), first = Number(firstText), k = Number(kText), rounds = Number(roundsText), c = Number(chText);
  const conventions = { eps: 1e-5, momentum: 0.1, momentumStyle: "torch" as const, unbiasedRunningVar: true, norm: "sync", training: "" };
  const clients = await Promise.all(
    Array.from({ length: k }, (_, i) =>
      CoordinatorClient.connect({ url: url!, rank: first + i, worldSize: world, token: token!, conventions, connectTimeoutMs: 30_000, roundTimeoutMs: 60_000, maxPayload: 1 << 26 }),
    ),
  );
  const latencies = new Float64Array(rounds * k);
  let failed = 0;
  let error: string | undefined;
  await Promise.all(
    clients.map(async (client, i) => {
      const rng = new Rng(first + i);
      const payload = Float64Array.from({ length: 2 * c }, (_, j) => (j < c ? rng.normal() : 1 + rng.next()));
      for (let r = 0; r < rounds; r++) {
        const t = performance.now();
        try {
          await client.round(r, "fwd", 0, 8, payload);
        } catch (e) {
          failed++;
          error ??= (e as Error).message;
          return;
        }
        latencies[r * k + i] = performance.now() - t;
      }
    }),
  );
  await Promise.all(clients.map((c2) => c2.bye()));
  const report: LoadClientReport = { type: "load-report", latenciesMs: Array.from(latencies), failed, error };
  return report;
}

runChildMain(main);
