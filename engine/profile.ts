// Per-dispatch GPU times: while a profile is attached to a Gpu (profileGpu), every encoder of it gives
// each dispatch a compute pass of its own with timestamp writes at its start and end, and read()
// turns them into milliseconds per dispatch and a summary by pipeline label and grid. The timeline also shows the idle gaps
// between dispatches (the GPU waiting on barriers, pass changes and copies). One pass per dispatch
// adds some overhead of its own, so the profiled total runs a little over an unprofiled one.

import type { Gpu } from "./gpu.ts";

const QUERY_RESOLVE_COPY_SRC = 0x200 | 0x04;
const MAP_READ_COPY_DST = 0x01 | 0x08;

/** Dispatches per query set (two timestamps each; WebGPU query sets hold at most 4096). */
const DISPATCHES_PER_SET = 2048;
/** The most dispatches one profile times (a training step of an 8B model has a few thousand). */
export const MAX_PROFILED_DISPATCHES = 16 * DISPATCHES_PER_SET;

export interface DispatchTime {
  label: string;
  /** Start relative to the first dispatch's start, and duration, in milliseconds. */
  startMs: number;
  ms: number;
}

export interface ProfileSummary {
  dispatches: DispatchTime[];
  /** First start to last end. */
  spanMs: number;
  /** Sum of the dispatches' durations; spanMs - busyMs is idle time between them. */
  busyMs: number;
  /** By label, longest total first. */
  byLabel: { label: string; count: number; ms: number }[];
}

/** Timestamps of the dispatches of every encoder of one Gpu while attached (profileGpu). */
export class DispatchProfile {
  readonly #labels: string[] = [];
  readonly #sets: GPUQuerySet[] = [];
  #closed = false;

  constructor(readonly gpu: Gpu) {
    if (!gpu.caps.timestamps) throw new Error(`${gpu.name} has no timestamp-query; it cannot profile`);
  }

  /** The descriptor of the pass that holds the next dispatch (one dispatch per pass). */
  nextPass(label: string): GPUComputePassDescriptor {
    if (this.#closed) throw new Error("the profile was already read");
    const i = this.#labels.length;
    if (i >= MAX_PROFILED_DISPATCHES) {
      throw new RangeError(`a profile times at most ${MAX_PROFILED_DISPATCHES} dispatches`);
    }
    const set = Math.floor(i / DISPATCHES_PER_SET);
    if (set === this.#sets.length) {
      this.#sets.push(this.gpu.device.createQuerySet({ type: "timestamp", count: 2 * DISPATCHES_PER_SET }));
    }
    const k = 2 * (i % DISPATCHES_PER_SET);
    this.#labels.push(label);
    return {
      timestampWrites: {
        querySet: this.#sets[set],
        beginningOfPassWriteIndex: k,
        endOfPassWriteIndex: k + 1,
      },
    };
  }

  /** After the profiled work was submitted: resolves and reads the timestamps, frees the profile. */
  async read(): Promise<ProfileSummary> {
    this.#closed = true;
    const n = 2 * this.#labels.length;
    if (n === 0) {
      this.destroy();
      return summarize([], new BigUint64Array(0));
    }
    const bytes = n * 8;
    const resolve = this.gpu.device.createBuffer({ size: bytes, usage: QUERY_RESOLVE_COPY_SRC });
    const readback = this.gpu.device.createBuffer({ size: bytes, usage: MAP_READ_COPY_DST });
    try {
      const commands = this.gpu.device.createCommandEncoder({ label: "profile resolve" });
      this.#sets.forEach((set, s) => {
        const count = Math.min(2 * DISPATCHES_PER_SET, n - s * 2 * DISPATCHES_PER_SET);
        commands.resolveQuerySet(set, 0, count, resolve, s * 2 * DISPATCHES_PER_SET * 8);
      });
      commands.copyBufferToBuffer(resolve, 0, readback, 0, bytes);
      this.gpu.device.queue.submit([commands.finish()]);
      await readback.mapAsync(1);
      const t = new BigUint64Array(readback.getMappedRange().slice(0));
      readback.unmap();
      this.gpu.throwIfFailed();
      return summarize(this.#labels, t);
    } finally {
      resolve.destroy();
      readback.destroy();
      this.destroy();
    }
  }

  destroy(): void {
    this.#closed = true;
    for (const s of this.#sets) s.destroy();
    this.#sets.length = 0;
  }
}

/** Profiles every dispatch that encoders of `gpu` encode while `work` runs (each in a timed pass of
 * its own); returns the work's result and the summary. */
export async function profileGpu<T>(
  gpu: Gpu,
  work: () => Promise<T>,
): Promise<{ result: T; profile: ProfileSummary }> {
  if (gpu.profile) throw new Error(`${gpu.name} is already being profiled`);
  const profile = new DispatchProfile(gpu);
  gpu.profile = profile;
  let result: T;
  try {
    result = await work();
  } catch (e) {
    profile.destroy();
    throw e;
  } finally {
    gpu.profile = undefined;
  }
  return { result, profile: await profile.read() };
}

/** How a profile names a dispatch: the pipeline (shader file and entry point) and the grid. */
export function dispatchLabel(pipeline: GPUComputePipeline, x: number, y: number, z: number): string {
  return `${pipeline.label} [${x}x${y}x${z}]`;
}

/** Times from raw timestamps (nanoseconds, start and end of dispatch i at 2i and 2i + 1). */
export function summarize(labels: readonly string[], t: BigUint64Array): ProfileSummary {
  if (labels.length === 0) return { dispatches: [], spanMs: 0, busyMs: 0, byLabel: [] };
  const t0 = t[0];
  let last = t0;
  let busyMs = 0;
  const groups = new Map<string, { count: number; ms: number }>();
  const dispatches = labels.map((label, i) => {
    const start = t[2 * i], end = t[2 * i + 1] > start ? t[2 * i + 1] : start;
    if (end > last) last = end;
    const ms = Number(end - start) / 1e6;
    busyMs += ms;
    const g = groups.get(label) ?? { count: 0, ms: 0 };
    g.count++;
    g.ms += ms;
    groups.set(label, g);
    return { label, startMs: Number(start - t0) / 1e6, ms };
  });
  const byLabel = [...groups].map(([label, g]) => ({ label, ...g })).sort((a, b) => b.ms - a.ms);
  return { dispatches, spanMs: Number(last - t0) / 1e6, busyMs, byLabel };
}

/** A few lines: span, busy and idle time, then the `top` groups by total time: by label (pipeline and
 * grid), or with `byPipeline` by pipeline alone (every grid of a shader together). */
export function formatProfile(p: ProfileSummary, top = 12, byPipeline = false): string {
  const lines = [
    `${p.dispatches.length} dispatches, span ${p.spanMs.toFixed(3)} ms, busy ${p.busyMs.toFixed(3)} ms, ` +
    `idle between dispatches ${(p.spanMs - p.busyMs).toFixed(3)} ms`,
  ];
  let groups = p.byLabel;
  if (byPipeline) {
    const merged = new Map<string, { count: number; ms: number }>();
    for (const g of groups) {
      const key = g.label.replace(/ \[[0-9x]+\]$/, "");
      const m = merged.get(key) ?? { count: 0, ms: 0 };
      m.count += g.count;
      m.ms += g.ms;
      merged.set(key, m);
    }
    groups = [...merged].map(([label, m]) => ({ label, ...m })).sort((a, b) => b.ms - a.ms);
  }
  for (const g of groups.slice(0, top)) {
    lines.push(
      `  ${g.label}: ${g.count} x ${(1000 * g.ms / g.count).toFixed(1)} us = ${g.ms.toFixed(3)} ms ` +
        `(${(100 * g.ms / Math.max(1e-9, p.busyMs)).toFixed(1)}%)`,
    );
  }
  return lines.join("\n");
}

/** The `top` longest idle gaps between consecutive dispatches (in the order they were encoded), with
 * the dispatches on either side: where the GPU waited for the CPU, for copies or for clears. */
export function formatGaps(p: ProfileSummary, top = 10): string {
  const gaps = p.dispatches.slice(1).map((d, i) => {
    const prev = p.dispatches[i];
    return { ms: d.startMs - (prev.startMs + prev.ms), at: d.startMs, before: prev.label, after: d.label };
  }).sort((a, b) => b.ms - a.ms);
  return gaps.slice(0, top).map((g) =>
    `  ${g.ms.toFixed(3)} ms idle at ${g.at.toFixed(3)} ms: after ${g.before}, before ${g.after}`
  ).join("\n");
}
