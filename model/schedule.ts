// Learning-rate schedules with the semantics of Hugging Face transformers' schedulers
// (get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup, constant with warmup).
//
// Steps are 0-based optimizer steps: the update of training step k (k = 0 .. total-1) uses
// lr(k) = baseLr * factor(k), as the HF Trainer does (its scheduler advances after each
// optimizer step, so the first update uses factor(0), which is 0 whenever there is a warmup).
// Skipped steps (non-finite gradients) still advance the schedule, as in the HF Trainer.

export type ScheduleKind = "cosine" | "linear" | "constant";

export interface ScheduleOptions {
  kind: ScheduleKind;
  baseLr: number;
  /** Optimizer steps of the whole run. */
  totalSteps: number;
  /** Linear warmup from 0 to baseLr over this many steps. */
  warmupSteps: number;
  /** Cosine only: HF's num_cycles (default 0.5 = one half-wave from baseLr down to 0). */
  numCycles?: number;
}

/** The warmup length HF derives from a ratio: ceil(ratio * totalSteps). */
export function warmupStepsFromRatio(ratio: number, totalSteps: number): number {
  if (!(ratio >= 0 && ratio < 1)) throw new RangeError(`warmup ratio ${ratio} must lie in [0, 1)`);
  return Math.ceil(ratio * totalSteps);
}

/** The multiplier of baseLr at 0-based step k. */
export function scheduleFactor(o: ScheduleOptions, k: number): number {
  const w = o.warmupSteps;
  if (k < w) return k / Math.max(1, w);
  switch (o.kind) {
    case "constant":
      return 1;
    case "linear":
      return Math.max(0, (o.totalSteps - k) / Math.max(1, o.totalSteps - w));
    case "cosine": {
      const progress = (k - w) / Math.max(1, o.totalSteps - w);
      const cycles = o.numCycles ?? 0.5;
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress)));
    }
  }
}

/** The learning rate of 0-based step k. */
export function learningRate(o: ScheduleOptions, k: number): number {
  return o.baseLr * scheduleFactor(o, k);
}
