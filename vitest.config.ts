import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 180_000,
    hookTimeout: 60_000,
    // Integration tests spawn real worker processes; two cores is all we have.
    maxWorkers: 2,
    fileParallelism: true,
  },
});
