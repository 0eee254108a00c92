// Test harness shared by every kernel and model test: a seeded RNG, assertClose, and GPU tests
// that run once per backend present (the test name says which).

import { BACKENDS, type Gpu, openGpu } from "./gpu.ts";

/** Seeded xoshiro128** generator: the same seed gives the same stream on every machine. */
export class Rng {
  #s: Uint32Array;

  constructor(seed: number) {
    // splitmix32 expands the seed into the four words of state.
    this.#s = new Uint32Array(4);
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.#s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }

  /** Uniform 32-bit unsigned integer. */
  nextU32(): number {
    const s = this.#s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextU32() / 4294967296;
  }

  uniform(lo = -1, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }

  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }

  /** n uniform values in [lo, hi). */
  uniforms(n: number, lo = -1, hi = 1): Float64Array {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = this.uniform(lo, hi);
    return out;
  }

  normals(n: number, std = 1): Float64Array {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = this.normal() * std;
    return out;
  }

  /** The 4-word state, for checkpoints. */
  get state(): number[] {
    return Array.from(this.#s);
  }

  set state(words: number[]) {
    this.#s.set(words);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

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
