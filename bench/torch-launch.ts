// The cost of sync BN for a PyTorch script under `syncbn launch` (issue 23, Speed),
// side by side in one run with PyTorch's own way: the example's ResNet
// (examples/train_resnet.py, --blocks 3 = resnet:3 by default), 4 ranks × 8,
//   syncbn: `syncbn launch --norm sync` against `--norm local` (PyTorch's own BN
//           kernel, no BN rounds; both have the gradient round);
//   DDP:    the same script body under DistributedDataParallel over gloo
//           (bench/torch_ddp_example.py), with bench/torch_resnet.py's CPU sync BN
//           (one all_reduce in forward, one in backward per BN layer) against plain BN.
// The four runs rotate order every repeat; each is rank 0's median ms/step after
// 5 warm-up steps. Prints numbers, ratios and PASS/MISS against the goals;
// never fails on a time. Not a test. Also a section of `npm run bench`.
// Usage: node dist/bench/torch-launch.js [--steps N] [--repeats R] [--blocks B] [--python PATH]

import { spawnSync } from "node:child_process";
import { fileURLToPath, pathToFileURL } from "node:url";
import { torchMissing } from "./resnet.js";
import { fmt, loadLine, machineLine, table, verdict } from "./stats.js";

export interface TorchLaunchOptions {
  steps: number;
  repeats: number;
  blocks: number;
  python: string;
  log(line: string): void;
}

export const DEFAULT_TORCH_LAUNCH: Omit<TorchLaunchOptions, "log"> = { steps: 30, repeats: 3, blocks: 3, python: "/usr/bin/python3" };
const WORKERS = 4;
const BATCH = 8;
/** The goal: syncbn's sync step ≤ 1.3 × its local step (and faster than DDP's sync step). */
export const SYNC_OVER_LOCAL_GOAL = 1.3;

const cli = fileURLToPath(new URL("../cli/main.js", import.meta.url));
const example = fileURLToPath(new URL("../../examples/train_resnet.py", import.meta.url));
const ddpScript = fileURLToPath(new URL("../../bench/torch_ddp_example.py", import.meta.url));

export type Config = "syncbn sync" | "syncbn local" | "DDP sync" | "DDP local";
const CONFIGS: readonly Config[] = ["syncbn sync", "syncbn local", "DDP sync", "DDP local"];

export interface TorchLaunchResult {
  /** Every run's ms/step, per configuration, in run order. */
  runs: Record<Config, number[]>;
  median: Record<Config, number>;
  /** null: not run; torchSkipped says why. */
  torchSkipped: string | null;
  loadStart: string;
  loadEnd: string;
}

function msPerStep(o: TorchLaunchOptions, config: Config): number {
  const norm = config.endsWith("sync") ? "sync" : "local";
  const common = ["--batch", String(BATCH), "--steps", String(o.steps), "--blocks", String(o.blocks)];
  const ours = config.startsWith("syncbn");
  const r = ours
    ? spawnSync(process.execPath, [cli, "launch", "--workers", String(WORKERS), "--norm", norm, "--", o.python, example, ...common, "--json"], { encoding: "utf8", timeout: 900_000 })
    : spawnSync(o.python, [ddpScript, "--norm", norm, "--workers", String(WORKERS), ...common], { encoding: "utf8", timeout: 900_000 });
  const line = ours ? r.stdout.split("\n").find((l) => l.startsWith("[rank 0] {"))?.slice("[rank 0] ".length) : r.stdout.split("\n").find((l) => l.startsWith("{"));
  if (r.status !== 0 || !line) throw new Error(`${config} failed (exit ${r.status}): ${(r.stderr ?? "").trim().split("\n").slice(-5).join(" | ")}`);
  return (JSON.parse(line) as { msPerStep: number }).msPerStep;
}

function median(v: readonly number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export async function runTorchLaunchBench(o: TorchLaunchOptions): Promise<TorchLaunchResult> {
  const loadStart = loadLine();
  const runs: Record<Config, number[]> = { "syncbn sync": [], "syncbn local": [], "DDP sync": [], "DDP local": [] };
  const torchSkipped = torchMissing(o.python);
  if (torchSkipped) {
    o.log(`torch-launch: not run: ${torchSkipped}`);
  } else {
    for (let i = 0; i < o.repeats; i++) {
      // Rotate the order each repeat: drifting load hits every configuration alike.
      for (const c of CONFIGS.map((_, k) => CONFIGS[(k + i) % CONFIGS.length]!)) {
        const ms = msPerStep(o, c);
        runs[c].push(ms);
        o.log(`torch-launch run ${i + 1}/${o.repeats} ${c}: ${fmt(ms, 1)} ms/step (load ${loadLine()})`);
      }
    }
  }
  const med = Object.fromEntries(CONFIGS.map((c) => [c, runs[c].length ? median(runs[c]) : NaN])) as Record<Config, number>;
  return { runs, median: med, torchSkipped, loadStart, loadEnd: loadLine() };
}

export function torchLaunchTargets(r: TorchLaunchResult): string[][] {
  if (r.torchSkipped) return [["PyTorch script under syncbn launch: sync vs local, against DDP", `not run: ${r.torchSkipped}`, "n/a"]];
  const m = r.median;
  const ours = m["syncbn sync"] / m["syncbn local"];
  return [
    [`PyTorch example resnet:3 under syncbn launch, 4 × 8: sync ≤ ${SYNC_OVER_LOCAL_GOAL} × local`, `${fmt(ours, 2)} × (${fmt(m["syncbn sync"], 1)} vs ${fmt(m["syncbn local"], 1)} ms/step)`, verdict(ours <= SYNC_OVER_LOCAL_GOAL)],
    ["PyTorch example resnet:3 sync step faster than DDP + gloo sync BN's", `${fmt(m["syncbn sync"] / m["DDP sync"], 2)} × DDP's (${fmt(m["syncbn sync"], 1)} vs ${fmt(m["DDP sync"], 1)} ms/step)`, verdict(m["syncbn sync"] < m["DDP sync"])],
  ];
}

export function torchLaunchMarkdown(r: TorchLaunchResult, o: Omit<TorchLaunchOptions, "log">): string[] {
  if (r.torchSkipped) return [`Not run: ${r.torchSkipped}.`];
  const m = r.median;
  const runs = (c: Config): string => r.runs[c].map((v) => fmt(v, 1)).join(", ");
  return [
    `\`examples/train_resnet.py --blocks ${o.blocks}\` (resnet:${o.blocks}, 3×32×32 synthetic images), ${WORKERS} ranks × ${BATCH}, ${o.steps} steps per run, ` +
      `rank 0's median ms/step after 5 warm-up steps; medians of ${o.repeats} runs per configuration, the four rotating order each repeat. ` +
      `syncbn: \`syncbn launch --norm sync|local\` (OMP_NUM_THREADS = cores ÷ 4). DDP: the same model, data, slicing and optimizer under ` +
      `DistributedDataParallel over gloo on 127.0.0.1 (bench/torch_ddp_example.py), sync BN = one all_reduce per BN layer in forward and one in backward ` +
      `(bench/torch_resnet.py's SyncBN; PyTorch 1.13's nn.SyncBatchNorm refuses CPU tensors), the same threads per process. Load ${r.loadStart} → ${r.loadEnd}.`,
    "",
    ...table(
      ["", "sync BN ms/step (runs)", "local BN ms/step (runs)", "sync / local"],
      [
        ["syncbn launch + syncbn.torch", `${fmt(m["syncbn sync"], 1)} (${runs("syncbn sync")})`, `${fmt(m["syncbn local"], 1)} (${runs("syncbn local")})`, `${fmt(m["syncbn sync"] / m["syncbn local"], 2)}×`],
        ["PyTorch DDP, gloo all_reduce sync BN", `${fmt(m["DDP sync"], 1)} (${runs("DDP sync")})`, `${fmt(m["DDP local"], 1)} (${runs("DDP local")})`, `${fmt(m["DDP sync"] / m["DDP local"], 2)}×`],
      ],
    ),
    "",
    ...table(["goal (issue 23)", "measured (medians)", "verdict"], torchLaunchTargets(r)),
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const args = process.argv.slice(2);
  const flag = (name: string, dflt: string): string => {
    const i = args.indexOf(name);
    return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : dflt;
  };
  const log = (l: string): void => console.log(l);
  const o: TorchLaunchOptions = {
    steps: Number(flag("--steps", String(DEFAULT_TORCH_LAUNCH.steps))),
    repeats: Number(flag("--repeats", String(DEFAULT_TORCH_LAUNCH.repeats))),
    blocks: Number(flag("--blocks", String(DEFAULT_TORCH_LAUNCH.blocks))),
    python: flag("--python", DEFAULT_TORCH_LAUNCH.python),
    log,
  };
  log(machineLine());
  const r = await runTorchLaunchBench(o);
  log("");
  for (const l of torchLaunchMarkdown(r, o)) log(l);
}
