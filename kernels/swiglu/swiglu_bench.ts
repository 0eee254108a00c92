// SwiGLU rows at the Llama-3.1-8B MLP shape T = 4096, I = 14336 (quick: T = 256, I = 1024).
// Memory-bound: GB/s of the bytes that must move, compared with `copy_bandwidth`.

import { createBuffer, releaseBuffer, upload } from "../../engine/buffers.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import { swigluBackward, swigluForward } from "./swiglu.ts";

/** n random f16 values of moderate size, made from bit patterns (fast for large n). */
function randomF16(gpu: Gpu, n: number, seed: number): GPUBuffer {
  const bits = new Uint16Array(n + (n & 1));
  let s = seed >>> 0;
  for (let i = 0; i < bits.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    bits[i] = 0x3000 | ((s >>> 16) & 0x8fff);
  }
  return upload(gpu, bits);
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const T = ctx.quick ? 256 : 4096;
  const I = ctx.quick ? 1024 : 14336;
  const n = T * I;
  const shape = `T=${T} I=${I}`;
  const ref = "copy_bandwidth";
  for (const gpu of ctx.gpus) {
    const g = randomF16(gpu, n, 1);
    const u = randomF16(gpu, n, 2);
    const dh = randomF16(gpu, n, 3);
    const h = createBuffer(gpu, n * 2, "workspace");
    const dg = createBuffer(gpu, n * 2, "workspace");
    const du = createBuffer(gpu, n * 2, "workspace");
    try {
      const fwd = await timeGpu(gpu, (enc) => swigluForward(enc, { g, u, h, n }));
      rows.push(gpuRow(gpu, "swiglu_fwd", shape, fwd.ms, { bytes: 3 * n * 2, ref }));
      const bwd = await timeGpu(gpu, (enc) => swigluBackward(enc, { dh, g, u, dg, du, n }));
      rows.push(gpuRow(gpu, "swiglu_bwd", shape, bwd.ms, { bytes: 5 * n * 2, ref }));
    } finally {
      for (const b of [g, u, dh, h, dg, du]) releaseBuffer(b);
    }
  }
  return rows;
}
