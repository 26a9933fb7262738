// Who reduces with whom: the world scope (grad and sum rounds: every active rank)
// and the BN groups (fwd and bwd rounds: the active ranks among g·K .. g·K+K-1).
// Rebuilt only when the conventions or the membership change, so the hot path only
// indexes it. Not the rounds, nor who is active (coordinator.ts decides that).

import type { Phase } from "../shared/protocol.js";

/** Ranks that reduce together; `scope` also keys their one open round. */
export interface Scope {
  readonly scope: string;
  readonly members: readonly number[];
}

export class ScopeTable {
  private world: Scope = { scope: "world", members: [] };
  private groups: Scope[] = [];
  private groupSize = 1;
  private lowest = 0;

  rebuild(worldSize: number, groupSize: number, active: ReadonlySet<number>): void {
    const isActive = (r: number): boolean => active.has(r);
    this.groupSize = groupSize;
    this.world = { scope: "world", members: range(0, worldSize).filter(isActive) };
    this.groups = [];
    for (let g = 0; g * groupSize < worldSize; g++) {
      this.groups.push({ scope: `g${g}`, members: range(g * groupSize, (g + 1) * groupSize).filter(isActive) });
    }
    this.lowest = this.world.members[0] ?? 0;
  }

  /** Members and scope of the round a rank's contribution belongs to. */
  scopeOf(rank: number, phase: Phase): Scope {
    if (phase === "fwd" || phase === "bwd") return this.groups[Math.floor(rank / this.groupSize)]!;
    return this.world;
  }

  /** The lowest active rank: its BN group holds the authoritative running statistics. */
  get lowestActive(): number {
    return this.lowest;
  }
}

function range(from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push(i);
  return out;
}
