// Embedding gather at the Llama-3.1-8B shape T = 4096, C = 4096, V = 128256 (quick: T = 256,
// C = 512, V = 4096), with random ids. Memory-bound: GB/s of the bytes that must move (ids, the
// gathered rows, the output), compared with `copy_bandwidth`.

import { createBuffer, releaseBuffer, upload } from "../../engine/buffers.ts";
import { Rng } from "../../engine/testing.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import { embeddingForward } from "./embedding.ts";

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const T = ctx.quick ? 256 : 4096;
  const C = ctx.quick ? 512 : 4096;
  const V = ctx.quick ? 4096 : 128256;
  const shape = `T=${T} C=${C} V=${V}`;
  for (const gpu of ctx.gpus) {
    const rng = new Rng(1);
    // The table's contents do not change the speed; WebGPU zero-fills new buffers.
    const table = createBuffer(gpu, V * C * 2, "workspace");
    const ids = upload(gpu, Int32Array.from({ length: T }, () => rng.int(V)));
    const out = createBuffer(gpu, T * C * 2, "workspace");
    try {
      const t = await timeGpu(gpu, (enc) => embeddingForward(enc, { table, ids, out, T, C, V }));
      rows.push(
        gpuRow(gpu, "embedding_fwd", shape, t.ms, { bytes: T * 4 + 2 * T * C * 2, ref: "copy_bandwidth" }),
      );
    } finally {
      for (const b of [table, ids, out]) releaseBuffer(b);
    }
  }
  return rows;
}
