// RoPE rows at the Llama-3.1-8B attention shape T = 4096, H = 32, KVH = 8, D = 128 (quick:
// T = 256, H = 8, KVH = 2): q and k rotated in place, forward and backward (two launches per
// row). Memory-bound: GB/s of the bytes that must move, compared with `copy_bandwidth`.

import { releaseBuffer, upload } from "../../engine/buffers.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import { LLAMA31_ROPE_SCALING, ropeBackward, ropeForward, ropeInvFreq } from "./rope.ts";

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
  const H = ctx.quick ? 8 : 32;
  const KVH = ctx.quick ? 2 : 8;
  const D = 128;
  const shape = `T=${T} H=${H} KVH=${KVH} D=${D}`;
  const bytes = 2 * (T * H * D + T * KVH * D) * 2 + T * 4 + (D / 2) * 4;
  const ref = "copy_bandwidth";
  for (const gpu of ctx.gpus) {
    const q = randomF16(gpu, T * H * D, 1);
    const k = randomF16(gpu, T * KVH * D, 2);
    const positions = upload(gpu, Uint32Array.from({ length: T }, (_, t) => t));
    const invFreq = upload(gpu, ropeInvFreq(D, 500000, LLAMA31_ROPE_SCALING));
    const common = { positions, invFreq, T, D };
    try {
      for (const [name, op] of [["rope_fwd", ropeForward], ["rope_bwd", ropeBackward]] as const) {
        const t = await timeGpu(gpu, async (enc) => {
          await op(enc, { ...common, x: q, heads: H });
          await op(enc, { ...common, x: k, heads: KVH });
        });
        rows.push(gpuRow(gpu, name, shape, t.ms, { bytes, ref }));
      }
    } finally {
      for (const b of [q, k, positions, invFreq]) releaseBuffer(b);
    }
  }
  return rows;
}
