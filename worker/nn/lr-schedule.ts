// The learning rate of each training step: a PyTorch schedule (constant,
// MultiStepLR, CosineAnnealingLR with eta_min 0) times a linear warm-up factor,
// stepped once per iteration (not per epoch). Pure functions of the step; the
// training loop sets SGD.lr from them. Not an optimizer, no state to checkpoint.

export const LR_SCHEDULES = ["constant", "step", "cosine"] as const;
export type LrScheduleKind = (typeof LR_SCHEDULES)[number];

/** A number of steps, or a percentage of the run's steps (as --renorm-warmup). */
export type StepsOrPercent = { steps: number } | { percent: number };

export interface LrSchedule {
  kind: LrScheduleKind;
  /** step: the steps at which lr is multiplied by gamma (MultiStepLR's milestones, counted in iterations). */
  milestones: StepsOrPercent[];
  gamma: number;
  /** Linear warm-up length; 0 steps = none. */
  warmup: StepsOrPercent;
}

export const CONSTANT_LR: LrSchedule = { kind: "constant", milestones: [], gamma: 0.1, warmup: { steps: 0 } };

/** Steps of a run of totalSteps that a StepsOrPercent names (a percentage rounds to the nearest step). */
export function resolveSteps(v: StepsOrPercent, totalSteps: number): number {
  return "steps" in v ? v.steps : Math.round((v.percent / 100) * totalSteps);
}

/**
 * lr of step t (0-based, t < totalSteps) = baseLr · warm(t) · sched(t), where
 *   warm(t) = min(1, (t + 1)/N) for a warm-up of N steps (Goyal et al. 2017: lr/N
 *     at the first step, the base rate from step N − 1 on); PyTorch's
 *     LinearLR(start_factor=1/N, end_factor=1, total_iters=N−1) gives the same;
 *   sched(t) = 1 (constant); gamma^(milestones ≤ t) (MultiStepLR after t
 *     scheduler.step() calls); (1 + cos(π·t/T))/2 with T = totalSteps
 *     (CosineAnnealingLR, T_max = T, eta_min = 0).
 * The product is PyTorch's ChainedScheduler([LinearLR(…), MultiStepLR/CosineAnnealingLR])
 * or LambdaLR with that lambda: the warm-up does not delay the schedule's clock.
 */
export function lrAt(s: LrSchedule, baseLr: number, t: number, totalSteps: number): number {
  const n = resolveSteps(s.warmup, totalSteps);
  const warm = n > 0 && t + 1 < n ? (t + 1) / n : 1;
  let sched = 1;
  if (s.kind === "step") {
    for (const m of s.milestones) if (resolveSteps(m, totalSteps) <= t) sched *= s.gamma;
  } else if (s.kind === "cosine") {
    sched = (1 + Math.cos((Math.PI * t) / totalSteps)) / 2;
  }
  return baseLr * warm * sched;
}

/** "constant", "step 100,200 ×0.1", "cosine", with ", warm-up 5%" when there is one: for logs and reports. */
export function lrScheduleText(s: LrSchedule): string {
  const v = (x: StepsOrPercent): string => ("steps" in x ? `${x.steps}` : `${x.percent}%`);
  const base = s.kind === "step" ? `step at ${s.milestones.map(v).join(",")} ×${s.gamma}` : s.kind;
  const warm = "steps" in s.warmup && s.warmup.steps === 0 ? "" : `, linear warm-up ${v(s.warmup)}`;
  return base + warm;
}
