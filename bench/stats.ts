// Small helpers every bench section shares: percentiles, the machine line, and
// markdown tables. No timing policy here: a benchmark reports, it never fails on a time.

import { cpus, loadavg } from "node:os";

export function percentile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const s = Float64Array.from(values).sort();
  // Nearest-rank on the sorted samples; q in [0, 1].
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[i]!;
}

export interface Spread {
  median: number;
  p90: number;
  n: number;
}

export function spread(values: readonly number[]): Spread {
  return { median: percentile(values, 0.5), p90: percentile(values, 0.9), n: values.length };
}

export function machineLine(): string {
  const c = cpus();
  return `${c[0]?.model ?? "unknown CPU"}, ${c.length} cores, Node ${process.version}, ${process.platform}`;
}

export function loadLine(): string {
  return loadavg()
    .map((l) => l.toFixed(2))
    .join(" / ");
}

export function table(header: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const line = (cells: readonly string[]): string => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)];
}

export function fmt(v: number, digits = 3): string {
  return Number.isFinite(v) ? v.toFixed(digits) : "n/a";
}

export function verdict(ok: boolean): string {
  return ok ? "PASS" : "MISS";
}
