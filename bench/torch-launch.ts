// The cost of sync BN for a PyTorch script under `syncbn launch`: the example's
// ResNet (examples/train_resnet.py), 4 ranks × 8 samples, --norm sync against
// --norm local (PyTorch's own BN kernel, no BN rounds; both have the gradient
// round), runs interleaved, median ms/step of rank 0. Prints numbers; not a test.
// Usage: node dist/bench/torch-launch.js [--steps N] [--repeats R] [--python PATH]

import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const args = process.argv.slice(2);
const flag = (name: string, dflt: string): string => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : dflt;
};
const steps = flag("--steps", "40");
const repeats = Number(flag("--repeats", "2"));
const python = flag("--python", "/usr/bin/python3");
const cli = fileURLToPath(new URL("../cli/main.js", import.meta.url));
const example = fileURLToPath(new URL("../../examples/train_resnet.py", import.meta.url));

function run(norm: string): number {
  const r = spawnSync(process.execPath, [cli, "launch", "--workers", "4", "--norm", norm, "--", python, example, "--batch", "8", "--steps", steps, "--json"], { encoding: "utf8" });
  const line = r.stdout.split("\n").find((l) => l.startsWith("[rank 0] {"));
  if (r.status !== 0 || !line) throw new Error(`launch --norm ${norm} failed (exit ${r.status}):\n${r.stderr}`);
  return (JSON.parse(line.slice("[rank 0] ".length)) as { msPerStep: number }).msPerStep;
}

const results: Record<string, number[]> = { sync: [], local: [] };
for (let i = 0; i < repeats; i++) {
  for (const norm of ["sync", "local"]) {
    const ms = run(norm);
    results[norm]!.push(ms);
    process.stderr.write(`run ${i + 1}/${repeats} --norm ${norm}: ${ms.toFixed(1)} ms/step\n`);
  }
}
const median = (v: number[]): number => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
const sync = median(results.sync!);
const local = median(results.local!);
console.log(`examples/train_resnet.py (ResNet-8, 3×32×32), 4 ranks × 8, ${steps} steps, median of ${repeats} runs:`);
console.log(`  --norm sync  ${sync.toFixed(1)} ms/step`);
console.log(`  --norm local ${local.toFixed(1)} ms/step`);
console.log(`  sync/local   ${(sync / local).toFixed(2)}x`);
