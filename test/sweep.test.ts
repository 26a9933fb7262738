// `syncbn sweep` end to end on a reduced grid (real coordinator and worker
// processes, synthetic data), its resume and refusal rules, up-front validation,
// and the pure renderers of report.ts on made-up results.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CSV_HEADER, renderCsv, renderMarkdown, renderReportHtml, smoothCurve, type SweepReportInfo, type SweepRunResult } from "../cli/report.js";
import { runCli } from "./helpers.js";

const TMP = mkdtempSync(join(tmpdir(), "syncbn-sweep-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

// 2 workers × {1, 2} samples × {local, sync}, 6 steps each: four runs of a couple of seconds.
const GRID = ["--workers", "2", "--batches", "1,2", "--norms", "local,sync", "--model", "mlp", "--train-size", "256", "--test-size", "64", "--steps", "6"];

describe("syncbn sweep on a reduced grid", () => {
  const out = join(TMP, "grid");

  it("runs every combination, records batch-1 local BN as failed with its reason, and writes the CSV, markdown table and report", async () => {
    const r = await runCli(["sweep", ...GRID, "--out", out], { timeoutMs: 150_000 });
    expect(r.stderr).not.toMatch(/syncbn:/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/learning rate: linear scaling, lr = 0\.1 × global batch \/ 256/);
    expect(r.stdout).toMatch(/run 4\/4 sync b2 s1: test accuracy/);

    const lines = readFileSync(join(out, "results.csv"), "utf8").trimEnd().split("\n");
    expect(lines[0]).toBe("norm,perWorkerBatch,globalBatch,seed,testAccuracy,testLoss,trainSeconds,syncWaitSeconds");
    expect(lines).toHaveLength(5);
    const rows = lines.slice(1).map((l) => l.split(","));
    expect(rows.map((f) => f.slice(0, 4).join(","))).toEqual(["local,1,2,1", "local,2,4,1", "sync,1,2,1", "sync,2,4,1"]);
    // Batch-1 local BN: one value per channel in the fc BN layer, as in PyTorch.
    expect(rows[0]!.slice(4)).toEqual(["", "", "", ""]);
    for (const f of rows.slice(1)) {
      const acc = Number(f[4]);
      expect(f[4]).not.toBe("");
      expect(acc).toBeGreaterThanOrEqual(0);
      expect(acc).toBeLessThanOrEqual(1);
      expect(Number(f[6])).toBeGreaterThan(0);
      expect(Number(f[7])).toBeGreaterThanOrEqual(0);
    }
    expect(r.stdout).toMatch(/run 1\/4 local b1 s1: FAILED, recorded and continuing: SYNCBN_ERR_SINGLE_VALUE: .*expected more than 1 value per channel/);

    const md = readFileSync(join(out, "results.md"), "utf8");
    expect(md).toContain("| norm \\ per-worker batch | 1 (global 2) | 2 (global 4) |");
    expect(md).toMatch(/\| `local` \| failed \| \d+\.\d% \|/);
    expect(md).toMatch(/\| `sync` \| \d+\.\d% \| \d+\.\d% \|/);
    expect(md).toMatch(/local, per-worker batch 1, seed 1: SYNCBN_ERR_SINGLE_VALUE/);

    const html = readFileSync(join(out, "report.html"), "utf8");
    expect(html.match(/class="mode-line"/g)).toHaveLength(2);
    expect(html).not.toMatch(/<script|https?:\/\//);
    for (const name of ["local-b2-s1", "sync-b1-s1", "sync-b2-s1"]) expect(existsSync(join(out, "runs", name, "summary.json"))).toBe(true);
  }, 180_000);

  it("skips every finished combination when the same command runs again, saying so", async () => {
    const before = readFileSync(join(out, "results.csv"), "utf8");
    const r = await runCli(["sweep", ...GRID, "--out", out], { timeoutMs: 60_000 });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/resuming the sweep in /);
    expect(r.stdout.match(/skipping/g)).toHaveLength(4);
    expect(r.stdout).toMatch(/run 1\/4 local b1 s1: skipping, failed before and would fail again/);
    expect(r.stdout).toMatch(/run 4\/4 sync b2 s1: skipping, already done/);
    expect(r.stdout).not.toMatch(/starting/);
    expect(readFileSync(join(out, "results.csv"), "utf8")).toBe(before);
  }, 90_000);

  it("refuses to resume a folder that holds a different grid, and says to use another --out", async () => {
    const other = GRID.map((a) => (a === "1,2" ? "2,4" : a));
    const r = await runCli(["sweep", ...other, "--out", out], { timeoutMs: 30_000 });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/SYNCBN_ERR_BAD_CONFIG: .* holds a sweep with a different grid \(batches was \[1,2\], now \[2,4\]\); use another --out/);
    expect(r.stdout).not.toMatch(/starting/);
  }, 60_000);
});

describe("syncbn sweep validates the whole grid before any run starts", () => {
  const bad = async (args: string[]): Promise<{ code: number | null; stderr: string; out: string }> => {
    const out = join(TMP, `bad-${Math.random().toString(36).slice(2)}`);
    const r = await runCli(["sweep", "--model", "mlp", "--train-size", "256", "--steps", "2", ...args, "--out", out], { timeoutMs: 30_000 });
    return { code: r.code, stderr: r.stderr, out };
  };

  it("rejects an unknown norm mode with the list of modes", async () => {
    const r = await bad(["--workers", "2", "--batches", "2", "--norms", "sync,batchnorm"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown --norm "batchnorm"; use one of sync, local, group:K/);
    expect(existsSync(r.out)).toBe(false);
  }, 60_000);

  it("rejects group:K when K does not divide the number of workers", async () => {
    const r = await bad(["--workers", "4", "--batches", "2", "--norms", "sync,group:3"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--norm group:3 needs K to divide the number of workers \(4\)/);
    expect(existsSync(r.out)).toBe(false);
  }, 60_000);

  it("rejects ghost:G when G does not divide every per-worker batch, naming the batches", async () => {
    const r = await bad(["--workers", "2", "--batches", "2,3,4", "--norms", "ghost:2"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/ghost batch 2 to divide every per-worker batch; it does not divide 3/);
    expect(existsSync(r.out)).toBe(false);
  }, 60_000);

  it("reports every problem of the grid in one error", async () => {
    const r = await bad(["--workers", "4", "--batches", "2", "--norms", "group:3,nonsense"]);
    expect(r.code).toBe(2);
    expect(r.stderr.split("\n").filter((l) => l.startsWith("syncbn:"))).toHaveLength(1);
    expect(r.stderr).toMatch(/group:3 needs K to divide.*; unknown --norm "nonsense"/);
  }, 60_000);
});

// ---------------------------------------------------------------- report.ts, no processes

function run(norm: string, b: number, seed: number, acc: number | null, failure: string | null = null): SweepRunResult {
  return {
    norm,
    perWorkerBatch: b,
    globalBatch: 4 * b,
    seed,
    testAccuracy: acc,
    testLoss: acc === null ? null : 2 - acc,
    trainSeconds: acc === null ? null : 3.25,
    syncWaitSeconds: acc === null ? null : 0.5,
    steps: acc === null ? null : 100,
    failure,
    trainLoss: acc === null ? [] : Array.from({ length: 100 }, (_, i) => 2.3 - i / 100),
  };
}

const INFO: SweepReportInfo = {
  workers: 4,
  model: "mlp",
  data: "synthetic",
  norms: ["local", "sync", "group:2"],
  batches: [1, 2],
  seeds: [1, 2],
  budget: "1 epoch of 256 training samples",
  lrRule: "linear scaling, lr = 0.1 × global batch / 256",
  settings: [["BN", "eps <1e-5>"]],
  date: "2026-01-01 00:00 UTC",
  machine: "test CPU",
  node: "v20.0.0",
  missingRuns: 0,
};

const ROWS: SweepRunResult[] = [
  run("local", 1, 1, null, "SYNCBN_ERR_SINGLE_VALUE: [layer 2, phase fwd] expected more than 1 value per channel <b>"),
  run("local", 1, 2, null, "SYNCBN_ERR_SINGLE_VALUE: [layer 2, phase fwd] expected more than 1 value per channel <b>"),
  run("local", 2, 1, 0.2),
  run("local", 2, 2, 0.3),
  run("sync", 1, 1, 0.5),
  run("sync", 1, 2, 0.6),
  run("sync", 2, 1, 0.55),
  run("sync", 2, 2, 0.55),
  run("group:2", 1, 1, 0.4),
  run("group:2", 2, 1, 0.45),
];

describe("sweep results rendering", () => {
  it("writes one CSV row per run with empty metrics for a failed run", () => {
    const csv = renderCsv(ROWS.slice(0, 3)).split("\n");
    expect(csv[0]).toBe(CSV_HEADER);
    expect(csv[1]).toBe("local,1,4,1,,,,");
    expect(csv[3]).toBe("local,2,8,1,0.2000,1.8000,3.25,0.50");
  });

  it("tabulates mean ± sample std over seeds per (norm, batch), marks failures and missing seeds", () => {
    const md = renderMarkdown(ROWS, INFO);
    expect(md).toContain("| `local` | failed | 25.0% ± 7.1 |");
    expect(md).toContain("| `sync` | 55.0% ± 7.1 | 55.0% ± 0.0 |");
    expect(md).toContain("| `group:2` | 40.0% (1 of 2 seeds) | 45.0% (1 of 2 seeds) |");
    expect(md).toMatch(/Failed runs:\n- local, per-worker batch 1, seed 1: SYNCBN_ERR_SINGLE_VALUE/);
  });

  it("draws one .mode-line path per mode, broken where a run failed, with escaped text and nothing external", () => {
    const html = renderReportHtml(ROWS, INFO);
    const lines = [...html.matchAll(/<path class="mode-line" data-mode="([^"]+)" d="([^"]*)"/g)];
    expect(lines.map((m) => m[1])).toEqual(["local", "sync", "group:2"]);
    expect(lines[0]![2]).toMatch(/^M[\d.]+ [\d.]+$/); // local: one point, batch 1 failed
    expect(lines[1]![2]).toMatch(/^M[\d.]+ [\d.]+ L[\d.]+ [\d.]+$/);
    expect(html).toContain('class="mode-failed" data-mode="local"');
    expect(html.match(/class="loss-line"/g)).toHaveLength(5);
    expect(html).toContain("channel &lt;b&gt;");
    expect(html).not.toContain("channel <b>");
    expect(html).toContain("eps &lt;1e-5&gt;");
    expect(html).not.toMatch(/<script|<link|@import|url\(|https?:\/\//);
    expect(html).toContain("<title>syncbn sweep: mlp on synthetic, 4 workers</title>");
  });

  it("smooths a loss curve into at most the requested number of points, keeping the last step", () => {
    const values = Array.from({ length: 1000 }, (_, i) => (i % 2 ? 1 : 3));
    const s = smoothCurve(values, 100);
    expect(s.length).toBeLessThanOrEqual(101);
    expect(s[s.length - 1]!.i).toBe(999);
    for (const p of s.slice(1, -1)) expect(Math.abs(p.v - 2)).toBeLessThan(0.1);
  });
});
