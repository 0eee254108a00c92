// GPU time of encoded work: timestamp queries where the adapter has them, otherwise wall time
// around the submit and onSubmittedWorkDone.
//
// The GPU's clock follows its load: on an H100 the SM clock falls from 1980 MHz to 345-780 MHz
// when submits leave it idle between them, and a kernel with any arithmetic then runs 1.5-4x
// slower (bench/NOTES.md). So the warm-up and the timed submits follow each other without a wait
// between them: the queue always holds the next submit while the GPU runs the current one, as it
// does in a training step or in PyTorch's own benchmarks.

import { Encoder } from "./encoder.ts";
import type { Gpu } from "./gpu.ts";

export interface Timing {
  /** Median milliseconds of one repetition. */
  ms: number;
  source: "timestamp" | "wall";
  samples: number[];
}

/** Submits kept in the queue during the warm-up. */
const WARMUP_DEPTH = 3;
/** GPU milliseconds each submit aims for: far more than the host needs to encode and submit the
 * next one, so that the GPU never waits between submits. */
const SUBMIT_MS = 10;
/** The warm-up ends once this many consecutive warm-up submits (timed on the GPU) agree within
 * STEADY_SPREAD per repetition: the clock has stopped rising. */
const STEADY_SUBMITS = 5;
const STEADY_SPREAD = 0.02;

function steady(perRep: number[]): boolean {
  if (perRep.length < STEADY_SUBMITS) return false;
  const last = perRep.slice(-STEADY_SUBMITS);
  return Math.max(...last) <= Math.min(...last) * (1 + STEADY_SPREAD);
}

/** Repetitions per submit for about SUBMIT_MS of GPU time, from `min` to `max`. */
function repsFor(msPerRep: number | undefined, min: number, max: number): number {
  if (msPerRep === undefined || !(msPerRep > 0)) return min;
  return Math.max(min, Math.min(max, Math.ceil(SUBMIT_MS / msPerRep)));
}

/** Times `encodeOnce` (which encodes one repetition of the work into the encoder): `samples`
 * submits of `reps` to `maxReps` repetitions each, after warm-up submits of at least `warmup`
 * repetitions. Short work gets more repetitions per submit (about SUBMIT_MS of GPU time each),
 * and submits are queued back to back, so the GPU never idles between them: its clock follows its
 * load, and on an H100 it falls from 1980 MHz to as low as 345 MHz when short submits leave it
 * waiting on the host (bench/NOTES.md). The warm-up lasts at least `warmupMs` of wall time and
 * until the per-repetition time of its submits is steady (at most 10 x `warmupMs`). With
 * timestamps every submit is timed on the GPU alone; without them, the timed submits are waited
 * for one by one (wall time). */
export async function timeGpu(
  gpu: Gpu,
  encodeOnce: (enc: Encoder) => Promise<void> | void,
  { warmup = 2, reps = 10, maxReps = 2000, samples = 5, warmupMs = 1000 }: {
    warmup?: number;
    reps?: number;
    /** The most repetitions in one submit. */
    maxReps?: number;
    samples?: number;
    warmupMs?: number;
  } = {},
): Promise<Timing> {
  const timed = gpu.caps.timestamps;
  const inFlight: Promise<unknown>[] = [];
  const warmPerRep: number[] = [];
  const warmStart = performance.now();
  while (warmup > 0) {
    const enc = new Encoder(gpu, { timed, label: "warmup" });
    const n = repsFor(warmPerRep.at(-1), warmup, maxReps);
    for (let i = 0; i < n; i++) await encodeOnce(enc);
    inFlight.push(enc.submit().then((ms) => ms !== undefined && warmPerRep.push(ms / n)));
    if (inFlight.length >= WARMUP_DEPTH) await inFlight.shift();
    const elapsed = performance.now() - warmStart;
    if (elapsed >= warmupMs && (!timed || steady(warmPerRep) || elapsed >= 10 * warmupMs)) break;
  }
  const perRep: number[] = [];
  if (timed) {
    const n = repsFor(warmPerRep.at(-1), reps, maxReps);
    const pending: Promise<number | undefined>[] = [];
    for (let s = 0; s < samples; s++) {
      const enc = new Encoder(gpu, { timed: true, label: "timed" });
      for (let i = 0; i < n; i++) await encodeOnce(enc);
      pending.push(enc.submit());
    }
    for (const ms of await Promise.all(pending)) perRep.push(ms! / n);
    await Promise.all(inFlight);
  } else {
    await Promise.all(inFlight);
    for (let s = 0; s < samples; s++) {
      const enc = new Encoder(gpu, { label: "timed" });
      for (let i = 0; i < reps; i++) await encodeOnce(enc);
      const t0 = performance.now();
      await enc.submit();
      await gpu.sync();
      perRep.push((performance.now() - t0) / reps);
    }
  }
  await gpu.sync();
  const sorted = [...perRep].sort((a, b) => a - b);
  return {
    ms: sorted[Math.floor(sorted.length / 2)],
    source: timed ? "timestamp" : "wall",
    samples: perRep,
  };
}
