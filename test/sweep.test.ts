// `syncbn sweep` end to end on a reduced grid (real coordinator and worker
// processes, synthetic data), its resume and refusal rules, up-front validation,
// and the pure renderers of report.ts on made-up results.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CSV_HEADER, renderCsv, renderMarkdown, renderReportHtml, smoothCurve, type SweepReportInfo, type SweepRunResult } from "../cli/report.js";
import { DEFAULT_GRID, gridAdditions, sharedSettingDiffs, unionGrid } from "../cli/sweep-grid.js";
import { ROOT, runCli } from "./helpers.js";

const TMP = mkdtempSync(join(tmpdir(), "syncbn-sweep-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

/** RFC 4180 fields of one CSV line (quoted fields may hold commas and doubled quotes). */
function csvFields(line: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i <= line.length) {
    if (line[i] === '"') {
      let v = "";
      i++;
      while (i < line.length && !(line[i] === '"' && line[i + 1] !== '"')) {
        v += line[i] === '"' ? '"' : line[i];
        i += line[i] === '"' ? 2 : 1;
      }
      out.push(v);
      i += 2; // closing quote and comma
    } else {
      const end = line.indexOf(",", i);
      out.push(line.slice(i, end < 0 ? line.length : end));
      i = end < 0 ? line.length + 1 : end + 1;
    }
  }
  return out;
}

function readCsv(path: string): Record<string, string>[] {
  const [head, ...rows] = readFileSync(path, "utf8").trimEnd().split("\n");
  const keys = head!.split(",");
  return rows.map((l) => Object.fromEntries(csvFields(l).map((v, i) => [keys[i]!, v])));
}

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
    expect(lines[0]).toBe("norm,perWorkerBatch,globalBatch,seed,status,testAccuracy,testLoss,trainSeconds,syncWaitSeconds,error");
    expect(lines).toHaveLength(5);
    const rows = readCsv(join(out, "results.csv"));
    expect(rows.map((f) => [f.norm, f.perWorkerBatch, f.globalBatch, f.seed, f.status].join(","))).toEqual(["local,1,2,1,failed", "local,2,4,1,ok", "sync,1,2,1,ok", "sync,2,4,1,ok"]);
    // Batch-1 local BN: one value per channel in the fc BN layer, as in PyTorch; the row says so.
    expect([rows[0]!.testAccuracy, rows[0]!.testLoss, rows[0]!.trainSeconds, rows[0]!.syncWaitSeconds]).toEqual(["", "", "", ""]);
    expect(rows[0]!.error).toMatch(/^SYNCBN_ERR_SINGLE_VALUE: .*expected more than 1 value per channel/);
    for (const f of rows.slice(1)) {
      const acc = Number(f.testAccuracy);
      expect(f.testAccuracy).not.toBe("");
      expect(acc).toBeGreaterThanOrEqual(0);
      expect(acc).toBeLessThanOrEqual(1);
      expect(Number(f.trainSeconds)).toBeGreaterThan(0);
      expect(Number(f.syncWaitSeconds)).toBeGreaterThanOrEqual(0);
      expect(f.error).toBe("");
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

  it("extends the folder with more seeds, reusing every run already done and running only the new ones", async () => {
    const before = readCsv(join(out, "results.csv"));
    const r = await runCli(["sweep", ...GRID, "--seeds", "1,2", "--out", out], { timeoutMs: 150_000 });
    expect(r.stderr).not.toMatch(/syncbn:/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/extending the sweep in .* with seeds 2; its runs done so far are reused/);
    expect(r.stdout.match(/skipping/g)).toHaveLength(4);
    expect(r.stdout.match(/: starting/g)).toHaveLength(4);
    const rows = readCsv(join(out, "results.csv"));
    expect(rows.map((f) => `${f.norm} b${f.perWorkerBatch} s${f.seed} ${f.status}`)).toEqual([
      "local b1 s1 failed",
      "local b1 s2 failed",
      "local b2 s1 ok",
      "local b2 s2 ok",
      "sync b1 s1 ok",
      "sync b1 s2 ok",
      "sync b2 s1 ok",
      "sync b2 s2 ok",
    ]);
    // The seed-1 rows are the runs done before, untouched (their wall times included).
    expect(rows.filter((f) => f.seed === "1")).toEqual(before);
    const md = readFileSync(join(out, "results.md"), "utf8");
    expect(md).toMatch(/mean, ± sample standard deviation over seeds 1, 2/);
    const html = readFileSync(join(out, "report.html"), "utf8");
    // Both commands, the version and the error bars and bands of two seeds.
    expect(html).toMatch(/<th>commands \(oldest first\)<\/th><td><code class="cmd">syncbn sweep --workers 2 .*--steps 6 --out .*<\/code><br><code class="cmd">syncbn sweep .*--seeds 1,2 --out /);
    expect(html).toMatch(new RegExp(`<th>syncbn</th><td>${JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version.replace(/\./g, "\\.")}</td>`));
    expect(html.match(/class="loss-band"/g)).toHaveLength(3);
    const sweepFile = JSON.parse(readFileSync(join(out, "sweep.json"), "utf8"));
    expect(sweepFile.grid.seeds).toEqual([1, 2]);
    expect(sweepFile.commands).toHaveLength(2);
  }, 180_000);

  it("refuses a folder whose shared settings differ, naming the setting and saying to use another --out", async () => {
    const r = await runCli(["sweep", ...GRID.map((a) => (a === "mlp" ? "cnn" : a)), "--out", out], { timeoutMs: 30_000 });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/SYNCBN_ERR_BAD_CONFIG: .* holds a sweep with other shared settings \(model was "mlp", now "cnn"\); its runs cannot be compared with these: use another --out/);
    expect(r.stdout).not.toMatch(/starting/);
  }, 60_000);
});

describe("a sweep folder grows along its axes", () => {
  const base = { ...DEFAULT_GRID, workers: 2, norms: ["local", "sync"], batches: [2, 4], seeds: [1] };

  it("takes the union of modes, batches and seeds, the folder's values first, and says what a command adds", () => {
    const now = { ...base, norms: ["sync", "group:2"], batches: [1, 4], seeds: [3, 2] };
    const u = unionGrid(base, now);
    expect([u.norms, u.batches, u.seeds]).toEqual([["local", "sync", "group:2"], [1, 2, 4], [1, 2, 3]]);
    expect(gridAdditions(base, now)).toBe("norms group:2; batches 1; seeds 3, 2");
    expect(gridAdditions(base, { ...base, seeds: [1] })).toBe("");
    expect(sharedSettingDiffs(base, now)).toEqual([]);
  });

  it("names every shared setting that differs (model, data, workers, the lr rule…), never an axis", () => {
    const now = { ...base, model: "cnn" as const, momentum: 0.5, seeds: [5] };
    expect(sharedSettingDiffs(base, now)).toEqual([`model was "mlp", now "cnn"`, "momentum was 0.9, now 0.5"]);
  });

  it("refuses a run folder whose summary.json was trained with other settings than its name says, before any run starts", async () => {
    const out = join(TMP, "foreign");
    const grid = { ...DEFAULT_GRID, workers: 2, norms: ["sync"], batches: [2], seeds: [1], trainSize: 256, testSize: 64, steps: 2 };
    mkdirSync(join(out, "runs", "sync-b2-s1"), { recursive: true });
    writeFileSync(join(out, "sweep.json"), JSON.stringify({ tool: "syncbn sweep", version: 1, grid, created: "earlier" }));
    writeFileSync(join(out, "runs", "sync-b2-s1", "summary.json"), JSON.stringify({ norm: "local", perWorkerBatch: 2, workers: 2, model: "mlp", data: "synthetic" }));
    const r = await runCli(["sweep", "--workers", "2", "--batches", "2", "--norms", "sync", "--model", "mlp", "--train-size", "256", "--test-size", "64", "--steps", "2", "--out", out], { timeoutMs: 30_000 });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sync-b2-s1\/summary\.json does not belong to this sweep \(norm is "local", expected "sync"\)/);
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
  version: "9.8.7",
  commands: ["syncbn sweep --workers 4 --norms 'local,sync'"],
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
  it("writes one CSV row per run: a failed run has status failed, empty metrics and its reason, quoted", () => {
    const csv = renderCsv(ROWS.slice(0, 3)).split("\n");
    expect(csv[0]).toBe(CSV_HEADER);
    expect(csv[1]).toBe('local,1,4,1,failed,,,,,"SYNCBN_ERR_SINGLE_VALUE: [layer 2, phase fwd] expected more than 1 value per channel <b>"');
    expect(csv[3]).toBe("local,2,8,1,ok,0.2000,1.8000,3.25,0.50,");
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

  it("labels the loss panels' y axis, colours modes and batches from the Okabe–Ito palette, and draws min–max error bars and bands wherever a cell has several seeds", () => {
    const html = renderReportHtml(ROWS, INFO);
    const okabeIto = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#000000", "#F0E442"];
    expect(html.match(/>training loss \(cross-entropy\)<\/text>/g)).toHaveLength(3);
    const modeColors = [...html.matchAll(/<path class="mode-line" data-mode="[^"]+" d="[^"]*" stroke="([^"]+)"/g)].map((m) => m[1]);
    expect(new Set(modeColors).size).toBe(3);
    for (const c of modeColors) expect(okabeIto).toContain(c);
    const batchColors = [...html.matchAll(/<path class="loss-line" data-mode="sync" data-batch="\d+" d="[^"]*" stroke="([^"]+)"/g)].map((m) => m[1]);
    expect(batchColors).toEqual(okabeIto.slice(0, 2));
    // Cells with two finished seeds: local b2, sync b1, sync b2 (group:2 has one seed per cell).
    expect([...html.matchAll(/<path class="spread" data-mode="([^"]+)"/g)].map((m) => m[1])).toEqual(["local", "sync", "sync"]);
    expect([...html.matchAll(/<path class="loss-band" data-mode="([^"]+)" data-batch="(\d+)"/g)].map((m) => `${m[1]} ${m[2]}`)).toEqual(["local 2", "sync 1", "sync 2"]);
    expect(html).toMatch(/error bars span min to max over the seeds/);
    expect(html).toMatch(/the shaded band spans the smallest to the largest seed's curve \(min to max\)/);
    // The settings: the exact command (escaped) and the syncbn version.
    expect(html).toContain(`<th>command</th><td><code class="cmd">syncbn sweep --workers 4 --norms 'local,sync'</code></td>`);
    expect(html).toContain("<th>syncbn</th><td>9.8.7</td>");
  });

  it("draws no error bars or bands with one seed", () => {
    const one = ROWS.filter((r) => r.seed === 1);
    const html = renderReportHtml(one, { ...INFO, seeds: [1] });
    expect(html).not.toMatch(/class="spread"|class="loss-band"/);
    expect(html).toMatch(/One seed \(1\)/);
  });

  it("smooths a loss curve into at most the requested number of points, keeping the last step", () => {
    const values = Array.from({ length: 1000 }, (_, i) => (i % 2 ? 1 : 3));
    const s = smoothCurve(values, 100);
    expect(s.length).toBeLessThanOrEqual(101);
    expect(s[s.length - 1]!.i).toBe(999);
    for (const p of s.slice(1, -1)) expect(Math.abs(p.v - 2)).toBeLessThan(0.1);
  });
});
