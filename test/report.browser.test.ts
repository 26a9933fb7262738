// report.html of a real (tiny) sweep, opened in headless Chromium through
// playwright-core: it renders, draws one accuracy line per mode, makes no network
// request, and leaves a screenshot in artifacts/report.png for CI to keep.
// Needs Debian's `chromium` package (/usr/bin/chromium); without it the tests are
// skipped with a warning, never passed silently.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { renderReportHtml, type SweepRunResult } from "../cli/report.js";
import { ROOT, runCli } from "./helpers.js";

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  console.warn(`report.browser.test.ts: SKIPPED, no Chromium at ${CHROMIUM}; install the Debian package "chromium" (apt-get install chromium) to run the browser test of report.html`);
}

const NORMS = ["local", "sync", "groupnorm:8"];
const BATCHES = ["1", "2", "4"];
const SCREENSHOT = join(ROOT, "artifacts", "report.png");
const SEEDS_SCREENSHOT = join(ROOT, "artifacts", "report-seeds.png");

/** Made-up results of three seeds (a real 3-seed sweep would take minutes here): loss curves that differ per seed. */
function seededRows(): SweepRunResult[] {
  const rows: SweepRunResult[] = [];
  ["local", "sync", "groupnorm:8", "renorm"].forEach((norm, k) => {
    for (const b of [2, 4, 8]) {
      for (const seed of [1, 2, 3]) {
        const acc = 0.25 + 0.05 * k + (0.08 - 0.02 * k) * Math.log2(b) + 0.02 * seed;
        const trainLoss = Array.from({ length: 200 }, (_, i) => 2.3 * Math.exp(-i / (40 + 10 * b + 15 * k)) + 0.4 + 0.08 * seed + 0.05 * Math.sin(i / 7 + seed));
        rows.push({ norm, perWorkerBatch: b, globalBatch: 4 * b, seed, testAccuracy: acc, testLoss: 1.5, trainSeconds: 3, syncWaitSeconds: 0.2, steps: 200, failure: null, trainLoss });
      }
    }
  });
  return rows;
}

describe.skipIf(!haveChromium)("report.html in headless Chromium", () => {
  // Loaded lazily so a machine without playwright-core's browser still loads this file.
  let browser: import("playwright-core").Browser;
  let TMP = "";
  let OUT = "";

  beforeAll(async () => {
    TMP = mkdtempSync(join(tmpdir(), "syncbn-report-"));
    OUT = join(TMP, "sweep");
    const r = await runCli(
      ["sweep", "--workers", "2", "--batches", BATCHES.join(","), "--norms", NORMS.join(","), "--model", "mlp", "--data", "synthetic", "--train-size", "384", "--test-size", "200", "--out", OUT],
      { timeoutMs: 480_000 }, // generous: the machine may be shared (2 cores, many processes)
    );
    if (r.code !== 0) throw new Error(`sweep failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
    const { chromium } = await import("playwright-core");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
  }, 520_000);

  afterAll(async () => {
    await browser?.close();
    if (TMP) rmSync(TMP, { recursive: true, force: true });
  });

  it("renders the title, one results row per mode and one accuracy line per mode, without any network request, and saves a screenshot", async () => {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    const requests: string[] = [];
    const errors: string[] = [];
    page.on("request", (req) => requests.push(req.url()));
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    await page.goto(pathToFileURL(join(OUT, "report.html")).href, { waitUntil: "load" });

    expect(await page.title()).toBe("syncbn sweep: mlp on synthetic, 2 workers");
    expect(await page.locator("h1").textContent()).toBe("syncbn sweep: mlp on synthetic, 2 workers");

    const rows = page.locator("#results-table tbody tr");
    expect(await rows.count()).toBe(NORMS.length);
    expect(await rows.evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-mode")))).toEqual(NORMS);
    // Batch-1 local BN fails (one value per channel in a BN layer); the table says so.
    expect(await rows.nth(0).locator("td").first().textContent()).toBe("failed");
    expect(await page.locator("#results-table thead th").count()).toBe(1 + BATCHES.length);

    const lines = page.locator("#accuracy-plot .mode-line");
    expect(await lines.count()).toBe(NORMS.length);
    expect(await lines.evaluateAll((els) => els.map((e) => e.getAttribute("data-mode")))).toEqual(NORMS);
    // Every mode has at least two finished batches here, so every line has length on screen.
    const lengths = await lines.evaluateAll((els) => els.map((e) => (e as SVGPathElement).getTotalLength()));
    for (const l of lengths) expect(l).toBeGreaterThan(10);
    expect(await page.locator("#accuracy-plot .mode-failed").count()).toBe(1);
    expect(await page.locator("svg.small").count()).toBe(NORMS.length);
    expect(await page.locator("svg.small .loss-line").count()).toBe(NORMS.length * BATCHES.length - 1);

    const box = await page.locator("#accuracy-plot").boundingBox();
    expect(box!.width).toBeGreaterThan(600);

    mkdirSync(join(ROOT, "artifacts"), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    expect(existsSync(SCREENSHOT)).toBe(true);

    expect(errors).toEqual([]);
    expect(requests.length).toBeGreaterThan(0);
    expect(requests.filter((u) => !u.startsWith("file:") && !u.startsWith("data:"))).toEqual([]);
    await page.close();
  }, 60_000);

  it("shows min–max error bars and loss bands for several seeds, inside the plots, with the loss axis labelled, and saves a screenshot", async () => {
    const file = join(TMP, "seeds.html");
    const info = {
      workers: 4, model: "mlp", data: "synthetic", norms: ["local", "sync", "groupnorm:8", "renorm"], batches: [2, 4, 8], seeds: [1, 2, 3],
      budget: "1 epoch of 1600 training samples", lrRule: "linear scaling, lr = 0.1 × global batch / 256", settings: [], date: "2026-01-01 00:00 UTC",
      machine: "test", node: process.version, version: "0.0.0-test", commands: ["syncbn sweep --workers 4 --seeds 1,2,3"], missingRuns: 0,
    };
    writeFileSync(file, renderReportHtml(seededRows(), info));
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    await page.goto(pathToFileURL(file).href, { waitUntil: "load" });
    // One error bar per (mode, batch) cell; one band per loss line.
    expect(await page.locator("#accuracy-plot .spread").count()).toBe(12);
    expect(await page.locator("svg.small .loss-band").count()).toBe(12);
    const plot = (await page.locator("#accuracy-plot").boundingBox())!;
    for (const b of await page.locator("#accuracy-plot .spread").evaluateAll((els) => els.map((e) => e.getBoundingClientRect().toJSON() as DOMRect))) {
      expect(b.height).toBeGreaterThan(2);
      expect(b.y).toBeGreaterThanOrEqual(plot.y);
      expect(b.y + b.height).toBeLessThanOrEqual(plot.y + plot.height);
    }
    const bands = await page.locator("svg.small .loss-band").evaluateAll((els) => els.map((e) => e.getBoundingClientRect().height));
    for (const h of bands) expect(h).toBeGreaterThan(2);
    // The y-axis label of every loss panel sits inside its panel, left of the plot area.
    const labels = await page.locator("svg.small").evaluateAll((svgs) =>
      svgs.map((svg) => {
        const label = [...svg.querySelectorAll("text.label")].find((t) => t.textContent === "training loss (cross-entropy)");
        const a = svg.getBoundingClientRect(), b = label?.getBoundingClientRect();
        return b ? b.left >= a.left && b.right <= a.left + 0.15 * a.width && b.height > 40 : false;
      }),
    );
    expect(labels).toEqual([true, true, true, true]);
    mkdirSync(join(ROOT, "artifacts"), { recursive: true });
    await page.screenshot({ path: SEEDS_SCREENSHOT, fullPage: true });
    await page.close();
  }, 60_000);
});
