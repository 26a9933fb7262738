// Proof against PyTorch: `syncbn train --init … --shuffle off` with W workers × B
// ends within 1e-4 (relative, per tensor) of PyTorch training the same model
// from the same weights in float64 as one global batch, for `--norm sync` and
// `--norm local`, on every tensor of weights.safetensors; and the mlp with the
// training recipe of issue 24 (cosine + warm-up, Nesterov, label smoothing). The
// fixtures come from scripts/make-torch-fixtures.py and make-recipe-fixtures.py
// (run by hand with PyTorch); no PyTorch needed here.
// The reference kernels (SYNCBN_KERNELS=js) run every case; resnet:1 runs on the
// WebAssembly kernels too (their conv dW, summed in float32 over the batch, once
// ended 3e-2 away here; test/whole-run.test.ts holds both at larger sizes).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { relDiff, safetensorsValues } from "./compare.js";
import { describe, expect, it } from "vitest";
import { ROOT } from "./helpers.js";
import { trainAgainstTorch } from "./torch-train.js";

const FIXTURES = join(ROOT, "test", "fixtures", "torch");

/** Trains the fixture's model with syncbn and returns the worst tensor against PyTorch's expected weights. */
function compare(fixture: string, model: string, norm: "sync" | "local", flags: string[] = [], kernels: "js" | "wasm" = "js"): ReturnType<typeof trainAgainstTorch> {
  return trainAgainstTorch({ dir: join(FIXTURES, fixture), data: join(FIXTURES, "data"), model, norm, kernels, flags });
}

describe("syncbn against PyTorch, trained from the same safetensors weights", () => {
  it("keeps sync and local fixtures apart: the two modes end more than 1e-3 apart, so 1e-4 tells them apart", () => {
    for (const fixture of ["cnn", "resnet1"]) {
      const sync = safetensorsValues(join(FIXTURES, fixture, "expected-sync.safetensors"));
      const local = safetensorsValues(join(FIXTURES, fixture, "expected-local.safetensors"));
      const worst = Math.max(...[...sync].map(([n, t]) => relDiff(local.get(n)!.values, t.values)));
      expect(worst, fixture).toBeGreaterThan(1e-3);
    }
  });

  for (const norm of ["sync", "local"] as const) {
    it(`ends cnn within 1e-4 of PyTorch on every tensor, 4 workers × 4 with --norm ${norm}`, async () => {
      const { worst, names } = await compare("cnn", "cnn", norm);
      expect(names).toHaveLength(23);
      expect(worst.diff, worst.name).toBeLessThan(1e-4);
    }, 300_000);
  }

  it("ends mlp within 1e-4 of PyTorch with --lr-schedule cosine --warmup 2 --nesterov --label-smoothing 0.1, and logs PyTorch's rate of every step", async () => {
    const s = JSON.parse(readFileSync(join(FIXTURES, "mlp-recipe", "settings.json"), "utf8")) as { lrs: number[] };
    const flags = ["--lr-schedule", "cosine", "--warmup", "2", "--nesterov", "--label-smoothing", "0.1"];
    const { worst, out } = await compare("mlp-recipe", "mlp", "sync", flags);
    expect(worst.diff, worst.name).toBeLessThan(1e-4);
    const lrs = readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n").filter((l) => l.includes('"type":"step"')).map((l) => (JSON.parse(l) as { lr: number }).lr);
    expect(lrs).toHaveLength(s.lrs.length);
    lrs.forEach((lr, t) => expect(Math.abs(lr - s.lrs[t]!), `step ${t}`).toBeLessThanOrEqual(1e-12 * s.lrs[t]!));
  }, 300_000);

  for (const kernels of ["js", "wasm"] as const) {
    for (const norm of ["sync", "local"] as const) {
      it(`ends resnet:1 within 1e-4 of PyTorch on every tensor, 4 workers × 4 with --norm ${norm} (${kernels} kernels)`, async () => {
        const { worst } = await compare("resnet1", "resnet:1", norm, [], kernels);
        expect(worst.diff, worst.name).toBeLessThan(1e-4);
      }, 300_000);
    }
  }
});
