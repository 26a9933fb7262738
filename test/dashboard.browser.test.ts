// The live dashboard of a real run (the real launcher, coordinator and three
// worker processes) in headless Chromium: every rank shown, the step advancing,
// a SIGKILLed worker marked lost with its rank (--on-worker-loss continue), the BN
// panel's numbers equal to metrics.jsonl's for the same step, no token on the page
// or in its stream; leaves artifacts/dashboard.png. Needs Debian's chromium;
// without it the test is skipped with a warning, never passed silently.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, startCli, waitForOutput, type RunningCli } from "./helpers.js";

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  console.warn(`dashboard.browser.test.ts: SKIPPED, no Chromium at ${CHROMIUM}; install the Debian package "chromium" (apt-get install chromium) to run the browser test of the dashboard`);
}
const SCREENSHOT = join(ROOT, "artifacts", "dashboard.png");
const TOKEN = `tok-${Math.random().toString(36).slice(2)}-never-shown`;

/** The worker process of `rank` among the launcher's children (Linux /proc). */
function workerPid(launcher: number, rank: number): number {
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid !== launcher) continue;
      const args = readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0");
      const i = args.indexOf("--rank");
      if (args.includes("worker") && i >= 0 && args[i + 1] === String(rank)) return Number(d);
    } catch {
      // the process went away while we looked
    }
  }
  throw new Error(`no worker process of rank ${rank} under pid ${launcher}`);
}

interface BnLine {
  type: "bn";
  step: number;
  layer: number;
  [k: string]: unknown;
}

describe.skipIf(!haveChromium)("the live dashboard in headless Chromium", () => {
  let browser: import("playwright-core").Browser;
  let run: RunningCli;
  let TMP = "";

  beforeAll(async () => {
    TMP = mkdtempSync(join(tmpdir(), "syncbn-dash-"));
    // Long enough to watch (the test stops it): mlp, 3 workers × 4, evaluation every 25 steps.
    run = startCli(
      ["train", "--workers", "3", "--batch", "4", "--model", "mlp", "--train-size", "6000", "--test-size", "200", "--steps", "100000", "--eval-every", "25", "--on-worker-loss", "continue", "--dashboard", "127.0.0.1:0", "--out", join(TMP, "run")],
      { env: { SYNCBN_TOKEN: TOKEN }, timeoutMs: 280_000 },
    );
    await waitForOutput(run, (o) => /dashboard: http:\/\/\S+/.test(o), 60_000);
    const { chromium } = await import("playwright-core");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    if (run && run.child.exitCode === null) {
      run.child.kill("SIGINT");
      await run.done;
    }
    if (TMP) rmSync(TMP, { recursive: true, force: true });
  });

  it("shows every rank, the step advancing, the BN panel equal to metrics.jsonl, and a killed worker as lost with its rank", async () => {
    const url = /dashboard: (http:\/\/\S+)/.exec(run.stdout())![1]!;
    expect(run.stdout() + run.stderr()).not.toContain(TOKEN);
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const requests: string[] = [];
    const errors: string[] = [];
    page.on("request", (req) => requests.push(req.url()));
    page.on("pageerror", (e) => errors.push(e.message));
    const streamed: string[] = [];
    page.on("response", async (res) => {
      if (res.url().endsWith("/events")) streamed.push(res.url());
    });
    await page.goto(url, { waitUntil: "load" });
    expect(await page.content()).not.toContain(TOKEN);

    // Every rank, labelled, running.
    const rows = page.locator("#ranks tbody tr");
    await page.waitForFunction(() => document.querySelectorAll('#ranks tbody tr[data-status="running"]').length === 3, null, { timeout: 60_000 });
    expect(await rows.locator("td.rank").allTextContents()).toEqual(["rank 0", "rank 1", "rank 2"]);

    // The step advances.
    await page.waitForFunction(() => Number(document.querySelector('#ranks tr[data-rank="0"] td.step')?.textContent) >= 0, null, { timeout: 60_000 });
    const first = Number(await page.locator('#ranks tr[data-rank="0"] td.step').textContent());
    await page.waitForFunction((s) => Number(document.querySelector('#ranks tr[data-rank="0"] td.step')?.textContent) > s + 5, first, { timeout: 60_000 });

    // The BN panel: both mlp BN layers, sampled at a step past 20; its numbers are metrics.jsonl's.
    await page.waitForFunction(() => document.querySelectorAll("#bn-table tbody tr").length === 2 && Number(document.querySelector('#bn-table tr[data-layer="0"] [data-field="step"]')?.textContent) >= 20, null, { timeout: 90_000 });
    expect(await page.locator("#bn-grid .layer").count()).toBe(2);
    expect(await page.locator("#bn-grid .layer .bn-mean").count()).toBe(2);
    const shown = await page.locator("#bn-table tbody tr").evaluateAll((trs) =>
      trs.map((tr) => Object.fromEntries([...tr.querySelectorAll("[data-field]")].map((td) => [td.getAttribute("data-field"), td.textContent]))),
    );
    // Value and step read in one evaluation: the page may redraw between two reads.
    const loss = await page.evaluate(() => ({ value: document.querySelector("#loss-value")?.textContent, step: Number(document.querySelector("#loss-step")?.textContent) }));
    // The launcher writes metrics.jsonl as the lines reach it: wait (bounded) for the step shown.
    type Line = { type: string; step: number; loss?: number } & Partial<BnLine>;
    const readMetrics = (): Line[] => ((t) => t.slice(0, t.lastIndexOf("\n")))(readFileSync(join(TMP, "run", "metrics.jsonl"), "utf8")).split("\n").filter(Boolean).map((l) => JSON.parse(l) as Line);
    const deadline = Date.now() + 30_000;
    let metrics = readMetrics();
    while (!metrics.some((m) => m.type === "step" && m.step >= loss.step) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      metrics = readMetrics();
    }
    for (const [layer, row] of shown.entries()) {
      const line = metrics.find((m) => m.type === "bn" && m.layer === layer && m.step === Number(row.step));
      expect(line, `metrics.jsonl has the bn line of layer ${layer} at step ${row.step}`).toBeDefined();
      // Named as the workers named them (protocol LayerNames): the mlp's graph node names.
      expect(line!.name).toBe(["bn1", "bn2"][layer]);
      expect(row.layer).toBe(`${line!.name} (layer ${layer})`);
      for (const f of ["meanDevMean", "meanDevMax", "logVarMean", "logVarMaxAbs", "runningMeanGap", "runningLogVar"]) {
        expect(row[f], `${f} of layer ${layer}`).toBe(Number(line![f]).toPrecision(4));
      }
    }
    const stepLine = metrics.find((m) => m.type === "step" && m.step === loss.step);
    expect(loss.value).toBe(stepLine!.loss!.toFixed(4));
    expect(await page.locator("#latency tbody tr").count()).toBeGreaterThanOrEqual(3);

    // Kill rank 2: the run goes on without it, and the page says so.
    process.kill(workerPid(run.child.pid!, 2), "SIGKILL");
    const lost = page.locator('#ranks tr[data-rank="2"]');
    await page.waitForFunction(() => document.querySelector('#ranks tr[data-rank="2"]')?.getAttribute("data-status") === "lost", null, { timeout: 60_000 });
    expect(await lost.locator("td.rank").textContent()).toBe("rank 2");
    expect(await lost.locator(".err").textContent()).toMatch(/disconnected/);
    const after = Number(await page.locator('#ranks tr[data-rank="0"] td.step').textContent());
    await page.waitForFunction((s) => Number(document.querySelector('#ranks tr[data-rank="0"] td.step')?.textContent) > s + 3, after, { timeout: 60_000 });
    expect(await page.locator('#ranks tr[data-rank="1"]').getAttribute("data-status")).toBe("running");
    // A test evaluation has been drawn by now.
    await page.waitForFunction(() => /%/.test(document.querySelector("#acc-latest")?.textContent ?? ""), null, { timeout: 60_000 });

    mkdirSync(join(ROOT, "artifacts"), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    expect(existsSync(SCREENSHOT)).toBe(true);

    // The stream itself, read the way the page reads it: no token in it.
    const body = await page.evaluate(async () => {
      const ctl = new AbortController();
      const res = await fetch("/events", { signal: ctl.signal });
      const reader = res.body!.getReader();
      let text = "";
      const until = Date.now() + 1500;
      while (Date.now() < until && text.length < 200_000) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      ctl.abort();
      return text;
    });
    expect(body).toContain("event: snapshot");
    expect(body).not.toContain(TOKEN);
    expect(await page.content()).not.toContain(TOKEN);
    expect(streamed.length).toBeGreaterThan(0);
    expect(errors).toEqual([]);
    expect(requests.filter((u) => !u.startsWith(url))).toEqual([]);
    await page.close();
  }, 240_000);
});
