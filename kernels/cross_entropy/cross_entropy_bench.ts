// Fused chunked lm_head + cross-entropy at the Llama-3.1-8B shape: T = 4096 tokens, C = 4096,
// V = 128256, chunks of 8192 vocabulary rows (quick: T = 128, C = 256, V = 4000, chunks of 1024).
// TFLOP/s counts the lm_head matmuls (forward 2·T·C·V; backward 4·T·C·V: the recomputed logits and
// dHidden); GB/s counts the hidden and weight bytes read once.

import { createBuffer, releaseBuffer, toF16Bits, writeBuffer } from "../../engine/buffers.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { Rng } from "../../engine/testing.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import {
  createCrossEntropyWorkspace,
  CROSS_ENTROPY_TOTALS_BYTES,
  crossEntropyBackward,
  crossEntropyForward,
} from "./cross_entropy.ts";

/** Fills a buffer with f16 values in [-range, range) by repeating one random block. */
function fillF16(gpu: Gpu, buf: GPUBuffer, count: number, range: number, rng: Rng): void {
  const block = toF16Bits(rng.uniforms(Math.min(count, 1 << 20), -range, range));
  for (let off = 0; off < count; off += block.length) {
    writeBuffer(gpu, buf, block.subarray(0, Math.min(block.length, count - off)), off * 2);
  }
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const { T, C, V, chunk } = ctx.quick
    ? { T: 128, C: 256, V: 4000, chunk: 1024 }
    : { T: 4096, C: 4096, V: 128256, chunk: 8192 };
  const shape = `T=${T} C=${C} V=${V}`;
  const rows: BenchRow[] = [];
  for (const gpu of ctx.gpus) {
    const rng = new Rng(1);
    const hidden = createBuffer(gpu, T * C * 2, "activations", "bench.hidden");
    const weight = createBuffer(gpu, V * C * 2, "weights", "bench.lm_head");
    fillF16(gpu, hidden, T * C, 1, rng);
    fillF16(gpu, weight, V * C, 0.05, rng);
    const labels = new Int32Array(T).map(() => (rng.next() < 0.3 ? -100 : rng.int(V)));
    const labelBuf = createBuffer(gpu, T * 4, "activations", "bench.labels");
    writeBuffer(gpu, labelBuf, labels);
    const loss = createBuffer(gpu, T * 4, "activations");
    const lse = createBuffer(gpu, T * 4, "activations");
    const totals = createBuffer(gpu, CROSS_ENTROPY_TOTALS_BYTES, "activations");
    const dHidden = createBuffer(gpu, T * C * 4, "activations");
    const ws = createCrossEntropyWorkspace(gpu, T, chunk);
    try {
      const common = { hidden, weight, labels: labelBuf, T, C, V, workspace: ws };
      const reps = ctx.quick ? 2 : 3;
      const fwd = await timeGpu(gpu, (enc) => crossEntropyForward(enc, { ...common, loss, lse, totals }), {
        warmup: 1,
        reps,
        samples: 3,
      });
      const bytes = 2 * (T * C + V * C);
      rows.push(gpuRow(gpu, "cross_entropy_fwd", shape, fwd.ms, { flops: 2 * T * C * V, bytes }));
      const bwd = await timeGpu(
        gpu,
        (enc) => crossEntropyBackward(enc, { ...common, lse, totals, dHidden, scale: 1, meanByCount: true }),
        { warmup: 1, reps, samples: 3 },
      );
      rows.push(gpuRow(gpu, "cross_entropy_bwd", shape, bwd.ms, { flops: 4 * T * C * V, bytes }));
    } finally {
      ws.destroy();
      for (const b of [hidden, weight, labelBuf, loss, lse, totals, dHidden]) releaseBuffer(b);
    }
  }
  return rows;
}
