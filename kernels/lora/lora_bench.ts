// LoRA rows: adapter forward and backward (R = 64, s = 1, no dropout) on top of the NF4 base, on the
// Llama-3.1-8B projection shapes at T = 4096 (quick: small shapes). Set beside the
// nf4_matmul_{fwd,dx}_* rows of kernels/nf4/nf4_bench.ts: the adapter's cost is the difference.

import { createBuffer, releaseBuffer, roundToF16, uploadF16 } from "../../engine/buffers.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { Rng } from "../../engine/testing.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import { nf4MatmulUnsupported, nf4Release, nf4Upload } from "../nf4/nf4.ts";
import { nf4BenchShapes, randomNf4Host } from "../nf4/nf4_bench.ts";
import { loraBackward, loraForward } from "./lora.ts";

const R = 64;

async function benchShape(gpu: Gpu, T: number, inDim: number, out: number): Promise<BenchRow[]> {
  const rng = new Rng(3);
  const w = nf4Upload(gpu, randomNf4Host(rng, out, inDim));
  const bufs = [
    uploadF16(gpu, roundToF16(rng.uniforms(T * inDim))), // x
    uploadF16(gpu, roundToF16(rng.uniforms(T * out))), // dy
    uploadF16(gpu, roundToF16(rng.uniforms(R * inDim, -0.02, 0.02))), // a16
    uploadF16(gpu, roundToF16(rng.uniforms(out * R, -0.02, 0.02))), // b16
    createBuffer(gpu, T * R * 2, "activations"), // u
    createBuffer(gpu, T * R * 2, "workspace"), // du
    createBuffer(gpu, T * out * 2, "activations"), // y
    createBuffer(gpu, T * inDim * 2, "activations"), // dx
    createBuffer(gpu, R * inDim * 4, "lora"), // dA
    createBuffer(gpu, out * R * 4, "lora"), // dB
  ];
  const [x, dy, a16, b16, u, du, y, dx, dA, dB] = bufs;
  const shape = { T, in: inDim, out, R, scale: 1 };
  const base = { kind: "nf4" as const, w };
  try {
    const f = await timeGpu(
      gpu,
      (enc) => loraForward(enc, { ...shape, x, base, a16, b16, u, y, yType: "f16" }),
      {
        warmup: 2,
        reps: T >= 4096 ? 10 : 20,
      },
    );
    const b = await timeGpu(
      gpu,
      (enc) => loraBackward(enc, { ...shape, x, dy, base, a16, b16, u, du, dA, dB, dx, dxType: "f16" }),
      { warmup: 2, reps: T >= 4096 ? 10 : 20 },
    );
    const name = `${inDim}x${out}`;
    const shapeText = `T=${T} in=${inDim} out=${out} R=${R}`;
    const lowRank = 2 * T * R * (inDim + out);
    return [
      gpuRow(gpu, `lora_fwd_${name}`, shapeText, f.ms, {
        flops: 2 * T * inDim * out + lowRank,
        bytes: 2 * T * inDim + inDim * out / 2 + 2 * R * (inDim + out) + 2 * T * out,
        ref: `torch_lora_fwd_${name}`,
      }),
      gpuRow(gpu, `lora_bwd_${name}`, shapeText, b.ms, {
        flops: 2 * T * inDim * out + 2 * lowRank,
        bytes: 2 * T * (inDim + out + R) + inDim * out / 2 + 2 * R * (inDim + out) + 2 * T * inDim +
          4 * R * (inDim + out),
        ref: `torch_lora_bwd_${name}`,
      }),
    ];
  } finally {
    for (const buf of bufs) releaseBuffer(buf);
    nf4Release(w);
  }
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const { T, shapes } = nf4BenchShapes(ctx.quick);
  for (const gpu of ctx.gpus) {
    if (nf4MatmulUnsupported(gpu.caps, { out: 8, in: 8 }, "tiled")) continue;
    for (const [inDim, out] of shapes) rows.push(...await benchShape(gpu, T, inDim, out));
  }
  return rows;
}
