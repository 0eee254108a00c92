// NF4 rows: the dequant-matmul forward and input gradient on the Llama-3.1-8B projection shapes at
// T = 4096 tokens (quick: small shapes), with a sampled-row error check against float64, and the GPU
// quantizer on one 14336 x 4096 weight. Compare with bench/reference/torch_nf4_lora.py (f16 matmul
// on the already-dequantized weight, rows torch_f16_matmul_{fwd,dx}_<in>x<out>).

import { createBuffer, releaseBuffer, roundToF16, upload, uploadF16 } from "../../engine/buffers.ts";
import { readAs } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { relativeError, Rng } from "../../engine/testing.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import {
  encodeNf4Quantize,
  nf4Allocate,
  nf4Matmul,
  type Nf4MatmulMode,
  nf4MatmulUnsupported,
  nf4QuantizeWorkspace,
  nf4Release,
  nf4ReleaseWorkspace,
  nf4Upload,
} from "./nf4.ts";
import { NF4_CODEBOOK, nf4AbsmaxRef, nf4CodeAt, nf4Counts, nf4DynamicMap, type Nf4Host } from "./nf4_ref.ts";

/** [in, out] of the Llama-3.1-8B projections: q/o, k/v, gate/up, down. */
export const LLAMA_PROJECTIONS: [number, number][] = [[4096, 4096], [4096, 1024], [4096, 14336], [
  14336,
  4096,
]];

export function nf4BenchShapes(quick: boolean): { T: number; shapes: [number, number][] } {
  return quick ? { T: 256, shapes: [[256, 512], [512, 256]] } : { T: 4096, shapes: LLAMA_PROJECTIONS };
}

/** A random NF4 weight in the GPU layout (random codes and absmax codes; scales of real weights). */
export function randomNf4Host(rng: Rng, out: number, inDim: number): Nf4Host {
  const { n, blocks, nested } = nf4Counts(out, inDim);
  const codes = new Uint32Array(Math.ceil(n / 8));
  for (let i = 0; i < codes.length; i++) codes[i] = rng.nextU32();
  const absmaxCodes = new Uint32Array(Math.ceil(blocks / 4));
  for (let i = 0; i < absmaxCodes.length; i++) absmaxCodes[i] = rng.nextU32();
  const nestedValues = new Float32Array(1 + nested);
  nestedValues[0] = 0.03;
  for (let i = 1; i < nestedValues.length; i++) nestedValues[i] = 0.01 + 0.01 * rng.next();
  return { out, in: inDim, codes, absmaxCodes, nested: nestedValues, dynmap: nf4DynamicMap() };
}

/** Relative error of sampled rows of Y = X W^T ("fwd") or dX = dY W ("dx") against float64. */
export function nf4SampledError(
  host: Nf4Host,
  x: Float64Array,
  got: ArrayLike<number>,
  T: number,
  mode: Nf4MatmulMode,
): number {
  const absmax = nf4AbsmaxRef(host);
  const wAt = (o: number, i: number) => {
    const f = o * host.in + i;
    return Math.fround(NF4_CODEBOOK[nf4CodeAt(host, f)] * absmax[f >> 6]);
  };
  const N = mode === "fwd" ? host.out : host.in;
  const K = mode === "fwd" ? host.in : host.out;
  const want: number[] = [];
  const have: number[] = [];
  for (const t of [0, Math.floor(T / 2), T - 1]) {
    for (let j = 0; j < N; j += Math.max(1, Math.floor(N / 64))) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[t * K + k] * Math.fround(mode === "fwd" ? wAt(j, k) : wAt(k, j));
      want.push(s);
      have.push(got[t * N + j]);
    }
  }
  return relativeError(have, want);
}

async function benchMatmul(
  gpu: Gpu,
  T: number,
  inDim: number,
  out: number,
  mode: Nf4MatmulMode,
): Promise<BenchRow> {
  const rng = new Rng(1);
  const host = randomNf4Host(rng, out, inDim);
  const K = mode === "fwd" ? inDim : out;
  const N = mode === "fwd" ? out : inDim;
  const x = roundToF16(rng.uniforms(T * K));
  const w = nf4Upload(gpu, host);
  const xBuf = uploadF16(gpu, x);
  const yBuf = createBuffer(gpu, T * N * 2, "workspace");
  try {
    const args = { x: xBuf, w, y: yBuf, T, mode, out: "f16" as const };
    const t = await timeGpu(gpu, (enc) => nf4Matmul(enc, args), { warmup: 2, reps: T >= 4096 ? 10 : 20 });
    const enc = new Encoder(gpu);
    await nf4Matmul(enc, args);
    await enc.submit();
    const got = await readAs(gpu, yBuf, "f16", T * N);
    return gpuRow(
      gpu,
      `nf4_matmul_${mode}_${inDim}x${out}`,
      `T=${T} in=${inDim} out=${out}`,
      t.ms,
      {
        flops: 2 * T * inDim * out,
        bytes: 2 * T * K + inDim * out / 2 + 2 * T * N,
        relErr: nf4SampledError(host, x, got, T, mode),
        ref: `torch_f16_matmul_${mode}_${inDim}x${out}`,
      },
    );
  } finally {
    nf4Release(w);
    releaseBuffer(xBuf);
    releaseBuffer(yBuf);
  }
}

async function benchQuantize(gpu: Gpu, out: number, inDim: number): Promise<BenchRow> {
  const rng = new Rng(2);
  const n = out * inDim;
  const bits = new Uint16Array(n);
  const chunk = Float16Array.from(rng.normals(1 << 16, 0.02));
  const chunkBits = new Uint16Array(chunk.buffer);
  for (let i = 0; i < n; i += chunkBits.length) {
    bits.set(chunkBits.subarray(0, Math.min(chunkBits.length, n - i)), i);
  }
  const src = upload(gpu, bits);
  const weight = nf4Allocate(gpu, out, inDim);
  gpu.device.queue.writeBuffer(weight.dynmap, 0, nf4DynamicMap());
  const ws = nf4QuantizeWorkspace(gpu, out, inDim);
  try {
    const t = await timeGpu(gpu, (enc) => encodeNf4Quantize(enc, { src, dtype: "f16", weight, ws }), {
      warmup: 1,
      reps: 5,
    });
    const { blocks } = nf4Counts(out, inDim);
    return gpuRow(gpu, "nf4_quantize", `out=${out} in=${inDim} f16`, t.ms, { bytes: 2 * n + n / 2 + blocks });
  } finally {
    releaseBuffer(src);
    nf4Release(weight);
    nf4ReleaseWorkspace(ws);
  }
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const { T, shapes } = nf4BenchShapes(ctx.quick);
  for (const gpu of ctx.gpus) {
    if (nf4MatmulUnsupported(gpu.caps, { out: 8, in: 8 }, "tiled")) continue;
    for (const [inDim, out] of shapes) {
      for (const mode of ["fwd", "dx"] as const) rows.push(await benchMatmul(gpu, T, inDim, out, mode));
    }
    rows.push(await benchQuantize(gpu, ctx.quick ? 512 : 14336, ctx.quick ? 256 : 4096));
  }
  return rows;
}
