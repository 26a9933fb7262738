// Training a PyTorch parity fixture with the real CLI: `syncbn train --init … --shuffle off`
// with the fixture's settings, then every tensor of weights.safetensors against PyTorch's
// expected ones. Shared by torch-parity.test.ts and whole-run.test.ts; test code only.

import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { expect } from "vitest";
import { relDiff, safetensorsValues } from "./compare.js";
import { runCli } from "./helpers.js";

/** settings.json of a fixture folder (scripts/make-torch-fixtures.py, make-whole-run-fixtures.py). */
export interface FixtureSettings {
  workers: number;
  batch: number;
  steps: number;
  lr: number;
  momentum: number;
  weightDecay: number;
  bnEps: number;
  bnMomentum: number;
  trainSize: number;
  testSize: number;
}

export function fixtureSettings<S extends FixtureSettings = FixtureSettings>(dir: string): S {
  return JSON.parse(readFileSync(join(dir, "settings.json"), "utf8")) as S;
}

export interface TorchRun {
  /** The fixture folder: settings.json, init.safetensors, expected-<norm>.safetensors. */
  dir: string;
  data: string;
  model: string;
  norm: "sync" | "local";
  kernels: "js" | "wasm" | "native";
  flags?: string[];
}

/** Trains the fixture's model with syncbn; the worst tensor (max |ours − theirs| / max |theirs|) against PyTorch's. */
export async function trainAgainstTorch(o: TorchRun): Promise<{ worst: { name: string; diff: number }; names: string[]; out: string }> {
  const s = fixtureSettings(o.dir);
  const out = mkdtempSync(join(tmpdir(), `syncbn-parity-${basename(o.dir)}-${o.kernels}-${o.norm}-`));
  const r = await runCli(
    [
      "train", "--model", o.model, "--norm", o.norm, "--data", o.data, "--init", join(o.dir, "init.safetensors"), "--shuffle", "off",
      "--workers", String(s.workers), "--batch", String(s.batch), "--steps", String(s.steps), "--lr", String(s.lr), "--momentum", String(s.momentum),
      "--weight-decay", String(s.weightDecay), "--bn-eps", String(s.bnEps), "--bn-momentum", String(s.bnMomentum), "--out", out,
      ...(o.flags ?? []),
    ],
    { timeoutMs: 300_000, env: { SYNCBN_KERNELS: o.kernels } },
  );
  expect(r.code, r.stderr).toBe(0);
  const ours = safetensorsValues(join(out, "weights.safetensors"));
  const theirs = safetensorsValues(join(o.dir, `expected-${o.norm}.safetensors`));
  expect([...ours.keys()].sort()).toEqual([...theirs.keys()].sort());
  let worst = { name: "", diff: 0 };
  for (const [name, t] of theirs) {
    const mine = ours.get(name)!;
    expect(mine.shape, name).toEqual(t.shape);
    const d = relDiff(mine.values, t.values);
    if (d > worst.diff) worst = { name, diff: d };
  }
  console.log(`${basename(o.dir)} ${o.kernels} --norm ${o.norm}: ${theirs.size} tensors, worst ${worst.name} at ${worst.diff.toExponential(2)} relative`);
  return { worst, names: [...theirs.keys()], out };
}
