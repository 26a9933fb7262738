import { configDefaults, defineConfig } from "vitest/config";

// Two projects, every test file in exactly one: `fast` (npm test: every unit test
// and a few real-process runs, about 2 minutes on 2 idle cores) and `slow` (the long
// real-process suites). npm run test:full runs both, which is what CI runs.
// `npx vitest run test/x.test.ts` runs a file once, in whichever project holds it.
// Chosen from measured file times (16 min for the whole suite on 2 shared cores,
// 6 Dec 2026): the slow files are those of 40 s or more, except train, cluster
// and conformance, which are the defining checks a change should see at once.
const FAST = [
  // unit tests, each under 10 s
  "test/affinity.test.ts",
  "test/bn-spread.test.ts",
  "test/cbn.test.ts",
  "test/codec.test.ts",
  "test/ws-mask.test.ts",
  "test/port-link.test.ts",
  "test/coordinator-blocks.test.ts",
  "test/coordinator.test.ts",
  "test/dashboard.browser.test.ts",
  "test/data.test.ts",
  "test/synthetic-data.test.ts",
  "test/docs-commands.test.ts",
  "test/graph.test.ts",
  "test/kernels.test.ts",
  "test/native-kernels.test.ts",
  "test/native-linear.test.ts",
  "test/native-passes.test.ts",
  "test/native-off.test.ts",
  "test/monitor.test.ts",
  "test/nn-layers.test.ts",
  "test/norm-kernels.test.ts",
  "test/onnx-ops-import.test.ts",
  "test/onnx-ops.test.ts",
  "test/progress-line.test.ts",
  "test/rank-segments.test.ts",
  "test/segmented-fused.test.ts",
  "test/reduce.test.ts",
  "test/report-bn.test.ts",
  "test/report-text.test.ts",
  "test/report.browser.test.ts",
  "test/safetensors.test.ts",
  "test/stats.test.ts",
  "test/stream-frames.test.ts",
  "test/torch-launch-wire.test.ts",
  // real processes: the CLI, outputs, hand-started coordinator and workers, resume, disk errors, the dashboard, the modes, PyTorch conformance
  "test/cli-usage.test.ts",
  "test/cluster.test.ts",
  "test/conformance.test.ts",
  "test/dashboard.test.ts",
  "test/disk.test.ts",
  "test/layout.test.ts",
  "test/norm-modes.test.ts",
  "test/precise.test.ts",
  "test/resume.test.ts",
  "test/run-outputs.test.ts",
  "test/sweep.test.ts",
  "test/train.test.ts",
  "test/weights.test.ts",
];

export default defineConfig({
  test: {
    testTimeout: 180_000,
    hookTimeout: 60_000,
    // Integration tests spawn real worker processes; two cores is all we have.
    maxWorkers: 2,
    fileParallelism: true,
    projects: [
      { extends: true, test: { name: "fast", include: FAST } },
      { extends: true, test: { name: "slow", include: ["test/**/*.test.ts"], exclude: [...configDefaults.exclude, ...FAST] } },
    ],
  },
});
