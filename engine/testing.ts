// Test harness shared by every kernel and model test: a seeded RNG, assertClose, and GPU tests
// that run once per backend present (the test name says which).

import { BACKENDS, type Gpu, openGpu } from "./gpu.ts";

export { Rng } from "./rng.ts";

/** A fresh seed for each run unless TEST_SEED is set; failures print it so they can be replayed. */
export function testSeed(): number {
  const fixed = Deno.env.get("TEST_SEED");
  return fixed ? Number(fixed) : (Math.random() * 2 ** 32) >>> 0;
}

export interface CloseOptions {
  /** |actual - expected| <= atol + rtol * |expected| for every element. */
  atol?: number;
  rtol?: number;
  label?: string;
}

export class AssertCloseError extends Error {
  override name = "AssertCloseError";
}

/** Elementwise closeness; reports the worst element, its index and the first mismatches. NaN or
 * infinity where the expected value is finite always fails. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol = 0, rtol = 0, label = "" }: CloseOptions = {},
): void {
  const where = label ? `${label}: ` : "";
  if (actual.length !== expected.length) {
    throw new AssertCloseError(`${where}length ${actual.length}, expected ${expected.length}`);
  }
  let worst = -1;
  let worstExcess = 0;
  let bad = 0;
  const first: string[] = [];
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    const tol = atol + rtol * Math.abs(e);
    const err = Math.abs(a - e);
    const ok = Number.isNaN(e) ? Number.isNaN(a) : (a === e || err <= tol);
    if (!ok) {
      bad++;
      if (first.length < 5) first.push(`[${i}] ${a} vs ${e}`);
      const excess = Number.isFinite(err) ? err / (tol || Number.MIN_VALUE) : Infinity;
      if (worst < 0 || excess > worstExcess) {
        worst = i;
        worstExcess = excess;
      }
    }
  }
  if (bad > 0) {
    const a = actual[worst];
    const e = expected[worst];
    throw new AssertCloseError(
      `${where}${bad} of ${actual.length} elements differ (atol ${atol}, rtol ${rtol}); worst at [${worst}]: ` +
        `${a} vs ${e} (error ${Math.abs(a - e)}); first: ${first.join(", ")}`,
    );
  }
}

/** ||actual - expected|| / ||expected|| (L2), with NaN for any non-finite actual value. */
export function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < expected.length; i++) {
    if (!Number.isFinite(actual[i])) return NaN;
    num += (actual[i] - expected[i]) ** 2;
    den += expected[i] ** 2;
  }
  return Math.sqrt(num / (den || 1));
}

/** Root mean square of the values. */
export function rms(values: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i] * values[i];
  return Math.sqrt(s / Math.max(1, values.length));
}

let testGpus: Promise<Gpu[]> | undefined;
const missingBackends: string[] = [];

/** One device per backend that has an adapter, shared by all test files of the process.
 * REQUIRE_BACKENDS=dawn,deno turns a missing backend into a failure (CI sets it);
 * TEST_BACKENDS=dawn limits the tests to the backends named. */
function openTestGpus(): Promise<Gpu[]> {
  testGpus ??= (async () => {
    const required = (Deno.env.get("REQUIRE_BACKENDS") ?? "").split(",").filter(Boolean);
    const adapter = Deno.env.get("TEST_ADAPTER") || undefined;
    const gpus: Gpu[] = [];
    const only = (Deno.env.get("TEST_BACKENDS") ?? "").split(",").filter(Boolean);
    for (const backend of BACKENDS) {
      if (only.length > 0 && !only.includes(backend)) continue;
      try {
        gpus.push(await openGpu({ backend, adapter }));
      } catch (e) {
        const reason = `${backend}: ${(e as Error).message}`;
        if (required.includes(backend)) throw new Error(`Required backend unavailable: ${reason}`);
        missingBackends.push(reason);
      }
    }
    return gpus;
  })();
  return testGpus;
}

/** Registers `fn` once per backend present, named "name [backend: adapter]". */
export async function gpuTest(name: string, fn: (gpu: Gpu) => Promise<void>): Promise<void> {
  const gpus = await openTestGpus();
  if (gpus.length === 0) {
    Deno.test(`${name} [no GPU backend]`, () => {
      throw new Error(`No WebGPU backend could open a device:\n${missingBackends.join("\n")}`);
    });
    return;
  }
  for (const gpu of gpus) {
    Deno.test({
      name: `${name} [${gpu.name}]`,
      sanitizeOps: false,
      sanitizeResources: false,
      fn: async () => {
        await fn(gpu);
        await gpu.sync();
      },
    });
  }
}
