// CPU pinning of local worker processes (cli/affinity.ts): the cpu-list parser,
// the plan, and the real thing — a real child process pinned with taskset and
// its affinity read back from /proc.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { allowedCpus, parseCpuList, pinProcess, pinningProblem, planPinning } from "../cli/affinity.js";
import { ErrorCode } from "../shared/errors.js";

describe("CPU pinning", () => {
  it("reads Linux cpu lists, ranges and singles, and refuses malformed ones", () => {
    expect(parseCpuList("0-3,8,10-11\n")).toEqual([0, 1, 2, 3, 8, 10, 11]);
    expect(parseCpuList("5")).toEqual([5]);
    for (const bad of ["", "3-1", "a", "0-", "1,,2"]) expect(parseCpuList(bad), bad).toBeNull();
  });

  it("plans rank r on the r-th allowed CPU, and in auto mode only when the cores stay balanced", () => {
    expect(planPinning("auto", 4, [0, 1])).toEqual([0, 1, 0, 1]);
    expect(planPinning("auto", 2, [2, 5, 7])).toEqual([2, 5]);
    expect(planPinning("auto", 3, [0, 1])).toBeNull(); // 2 + 1 per core: left to the kernel
    expect(planPinning("on", 3, [0, 1])).toEqual([0, 1, 0]);
    expect(planPinning("off", 4, [0, 1])).toBeNull();
    expect(planPinning("auto", 4, null)).toBeNull();
    expect(() => planPinning("on", 4, null)).toThrow(expect.objectContaining({ code: ErrorCode.BadConfig }));
  });

  const problem = process.platform !== "linux" ? `not Linux (${process.platform})` : pinningProblem();
  if (problem) console.log(`skipping the real pinning test: ${problem}`);
  it.skipIf(problem !== null)("pins a real process: its affinity, read back from /proc, is the one CPU asked for", async () => {
    const cpus = allowedCpus();
    expect(cpus).not.toBeNull();
    const cpu = cpus![cpus!.length - 1]!;
    const child = spawn("sleep", ["30"], { stdio: "ignore" });
    try {
      await new Promise((r) => child.once("spawn", r));
      pinProcess(child.pid!, cpu);
      expect(allowedCpus(`/proc/${child.pid}/status`)).toEqual([cpu]);
    } finally {
      child.kill("SIGKILL");
    }
    expect(() => pinProcess(2 ** 22 + 12345, cpu)).toThrow(); // no such process
  });
});
