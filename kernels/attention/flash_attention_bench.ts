// Flash attention forward and backward at the Llama-3.1-8B shape (T = 4096 tokens, 32 query heads,
// 8 kv heads, head dim 128, causal; also T = 8192) and a small quick shape, with the relative
// error of sampled rows (o and lse; dq for the backward) against a float64 computation of them.
// Rows `flash_attention_fwd` / `flash_attention_bwd` use the fastest variant the adapter has; where
// that is not the portable one, `..._portable` rows follow.
//
// Flops counted as FlashAttention does: the forward is 4*T*T*H*D*B (two matrix products),
// halved when causal; the backward is 2.5x the forward (five products instead of two).
// Bytes: q, k, v, o (and dO, dq, dk, dv for the backward) in f16 once, lse in f32 once.

import { createBuffer, readAs, releaseBuffer, roundToF16, uploadF16 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { relativeError, Rng } from "../../engine/testing.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import {
  flashAttentionBackward,
  flashAttentionDeltaBytes,
  flashAttentionForward,
  type FlashAttentionShape,
  flashAttentionUnsupported,
  type FlashAttentionVariant,
  pickFlashAttentionVariant,
} from "./flash_attention.ts";

interface Shape {
  B: number;
  T: number;
  H: number;
  KVH: number;
  D: number;
  causal: boolean;
}

function shapes(quick: boolean): Shape[] {
  if (quick) return [{ B: 1, T: 256, H: 4, KVH: 2, D: 64, causal: true }];
  return [
    { B: 1, T: 4096, H: 32, KVH: 8, D: 128, causal: true },
    { B: 1, T: 8192, H: 32, KVH: 8, D: 128, causal: true },
  ];
}

export function flashAttentionShapeString(s: Shape): string {
  return `B=${s.B} T=${s.T} H=${s.H} KVH=${s.KVH} D=${s.D} ${s.causal ? "causal" : "full"}`;
}

/** Forward flops as FlashAttention counts them (the backward is 2.5x this). */
export function flashAttentionForwardFlops(s: Shape): number {
  return 4 * s.B * s.T * s.T * s.H * s.D / (s.causal ? 2 : 1);
}

interface Inputs {
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
  dO: Float64Array;
}

/** Float64 o row, lse and dq row of query row t of head h (sequence 0). */
function sampledRow(x: Inputs, s: Shape, t: number, h: number) {
  const { T, H, KVH, D } = s;
  const scale = 1 / Math.sqrt(D);
  const g = Math.floor(h / (H / KVH));
  const n = s.causal ? t + 1 : T;
  const sc = new Float64Array(n);
  let m = -Infinity;
  for (let j = 0; j < n; j++) {
    let acc = 0;
    for (let d = 0; d < D; d++) acc += x.q[(t * H + h) * D + d] * x.k[(j * KVH + g) * D + d];
    sc[j] = acc * scale;
    m = Math.max(m, sc[j]);
  }
  let sum = 0;
  for (let j = 0; j < n; j++) sum += Math.exp(sc[j] - m);
  const lse = m + Math.log(sum);
  const o = new Float64Array(D);
  const dp = new Float64Array(n);
  let delta = 0;
  for (let j = 0; j < n; j++) {
    const pj = Math.exp(sc[j] - lse);
    let acc = 0;
    for (let d = 0; d < D; d++) {
      o[d] += pj * x.v[(j * KVH + g) * D + d];
      acc += x.dO[(t * H + h) * D + d] * x.v[(j * KVH + g) * D + d];
    }
    dp[j] = acc;
    delta += pj * acc;
  }
  const dq = new Float64Array(D);
  for (let j = 0; j < n; j++) {
    const ds = Math.exp(sc[j] - lse) * (dp[j] - delta);
    for (let d = 0; d < D; d++) dq[d] += scale * ds * x.k[(j * KVH + g) * D + d];
  }
  return { o, lse, dq };
}

async function benchShape(gpu: Gpu, s: Shape, quick: boolean): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const shape: FlashAttentionShape = s;
  const nq = s.B * s.T * s.H * s.D;
  const nk = s.B * s.T * s.KVH * s.D;
  const rng = new Rng(1);
  const x: Inputs = {
    q: roundToF16(rng.uniforms(nq)),
    k: roundToF16(rng.uniforms(nk)),
    v: roundToF16(rng.uniforms(nk)),
    dO: roundToF16(rng.uniforms(nq)),
  };
  const bufs: GPUBuffer[] = [];
  const keep = (b: GPUBuffer) => (bufs.push(b), b);
  try {
    const q = keep(uploadF16(gpu, x.q));
    const k = keep(uploadF16(gpu, x.k));
    const v = keep(uploadF16(gpu, x.v));
    const dO = keep(uploadF16(gpu, x.dO));
    const o = keep(createBuffer(gpu, nq * 2, "workspace"));
    const lse = keep(createBuffer(gpu, s.B * s.H * s.T * 4, "workspace"));
    const dq = keep(createBuffer(gpu, nq * 2, "workspace"));
    const dk = keep(createBuffer(gpu, nk * 2, "workspace"));
    const dv = keep(createBuffer(gpu, nk * 2, "workspace"));
    const delta = keep(createBuffer(gpu, flashAttentionDeltaBytes(shape), "workspace"));
    const samples = [0, Math.floor(s.T / 2) + 1, s.T - 1].flatMap((t) => [[t, 0], [t, s.H - 1]]);
    const want = samples.map(([t, h]) => sampledRow(x, s, t, h));
    const fwdFlops = flashAttentionForwardFlops(s);
    const timing = { warmup: 1, reps: quick ? 5 : 3, samples: quick ? 3 : 5 };

    const best = pickFlashAttentionVariant(gpu.caps, shape, "forward");
    const variants: FlashAttentionVariant[] = best === "portable" ? ["portable"] : [best, "portable"];
    for (const variant of variants) {
      if (flashAttentionUnsupported(gpu.caps, shape, variant, "forward")) continue;
      const args = { ...shape, q, k, v, o, lse, variant };
      const t = await timeGpu(gpu, (enc) => flashAttentionForward(enc, args), timing);
      const enc = new Encoder(gpu);
      await flashAttentionForward(enc, args);
      await enc.submit();
      const got = await readAs(gpu, o, "f16", nq);
      const gotLse = await readAs(gpu, lse, "f32", s.B * s.H * s.T);
      const have: number[] = [];
      const ref: number[] = [];
      samples.forEach(([tt, h], i) => {
        for (let d = 0; d < s.D; d++) {
          have.push(got[(tt * s.H + h) * s.D + d]);
          ref.push(want[i].o[d]);
        }
        have.push(gotLse[h * s.T + tt]);
        ref.push(want[i].lse);
      });
      const name = variant === best ? "flash_attention_fwd" : `flash_attention_fwd_${variant}`;
      rows.push(gpuRow(gpu, name, flashAttentionShapeString(s), t.ms, {
        flops: fwdFlops,
        bytes: 2 * (2 * nq + 2 * nk) + 4 * s.B * s.H * s.T,
        relErr: relativeError(have, ref),
      }));
    }

    // The backward reads the forward's o and lse of the picked forward variant.
    const fenc = new Encoder(gpu);
    await flashAttentionForward(fenc, { ...shape, q, k, v, o, lse });
    await fenc.submit();
    const bestBwd = pickFlashAttentionVariant(gpu.caps, shape, "backward");
    for (const variant of bestBwd === "portable" ? ["portable" as const] : [bestBwd, "portable" as const]) {
      const bargs = { ...shape, q, k, v, o, lse, dO, dq, dk, dv, delta, variant };
      const t = await timeGpu(gpu, (enc) => flashAttentionBackward(enc, bargs), timing);
      const benc = new Encoder(gpu);
      await flashAttentionBackward(benc, bargs);
      await benc.submit();
      const got = await readAs(gpu, dq, "f16", nq);
      const have: number[] = [];
      const ref: number[] = [];
      samples.forEach(([tt, h], i) => {
        for (let d = 0; d < s.D; d++) {
          have.push(got[(tt * s.H + h) * s.D + d]);
          ref.push(want[i].dq[d]);
        }
      });
      const name = variant === bestBwd ? "flash_attention_bwd" : `flash_attention_bwd_${variant}`;
      rows.push(gpuRow(gpu, name, flashAttentionShapeString(s), t.ms, {
        flops: 2.5 * fwdFlops,
        bytes: 2 * (4 * nq + 4 * nk) + 4 * s.B * s.H * s.T,
        relErr: relativeError(have, ref),
      }));
    }
  } finally {
    for (const b of bufs) releaseBuffer(b);
  }
  return rows;
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const gpu of ctx.gpus) {
    for (const s of shapes(ctx.quick)) rows.push(...await benchShape(gpu, s, ctx.quick));
  }
  return rows;
}
