// report.html of a real (tiny) sweep, opened in headless Chromium through
// playwright-core: it renders, draws one accuracy line per mode, makes no network
// request, and leaves a screenshot in artifacts/report.png for CI to keep.
// Needs Debian's `chromium` package (/usr/bin/chromium); without it the tests are
// skipped with a warning, never passed silently.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, runCli } from "./helpers.js";

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  console.warn(`report.browser.test.ts: SKIPPED, no Chromium at ${CHROMIUM}; install the Debian package "chromium" (apt-get install chromium) to run the browser test of report.html`);
}

const NORMS = ["local", "sync", "groupnorm:8"];
const BATCHES = ["1", "2", "4"];
const SCREENSHOT = join(ROOT, "artifacts", "report.png");

describe.skipIf(!haveChromium)("report.html in headless Chromium", () => {
  // Loaded lazily so a machine without playwright-core's browser still loads this file.
  let browser: import("playwright-core").Browser;
  let TMP = "";
  let OUT = "";

  beforeAll(async () => {
    TMP = mkdtempSync(join(tmpdir(), "syncbn-report-"));
    OUT = join(TMP, "sweep");
    const r = await runCli(
      ["sweep", "--workers", "2", "--batches", BATCHES.join(","), "--norms", NORMS.join(","), "--model", "mlp", "--train-size", "384", "--test-size", "200", "--out", OUT],
      { timeoutMs: 170_000 },
    );
    if (r.code !== 0) throw new Error(`sweep failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
    const { chromium } = await import("playwright-core");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
  }, 200_000);

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
});
