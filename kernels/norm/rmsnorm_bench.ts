// RMSNorm rows at the Llama-3.1-8B shape T = 4096, C = 4096 (quick: T = 256, C = 512): forward,
// backward dx, and the weight gradient. Memory-bound: GB/s of the bytes that must move, compared
// with `copy_bandwidth`.

import { createBuffer, releaseBuffer, upload, uploadF16 } from "../../engine/buffers.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { Rng } from "../../engine/testing.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import {
  rmsnormBackward,
  rmsnormForward,
  rmsnormWeightGrad,
  rmsnormWeightGradWorkspaceBytes,
} from "./rmsnorm.ts";

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
  const C = ctx.quick ? 512 : 4096;
  const shape = `T=${T} C=${C}`;
  const ref = "copy_bandwidth";
  for (const gpu of ctx.gpus) {
    const x = randomF16(gpu, T * C, 1);
    const dy = randomF16(gpu, T * C, 2);
    const w = uploadF16(gpu, new Rng(3).uniforms(C, 0.5, 1.5));
    const y = createBuffer(gpu, T * C * 2, "workspace");
    const dx = createBuffer(gpu, T * C * 2, "workspace");
    const rstd = createBuffer(gpu, T * 4, "workspace");
    const dw = createBuffer(gpu, C * 4, "workspace");
    const ws = createBuffer(gpu, rmsnormWeightGradWorkspaceBytes(T, C), "workspace");
    try {
      const eps = 1e-5;
      const fwd = await timeGpu(gpu, (enc) => rmsnormForward(enc, { x, w, y, rstd, T, C, eps }));
      rows.push(gpuRow(gpu, "rmsnorm_fwd", shape, fwd.ms, { bytes: 2 * T * C * 2 + C * 2 + T * 4, ref }));
      const bwd = await timeGpu(gpu, (enc) => rmsnormBackward(enc, { dy, x, w, rstd, dx, T, C }));
      rows.push(gpuRow(gpu, "rmsnorm_bwd", shape, bwd.ms, { bytes: 3 * T * C * 2 + C * 2 + T * 4, ref }));
      const dwT = await timeGpu(
        gpu,
        (enc) => rmsnormWeightGrad(enc, { dy, x, rstd, dw, workspace: ws, T, C }),
      );
      rows.push(gpuRow(gpu, "rmsnorm_bwd_dw", shape, dwT.ms, { bytes: 2 * T * C * 2 + T * 4 + C * 4, ref }));
    } finally {
      for (const b of [x, dy, w, y, dx, rstd, dw, ws]) releaseBuffer(b);
    }
  }
  return rows;
}
