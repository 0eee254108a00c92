// Optimizer and gradient bookkeeping over the 167,772,160 LoRA parameters of Llama-3.1-8B
// (r = 64 on q,k,v,o,gate,up,down of 32 layers) as one flat f32 tensor (quick: 2^20).
// GB/s counts the bytes that must move per step: AdamW f32 reads and writes p, m, v and reads g
// (28 B/element); AdamW 8-bit reads and writes p and the two code bytes and reads g (16 B/element,
// plus the absmax); the gradient norm reads g once (4 B/element).

import { createBuffer, releaseBuffer, writeBuffer } from "../../engine/buffers.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { Rng } from "../../engine/testing.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import {
  adamw,
  adamw8bit,
  type AdamWHyper,
  createAdamW8bitState,
  GRAD_STATS_BYTES,
  gradStats,
  gradStatsWorkspaceBytes,
} from "./optim.ts";

/** Fills an f32 buffer by repeating one random block. */
function fillF32(gpu: Gpu, buf: GPUBuffer, count: number, std: number, rng: Rng): void {
  const block = Float32Array.from(rng.normals(Math.min(count, 1 << 20), std));
  for (let off = 0; off < count; off += block.length) {
    writeBuffer(gpu, buf, block.subarray(0, Math.min(block.length, count - off)), off * 4);
  }
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const N = ctx.quick ? 1 << 20 : 167_772_160;
  const shape = `N=${N}`;
  const hyper: AdamWHyper = { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 1 };
  const opts = { warmup: 2, reps: ctx.quick ? 5 : 10, samples: 5 };
  const rows: BenchRow[] = [];
  for (const gpu of ctx.gpus) {
    const rng = new Rng(1);
    const param = createBuffer(gpu, N * 4, "lora", "bench.param");
    const grad = createBuffer(gpu, N * 4, "lora", "bench.grad");
    fillF32(gpu, param, N, 0.02, rng);
    fillF32(gpu, grad, N, 1e-3, rng);
    try {
      const state = createAdamW8bitState(gpu, N);
      try {
        const t = await timeGpu(gpu, (enc) => adamw8bit(enc, { param, grad, state, hyper }), opts);
        const bytes = 16 * N + 16 * Math.ceil(N / 256);
        rows.push(gpuRow(gpu, "adamw8bit", shape, t.ms, { bytes }));
      } finally {
        state.destroy();
      }
      const m = createBuffer(gpu, N * 4, "optimizer", "bench.m");
      const v = createBuffer(gpu, N * 4, "optimizer", "bench.v");
      fillF32(gpu, m, N, 0, rng);
      fillF32(gpu, v, N, 0, rng);
      try {
        const t = await timeGpu(gpu, (enc) => adamw(enc, { param, grad, m, v, n: N, hyper }), opts);
        rows.push(gpuRow(gpu, "adamw_f32", shape, t.ms, { bytes: 28 * N }));
      } finally {
        releaseBuffer(m);
        releaseBuffer(v);
      }
      const grads = [{ buffer: grad, n: N }];
      const partials = createBuffer(gpu, gradStatsWorkspaceBytes(grads), "workspace");
      const stats = createBuffer(gpu, GRAD_STATS_BYTES, "workspace");
      try {
        const t = await timeGpu(gpu, (enc) => gradStats(enc, { grads, partials, stats }), opts);
        rows.push(gpuRow(gpu, "grad_norm", shape, t.ms, { bytes: 4 * N }));
      } finally {
        releaseBuffer(partials);
        releaseBuffer(stats);
      }
    } finally {
      releaseBuffer(param);
      releaseBuffer(grad);
    }
  }
  return rows;
}
