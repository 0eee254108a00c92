// Memory-bound elementwise rows at the Llama-3.1-8B activation size T = 4096, C = 4096 (quick:
// T = 256, C = 512): residual add and every cast, plus `copy_bandwidth`, a plain copy of 1 GiB
// (quick 16 MiB) that the memory-bound rows of every family are measured against: the faster of
// copyBufferToBuffer and a copy through a compute shader (bench/shader_copy.ts; Dawn's buffer copy
// runs at about 850 GB/s on an H100, the shader at 2.8-2.9 TB/s). GB/s counts bytes read plus bytes
// written.

import { createBuffer, releaseBuffer, upload } from "../../engine/buffers.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import { copyReferenceBytes, shaderCopyGbps } from "../../bench/shader_copy.ts";
import { castElements, ELEMENT_BYTES, type ElementType, residualAdd } from "./elementwise.ts";

/** A buffer of n random 16-bit values of moderate size (bit patterns valid as f16 and bf16). */
function randomHalves(gpu: Gpu, n: number, seed: number): GPUBuffer {
  const bits = new Uint16Array(n + (n & 1));
  let s = seed >>> 0;
  for (let i = 0; i < bits.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    bits[i] = 0x3000 | ((s >>> 16) & 0x8fff);
  }
  return upload(gpu, bits);
}

/** Milliseconds of one copy of `bytes`: wall time of 2N copies minus N copies in one submit each,
 * over N, so the submit and wait overhead cancels (copies cannot carry timestamps here). */
async function copyMs(gpu: Gpu, src: GPUBuffer, dst: GPUBuffer, bytes: number, n: number): Promise<number> {
  const run = async (reps: number) => {
    const enc = gpu.device.createCommandEncoder({ label: "copy_bandwidth" });
    for (let i = 0; i < reps; i++) enc.copyBufferToBuffer(src, 0, dst, 0, bytes);
    const t0 = performance.now();
    gpu.device.queue.submit([enc.finish()]);
    await gpu.device.queue.onSubmittedWorkDone();
    return performance.now() - t0;
  };
  await run(2);
  const samples: number[] = [];
  for (let s = 0; s < 5; s++) {
    const one = await run(n);
    const two = await run(2 * n);
    samples.push(Math.max(1e-6, (two - one) / n));
  }
  gpu.throwIfFailed();
  samples.sort((a, b) => a - b);
  return samples[2];
}

async function copyRow(gpu: Gpu, quick: boolean): Promise<BenchRow> {
  const bytes = copyReferenceBytes(gpu, quick);
  const src = createBuffer(gpu, bytes, "workspace", "copy src");
  const dst = createBuffer(gpu, bytes, "workspace", "copy dst");
  let bufferMs: number;
  try {
    bufferMs = await copyMs(gpu, src, dst, bytes, quick ? 4 : 10);
  } finally {
    releaseBuffer(src);
    releaseBuffer(dst);
  }
  const shaderMs = (2 * bytes) / (await shaderCopyGbps(gpu, bytes, quick ? 10 : 1000)) / 1e6;
  const [ms, how] = shaderMs < bufferMs ? [shaderMs, "shader"] : [bufferMs, "copyBufferToBuffer"];
  return gpuRow(gpu, "copy_bandwidth", `bytes=${bytes} ${how}`, ms, { bytes: 2 * bytes });
}

const CASTS: [ElementType, ElementType][] = [
  ["bf16", "f16"],
  ["f16", "f32"],
  ["f32", "f16"],
  ["bf16", "f32"],
  ["f32", "bf16"],
  ["f16", "bf16"],
];

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const T = ctx.quick ? 256 : 4096;
  const C = ctx.quick ? 512 : 4096;
  const n = T * C;
  const shape = `T=${T} C=${C}`;
  const ref = "copy_bandwidth";
  for (const gpu of ctx.gpus) {
    rows.push(await copyRow(gpu, ctx.quick));
    const a = randomHalves(gpu, n, 1);
    const b = randomHalves(gpu, n, 2);
    const y = createBuffer(gpu, n * 2, "workspace");
    try {
      const t = await timeGpu(gpu, (enc) => residualAdd(enc, { a, b, out: y, n }));
      rows.push(gpuRow(gpu, "residual_add", shape, t.ms, { bytes: 3 * n * 2, ref }));
    } finally {
      for (const buf of [a, b, y]) releaseBuffer(buf);
    }
    for (const [from, to] of CASTS) {
      const src = from === "f32" ? createBuffer(gpu, n * 4, "workspace") : randomHalves(gpu, n, 3);
      const dst = createBuffer(gpu, n * ELEMENT_BYTES[to], "workspace");
      try {
        const t = await timeGpu(gpu, (enc) => castElements(enc, { src, dst, n, from, to }));
        const bytes = n * (ELEMENT_BYTES[from] + ELEMENT_BYTES[to]);
        rows.push(gpuRow(gpu, `cast_${from}_${to}`, shape, t.ms, { bytes, ref }));
      } finally {
        releaseBuffer(src);
        releaseBuffer(dst);
      }
    }
  }
  return rows;
}
