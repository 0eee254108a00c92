// Decode attention at the Llama-3.1-8B shape (32 query heads, 8 kv heads, head dim 128) over a
// cache of n = 4096 rows (and a small quick shape), with the relative error of the whole output
// against the float64 reference. Bytes counted: the cache rows read (k and v, n*KVH*D f16 each);
// the query, output and workspace are a few hundred KiB at most.

import { createBuffer, readAs, releaseBuffer, roundToF16, upload, uploadF16 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { relativeError, Rng } from "../../engine/testing.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import {
  decodeAttention,
  type DecodeAttentionShape,
  decodeAttentionUnsupported,
  decodeAttentionWorkspaceBytes,
} from "./decode_attention.ts";
import { decodeAttentionRef } from "./decode_attention_ref.ts";

function shapes(quick: boolean): DecodeAttentionShape[] {
  if (quick) return [{ n: 512, H: 8, KVH: 2, D: 64 }];
  return [{ n: 4096, H: 32, KVH: 8, D: 128 }];
}

async function benchShape(gpu: Gpu, s: DecodeAttentionShape, quick: boolean): Promise<BenchRow[]> {
  const why = decodeAttentionUnsupported(gpu.caps, s);
  if (why) return [];
  const rng = new Rng(1);
  const q = roundToF16(rng.uniforms(s.H * s.D));
  const k = roundToF16(rng.uniforms(s.n * s.KVH * s.D));
  const v = roundToF16(rng.uniforms(s.n * s.KVH * s.D));
  const bufs: GPUBuffer[] = [];
  const keep = (b: GPUBuffer) => (bufs.push(b), b);
  try {
    const args = {
      ...s,
      q: keep(uploadF16(gpu, q)),
      k: keep(uploadF16(gpu, k)),
      v: keep(uploadF16(gpu, v)),
      out: keep(createBuffer(gpu, s.H * s.D * 2, "workspace")),
      part: keep(createBuffer(gpu, decodeAttentionWorkspaceBytes(s.H, s.D, s.n), "workspace")),
      position: keep(upload(gpu, Uint32Array.of(s.n - 1))),
    };
    const t = await timeGpu(gpu, (enc) => decodeAttention(enc, args), {
      warmup: 2,
      reps: quick ? 5 : 50,
      samples: 5,
    });
    const enc = new Encoder(gpu);
    await decodeAttention(enc, args);
    await enc.submit();
    const got = await readAs(gpu, args.out, "f16", s.H * s.D);
    const want = decodeAttentionRef(q, k, v, { ...s, scale: 1 / Math.sqrt(s.D) });
    return [
      gpuRow(gpu, "decode_attention", `n=${s.n} H=${s.H} KVH=${s.KVH} D=${s.D}`, t.ms, {
        flops: 4 * s.n * s.H * s.D,
        bytes: 2 * s.n * s.KVH * s.D * 2,
        relErr: relativeError(got, want),
      }),
    ];
  } finally {
    for (const b of bufs) releaseBuffer(b);
  }
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const gpu of ctx.gpus) {
    for (const s of shapes(ctx.quick)) rows.push(...await benchShape(gpu, s, ctx.quick));
  }
  return rows;
}
