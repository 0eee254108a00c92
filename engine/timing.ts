// GPU time of encoded work: timestamp queries where the adapter has them, otherwise wall time
// around the submit and onSubmittedWorkDone.

import { Encoder } from "./encoder.ts";
import type { Gpu } from "./gpu.ts";

export interface Timing {
  /** Median milliseconds of one repetition. */
  ms: number;
  source: "timestamp" | "wall";
  samples: number[];
}

/** Times `encodeOnce` (which encodes one repetition of the work into the encoder): `reps`
 * repetitions per submit, `samples` submits, after warm-up submits of `warmup` repetitions that
 * go on for at least `warmupMs` of wall time, so that the GPU's clocks have left their idle
 * state (a short kernel timed right after an idle pause runs several times slower). */
export async function timeGpu(
  gpu: Gpu,
  encodeOnce: (enc: Encoder) => Promise<void> | void,
  { warmup = 2, reps = 10, samples = 5, warmupMs = 150 }: {
    warmup?: number;
    reps?: number;
    samples?: number;
    warmupMs?: number;
  } = {},
): Promise<Timing> {
  const warmStart = performance.now();
  for (let round = 0; warmup > 0 && round < 1000; round++) {
    const enc = new Encoder(gpu, { label: "warmup" });
    for (let i = 0; i < warmup; i++) await encodeOnce(enc);
    await enc.submit();
    await gpu.sync();
    if (performance.now() - warmStart >= warmupMs) break;
  }
  const source = gpu.caps.timestamps ? "timestamp" : "wall";
  const perRep: number[] = [];
  for (let s = 0; s < samples; s++) {
    const enc = new Encoder(gpu, { timed: source === "timestamp", label: "timed" });
    for (let i = 0; i < reps; i++) await encodeOnce(enc);
    const t0 = performance.now();
    const gpuMs = await enc.submit();
    await gpu.sync();
    const ms = gpuMs ?? performance.now() - t0;
    perRep.push(ms / reps);
  }
  const sorted = [...perRep].sort((a, b) => a - b);
  return { ms: sorted[Math.floor(sorted.length / 2)], source, samples: perRep };
}
