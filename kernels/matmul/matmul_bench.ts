// Matmul TFLOP/s for each variant and layout: M = N = K = 4096 and the Llama-3.1-8B projection
// shapes at T = 4096 tokens (quick: 512), with the relative error of each variant's output.

import { createBuffer, readAs, releaseBuffer, roundToF16, uploadF16 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { relativeError, Rng } from "../../engine/testing.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import {
  matmul,
  type MatmulArgs,
  type MatmulLayout,
  matmulUnsupported,
  type MatmulVariant,
} from "./matmul.ts";
import { matmulRef } from "./matmul_ref.ts";

interface Shape {
  M: number;
  N: number;
  K: number;
  layout: MatmulLayout;
}

function shapes(quick: boolean): Shape[] {
  if (quick) return [{ M: 256, N: 256, K: 256, layout: "nt" }, { M: 256, N: 256, K: 256, layout: "nn" }];
  const T = 4096;
  return [
    { M: 4096, N: 4096, K: 4096, layout: "nt" },
    { M: 4096, N: 4096, K: 4096, layout: "nn" },
    { M: 4096, N: 4096, K: 4096, layout: "tn" },
    { M: T, N: 14336, K: 4096, layout: "nt" }, // gate/up forward
    { M: T, N: 4096, K: 14336, layout: "nt" }, // down forward
    { M: T, N: 1024, K: 4096, layout: "nt" }, // k/v forward
  ];
}

/** Relative error of the output on a few sampled rows against the float64 reference. */
function sampledError(a: Float64Array, b: Float64Array, got: ArrayLike<number>, s: Shape): number {
  const rows = [0, Math.floor(s.M / 2), s.M - 1];
  const want: number[] = [];
  const have: number[] = [];
  for (const m of rows) {
    for (let n = 0; n < s.N; n += Math.max(1, Math.floor(s.N / 64))) {
      let acc = 0;
      for (let k = 0; k < s.K; k++) {
        const av = s.layout === "tn" ? a[k * s.M + m] : a[m * s.K + k];
        const bv = s.layout === "nt" ? b[n * s.K + k] : b[k * s.N + n];
        acc += av * bv;
      }
      want.push(acc);
      have.push(got[m * s.N + n]);
    }
  }
  return relativeError(have, want);
}

async function benchOne(gpu: Gpu, s: Shape, variant: MatmulVariant, acc: "f32" | "f16"): Promise<BenchRow> {
  const rng = new Rng(1);
  const a = roundToF16(rng.uniforms(s.M * s.K));
  const b = roundToF16(rng.uniforms(s.N * s.K));
  const aBuf = uploadF16(gpu, a);
  const bBuf = uploadF16(gpu, b);
  const cBuf = createBuffer(gpu, s.M * s.N * 2, "workspace");
  try {
    const args: MatmulArgs = { a: aBuf, b: bBuf, c: cBuf, ...s, out: "f16", acc, variant };
    const t = await timeGpu(gpu, (enc) => matmul(enc, args), { warmup: 2, reps: s.M >= 4096 ? 10 : 20 });
    const enc = new Encoder(gpu);
    await matmul(enc, args);
    await enc.submit();
    const got = await readAs(gpu, cBuf, "f16", s.M * s.N);
    const relErr = s.M * s.N * s.K <= 2 ** 24
      ? relativeError(got, matmulRef(a, b, s.M, s.N, s.K, s.layout))
      : sampledError(a, b, got, s);
    return gpuRow(gpu, `matmul_${variant}_${s.layout}_acc${acc}`, `M=${s.M} N=${s.N} K=${s.K}`, t.ms, {
      flops: 2 * s.M * s.N * s.K,
      bytes: 2 * (s.M * s.K + s.N * s.K + s.M * s.N),
      relErr,
      ref: `torch_matmul_${s.layout}`,
    });
  } finally {
    releaseBuffer(aBuf);
    releaseBuffer(bBuf);
    releaseBuffer(cBuf);
  }
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const gpu of ctx.gpus) {
    for (const s of shapes(ctx.quick)) {
      for (const variant of ["subgroup_matrix", "tiled"] as MatmulVariant[]) {
        for (const acc of ["f32", "f16"] as const) {
          if (matmulUnsupported(gpu.caps, { ...s, acc }, variant)) continue;
          // f16 accumulation is measured on the square shapes only.
          if (acc === "f16" && s.M !== s.K) continue;
          // The portable kernel is far from tensor-core speed; one full-size row tells its rate.
          if (!ctx.quick && variant === "tiled" && gpu.caps.subgroupMatrix.length > 0 && s.layout !== "nt") {
            continue;
          }
          rows.push(await benchOne(gpu, s, variant, acc));
        }
      }
    }
  }
  return rows;
}
