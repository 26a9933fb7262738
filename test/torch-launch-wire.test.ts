// python/syncbn without a coordinator: the tcp client against a scripted peer
// (TCP_NODELAY set, results parsed whether they arrive together or byte by byte,
// the round deadline kept by the kernel's SO_RCVTIMEO), and bn_kernels' fast
// SyncBatchNorm arithmetic against its naive float64 twins, including inputs
// with |mean| ≫ std. Real Python with torch (test/python/wire_kernels.py), as
// test/torch-launch.test.ts: without it the test fails saying so, unless
// SYNCBN_SKIP_TORCH_TESTS=1.

import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "./helpers.js";

const PYTHON = process.env.SYNCBN_TEST_PYTHON ?? "/usr/bin/python3";
const optOut = process.env.SYNCBN_SKIP_TORCH_TESTS === "1";

interface Report {
  wire: {
    nodelay: number;
    together: number[][];
    bytewise: number[];
    timeout: { code: string; message: string; seconds: number } | null;
  };
  kernels: { moments: number; y: number; sums: number; dx: number; torchFloat32Y: number };
}

describe.skipIf(optOut)("python/syncbn's wire and BN kernels", () => {
  it("sets TCP_NODELAY, parses buffered and split results, keeps the round deadline, and matches the float64 twins", () => {
    const r = spawnSync(PYTHON, [join(ROOT, "test", "python", "wire_kernels.py")], {
      encoding: "utf8",
      env: { ...process.env, PYTHONPATH: join(ROOT, "python") },
      timeout: 60_000,
    });
    expect(r.status, `${PYTHON} test/python/wire_kernels.py: ${r.stderr}`).toBe(0);
    const rep = JSON.parse(r.stdout.trim().split("\n").pop()!) as Report;
    expect(rep.wire.nodelay).toBeGreaterThan(0);
    expect(rep.wire.together).toEqual([[1, 2], [3, 4, 5]]);
    expect(rep.wire.bytewise).toEqual([6]);
    expect(rep.wire.timeout?.code).toBe("SYNCBN_ERR_TIMEOUT");
    expect(rep.wire.timeout?.message).toContain("step 0 fwd layer 0 within 0.5 s");
    // Statistics and the sums that go on the wire: float64-exact up to summation order.
    expect(rep.kernels.moments).toBeLessThan(1e-10);
    expect(rep.kernels.sums).toBeLessThan(1e-10);
    // y and dx: the rounding of float32 (2^-24 ≈ 6e-8) a few times, also at |mean| = 1e4·std ...
    expect(rep.kernels.y).toBeLessThan(5e-7);
    expect(rep.kernels.dx).toBeLessThan(5e-7);
    // ... where PyTorch's own float32 BN is a thousand times further off: the case is a real one.
    expect(rep.kernels.torchFloat32Y).toBeGreaterThan(1e-5);
  });
});
