// The progress line fitted to a terminal's width, its pace in plain logs, and the
// small wording helpers every command uses (plural, command line, outputs line).
// Pure functions: no processes here (test/run-outputs.test.ts runs the commands).
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { fitProgressLine, logThisStep, plural, progressBar, type ProgressField } from "../cli/progress-line.js";
import { commandLine, defaultOutDir, outputsLine } from "../cli/run-record.js";

/** The fields of a typical mid-run line on a TTY, 145 characters in all. */
function midRun(): ProgressField[] {
  return [
    { text: progressBar(0.32), keep: 6 },
    { text: "step 120/375 epoch 1/1", short: "step 120/375", keep: 0, glue: " " },
    { text: "loss (avg 20 steps) 0.6605", short: "loss 0.6605", keep: 1 },
    { text: "666 samples/s", keep: 3 },
    { text: "sync 28.3 ms (7.7 other ranks)", short: "sync 28.3 ms", keep: 5 },
    { text: "0:12 elapsed, ETA 0:25", short: "ETA 0:25", keep: 2 },
  ];
}

describe("the progress line", () => {
  it("keeps every field at 200 columns", () => {
    const line = fitProgressLine(midRun(), 200);
    expect(line).toBe("[######..............] step 120/375 epoch 1/1 · loss (avg 20 steps) 0.6605 · 666 samples/s · sync 28.3 ms (7.7 other ranks) · 0:12 elapsed, ETA 0:25");
    expect(line.length).toBeLessThan(200);
  });

  it("fits 80 columns (79 characters, so the terminal never wraps) by shortening and dropping the least useful fields first", () => {
    const line = fitProgressLine(midRun(), 80);
    expect(line.length).toBeLessThanOrEqual(79);
    expect(line).toMatch(/step 120\/375/);
    expect(line).toMatch(/loss/);
    expect(line).toMatch(/ETA 0:25/);
    expect(line).toMatch(/samples\/s/);
    expect(line).not.toMatch(/other ranks/);
  });

  it("keeps the step, the loss and the ETA at 40 columns", () => {
    const line = fitProgressLine(midRun(), 40);
    expect(line.length).toBeLessThanOrEqual(39);
    expect(line).toBe("step 120/375 · loss 0.6605 · ETA 0:25");
  });

  it("cuts a line that cannot fit even with the step alone, and leaves an unfitted line alone when there is no terminal", () => {
    expect(fitProgressLine(midRun(), 10)).toBe("step 120…");
    expect(fitProgressLine(midRun(), undefined)).toBe(fitProgressLine(midRun(), 1000));
  });

  it("prints about 20 lines of a 200-step run in a plain log, the first and the last step always", () => {
    const printed = Array.from({ length: 200 }, (_, i) => i + 1).filter((d) => logThisStep(d, 200, 1));
    expect(printed.length).toBeGreaterThanOrEqual(19);
    expect(printed.length).toBeLessThanOrEqual(22);
    expect(printed[0]).toBe(1);
    expect(printed[printed.length - 1]).toBe(200);
    const short = Array.from({ length: 7 }, (_, i) => i + 1).filter((d) => logThisStep(d, 7, 1));
    expect(short).toEqual([1, 2, 3, 4, 5, 6, 7]);
    const odd = Array.from({ length: 45 }, (_, i) => i + 1).filter((d) => logThisStep(d, 45, 1));
    expect(odd[odd.length - 1]).toBe(45);
  });
});

describe("wording", () => {
  it("says 1 step, 2 steps", () => {
    expect(plural(1, "step")).toBe("1 step");
    expect(plural(2, "step")).toBe("2 steps");
    expect(plural(1, "process", "processes")).toBe("1 process");
    expect(plural(3, "process", "processes")).toBe("3 processes");
  });

  it("records the command line with the token's value hidden, in either spelling", () => {
    expect(commandLine(["node", "main.js", "coordinator", "--token", "s3cret", "--world", "2"])).toBe("syncbn coordinator --token *** --world 2");
    expect(commandLine(["node", "main.js", "worker", "--token=s3cret", "--lr", "0.1"])).toBe("syncbn worker --token=*** --lr 0.1");
    expect(commandLine(["node", "main.js", "train", "--out", "my runs"])).toBe("syncbn train --out 'my runs'");
  });

  it("names the default folder runs/<UTC time> and lists the outputs that exist in the closing line", () => {
    expect(defaultOutDir(new Date("2026-12-06T18:30:00.123Z"))).toBe("runs/2026-12-06T18-30-00");
    const dir = mkdtempSync(join(tmpdir(), "syncbn-outputs-"));
    expect(outputsLine(dir)).toBe(`outputs: ${dir} (no files yet)`);
    for (const f of ["summary.json", "weights.safetensors", "checkpoint.bin", "metrics.jsonl"]) writeFileSync(join(dir, f), "");
    expect(outputsLine(dir)).toBe(`outputs: ${dir} (weights.safetensors, checkpoint.bin, metrics.jsonl, summary.json)`);
    expect(outputsLine(null, "none from this worker")).toBe("outputs: none from this worker");
  });
});
