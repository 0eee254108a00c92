import { learningRate, scheduleFactor, warmupStepsFromRatio } from "./schedule.ts";

function near(a: number, b: number, what: string, tol = 1e-12): void {
  if (Math.abs(a - b) > tol) throw new Error(`${what}: got ${a}, expected ${b}`);
}

Deno.test("schedule: cosine with warmup matches HF get_cosine_schedule_with_warmup", () => {
  // Values computed with transformers' lr_lambda for warmup 9, total 300 (the reference job).
  const o = { kind: "cosine" as const, baseLr: 2e-4, totalSteps: 300, warmupSteps: 9 };
  near(scheduleFactor(o, 0), 0, "step 0");
  near(scheduleFactor(o, 1), 1 / 9, "step 1");
  near(scheduleFactor(o, 8), 8 / 9, "step 8");
  near(scheduleFactor(o, 9), 1, "end of warmup");
  // progress = (k - 9) / 291; factor = 0.5 (1 + cos(pi * progress))
  for (const k of [10, 100, 154, 200, 299]) {
    const p = (k - 9) / 291;
    near(scheduleFactor(o, k), 0.5 * (1 + Math.cos(Math.PI * p)), `step ${k}`);
  }
  near(scheduleFactor(o, 300), 0, "after the end");
  near(learningRate(o, 9), 2e-4, "lr at the peak", 1e-18);
  // Monotone decay after warmup.
  for (let k = 10; k < 300; k++) {
    if (!(scheduleFactor(o, k) <= scheduleFactor(o, k - 1))) throw new Error(`not decaying at ${k}`);
  }
});

Deno.test("schedule: warmup from a ratio rounds up like HF, no-warmup and other kinds", () => {
  near(warmupStepsFromRatio(0.03, 300), 9, "0.03 of 300");
  near(warmupStepsFromRatio(0.03, 40), 2, "0.03 of 40");
  near(warmupStepsFromRatio(0, 40), 0, "no warmup");
  near(scheduleFactor({ kind: "cosine", baseLr: 1, totalSteps: 10, warmupSteps: 0 }, 0), 1, "cosine k=0");
  near(scheduleFactor({ kind: "linear", baseLr: 1, totalSteps: 10, warmupSteps: 2 }, 6), 0.5, "linear");
  near(scheduleFactor({ kind: "constant", baseLr: 1, totalSteps: 10, warmupSteps: 2 }, 1), 0.5, "constant");
  let threw = false;
  try {
    warmupStepsFromRatio(1.5, 10);
  } catch {
    threw = true;
  }
  if (!threw) throw new Error("ratio 1.5 accepted");
});
