import { createBuffer, poison, readAs, roundToF16, uploadF16, uploadF32 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, relativeError, rms, Rng, testSeed } from "../../engine/testing.ts";
import {
  matmul,
  MATMUL_LAYOUTS,
  type MatmulArgs,
  matmulSplitK,
  matmulUnsupported,
  type MatmulVariant,
} from "./matmul.ts";
import { matmulRef } from "./matmul_ref.ts";

// Ragged shapes: none is a multiple of the tiles (64 or 128, K step 16 or 32). The second group
// keeps the contiguous dimensions at multiples of 8, which the tensor-core variant needs.
const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [37, 53, 29],
  [130, 70, 211],
  [65, 129, 17],
  [136, 72, 200],
  [200, 264, 48],
  [8, 8, 8],
  [24, 40, 1000],
];

interface Case {
  M: number;
  N: number;
  K: number;
  layout: MatmulArgs["layout"];
  out: "f16" | "f32";
  acc: "f16" | "f32";
  alpha: number;
  beta: number;
}

async function runCase(gpu: Gpu, variant: MatmulVariant, cs: Case, rng: Rng): Promise<number> {
  const { M, N, K, layout, out } = cs;
  const a = roundToF16(rng.uniforms(M * K));
  const b = roundToF16(rng.uniforms(N * K));
  const c0 = out === "f16" ? roundToF16(rng.uniforms(M * N)) : Float64Array.from(rng.uniforms(M * N));
  const aBuf = uploadF16(gpu, a);
  const bBuf = uploadF16(gpu, b);
  const cBuf = cs.beta !== 0
    ? (out === "f16" ? uploadF16(gpu, c0) : uploadF32(gpu, c0))
    : createBuffer(gpu, M * N * (out === "f16" ? 2 : 4), "workspace");
  if (cs.beta === 0) poison(gpu, cBuf, out);
  try {
    const enc = new Encoder(gpu);
    await matmul(enc, {
      a: aBuf,
      b: bBuf,
      c: cBuf,
      M,
      N,
      K,
      layout,
      out,
      acc: cs.acc,
      alpha: cs.alpha,
      beta: cs.beta,
      variant,
    });
    await enc.submit();
    const got = await readAs(gpu, cBuf, out, M * N);
    const want = matmulRef(a, b, M, N, K, layout, { alpha: cs.alpha, beta: cs.beta, c: c0 });
    const scale = rms(want);
    const label = `${variant} ${layout} ${M}x${N}x${K} acc ${cs.acc} out ${out}`;
    if (cs.acc === "f16") {
      // f16 accumulation: each partial sum is rounded to 11 bits, so the error grows with K.
      const err = relativeError(got, want);
      if (!(err < 2e-2)) throw new Error(`${label}: relative error ${err}`);
      return err;
    }
    const tol = out === "f32"
      ? { atol: 2e-5 * scale + 1e-6, rtol: 2e-5 }
      : { atol: 2e-3 * scale + 1e-6, rtol: 1e-3 };
    assertClose(got, want, { ...tol, label });
    return relativeError(got, want);
  } finally {
    for (const buf of [aBuf, bBuf, cBuf]) buf.destroy();
  }
}

/** Runs the cases the variant takes on this adapter, on fresh random inputs from one seed. */
async function runCases(gpu: Gpu, variant: MatmulVariant, cases: Case[]): Promise<void> {
  const seed = testSeed();
  const rng = new Rng(seed);
  for (const cs of cases) {
    if (matmulUnsupported(gpu.caps, cs, variant)) continue;
    try {
      await runCase(gpu, variant, cs, rng);
    } catch (e) {
      throw new Error(`seed ${seed}: ${(e as Error).message}`);
    }
  }
}

for (const variant of ["tiled", "subgroup_matrix"] as MatmulVariant[]) {
  await gpuTest(`matmul ${variant}: every layout on ragged shapes, f32 and f16 output`, async (gpu) => {
    const seed = testSeed();
    const rng = new Rng(seed);
    let ran = 0;
    for (const [M, N, K] of SHAPES) {
      for (const layout of MATMUL_LAYOUTS) {
        for (const out of ["f32", "f16"] as const) {
          const cs: Case = { M, N, K, layout, out, acc: "f32", alpha: 1, beta: 0 };
          if (matmulUnsupported(gpu.caps, cs, variant)) continue;
          try {
            await runCase(gpu, variant, cs, rng);
          } catch (e) {
            throw new Error(`seed ${seed}: ${(e as Error).message}`);
          }
          ran++;
        }
      }
    }
    if (ran === 0) {
      const why = matmulUnsupported(gpu.caps, { M: 8, N: 8, K: 8, layout: "nt" }, variant);
      console.log(`  ${variant} not available on ${gpu.name}: ${why}`);
    }
  });

  await gpuTest(`matmul ${variant}: alpha, beta accumulation and f16 accumulators`, async (gpu) => {
    const cases: Case[] = [
      { M: 72, N: 40, K: 88, layout: "tn", out: "f32", acc: "f32", alpha: 0.5, beta: 1 },
      { M: 72, N: 40, K: 88, layout: "nt", out: "f16", acc: "f32", alpha: -2, beta: 0.25 },
      { M: 136, N: 72, K: 200, layout: "nt", out: "f16", acc: "f16", alpha: 1, beta: 0 },
      { M: 64, N: 48, K: 64, layout: "nn", out: "f32", acc: "f16", alpha: 1, beta: 0 },
    ];
    await runCases(gpu, variant, cases);
  });

  await gpuTest(`matmul ${variant}: split K (few output tiles, long K) with alpha and beta`, async (gpu) => {
    const cases: Case[] = [
      { M: 40, N: 24, K: 2049, layout: "tn", out: "f16", acc: "f32", alpha: 0.5, beta: 1 },
      { M: 72, N: 64, K: 2104, layout: "nn", out: "f32", acc: "f32", alpha: -1, beta: 0.5 },
      { M: 136, N: 8, K: 3000, layout: "nt", out: "f32", acc: "f32", alpha: 1, beta: 0 },
      { M: 64, N: 48, K: 2048, layout: "nt", out: "f16", acc: "f16", alpha: 2, beta: 0 },
    ];
    for (const cs of cases) {
      const { S } = matmulSplitK(cs.M, cs.N, cs.K, variant);
      if (S < 2) throw new Error(`${cs.M}x${cs.N}x${cs.K} on ${variant} does not split K`);
    }
    await runCases(gpu, variant, cases);
  });
}

for (const variant of ["tiled", "subgroup_matrix"] as const) {
  await gpuTest(
    `matmul ${variant}: a slice of C's columns (ldc) with a low-rank term, vs float64`,
    async (gpu) => {
      const why = matmulUnsupported(gpu.caps, { M: 8, N: 8, K: 8, layout: "nt" }, variant);
      if (why) {
        console.log(`  ${variant} not available on ${gpu.name}: ${why}`);
        return;
      }
      const seed = testSeed();
      const rng = new Rng(seed);
      // C [M, W] holds the product in columns c0..c0+N-1 (bound at that offset, a multiple of 256
      // bytes); the rest must keep its values. F is [N, R] ("nt") or the columns f0.. of an [R, LDF]
      // matrix ("nn"). K and R not multiples of the K steps (16 or 32), M and N not of the tiles.
      const cases = [
        {
          M: 130,
          N: 72,
          K: 200,
          W: 200,
          c0: 128,
          R: 40,
          layout: "nt",
          out: "f16",
          alpha: 1,
          beta: 0,
          LDF: 72,
          f0: 0,
        },
        {
          M: 70,
          N: 136,
          K: 88,
          W: 264,
          c0: 128,
          R: 64,
          layout: "nn",
          out: "f32",
          alpha: 0.5,
          beta: 1,
          LDF: 392,
          f0: 128,
        },
        {
          M: 37,
          N: 24,
          K: 40,
          W: 24,
          c0: 0,
          R: 8,
          layout: "nn",
          out: "f32",
          alpha: 1,
          beta: 0,
          LDF: 24,
          f0: 0,
        },
      ] as const;
      for (const cs of cases) {
        const { M, N, K, W, c0, R, LDF, f0 } = cs;
        const label = `seed ${seed} ${JSON.stringify(cs)}`;
        const a = roundToF16(rng.uniforms(M * K));
        const b = roundToF16(rng.uniforms(K * N));
        const u = roundToF16(rng.uniforms(M * R));
        const fAll = roundToF16(rng.uniforms(cs.layout === "nt" ? N * R : R * LDF));
        const c0v = cs.out === "f16"
          ? roundToF16(rng.uniforms(M * W))
          : Float64Array.from(rng.uniforms(M * W));
        const s = 0.75;
        const bytes = cs.out === "f16" ? 2 : 4;
        const bufs = [uploadF16(gpu, a), uploadF16(gpu, b), uploadF16(gpu, u), uploadF16(gpu, fAll)];
        const c = cs.out === "f16" ? uploadF16(gpu, c0v) : uploadF32(gpu, c0v);
        try {
          const enc = new Encoder(gpu);
          await matmul(enc, {
            a: bufs[0],
            b: bufs[1],
            c: { buffer: c, offset: c0 * bytes, size: ((M - 1) * W + N) * bytes },
            M,
            N,
            K,
            layout: cs.layout,
            out: cs.out,
            alpha: cs.alpha,
            beta: cs.beta,
            variant,
            ldc: W,
            lowRank: {
              u: bufs[2],
              f: cs.layout === "nt"
                ? bufs[3]
                : { buffer: bufs[3], offset: f0 * 2, size: ((R - 1) * LDF + N) * 2 },
              R,
              scale: s,
              ldf: LDF,
            },
          });
          await enc.submit();
          const got = await readAs(gpu, c, cs.out, M * W);
          // F as the product sees it, times s rounded to f16 as the kernel stages it: [N, R] or [R, N].
          const f = Float64Array.from(
            { length: N * R },
            (_, i) => cs.layout === "nt" ? fAll[i] : fAll[Math.floor(i / N) * LDF + f0 + (i % N)],
          );
          const fs = roundToF16(f.map((v) => v * s));
          const ab = matmulRef(a, b, M, N, K, cs.layout);
          const uf = matmulRef(u, fs, M, N, R, cs.layout);
          const want = Float64Array.from(c0v);
          for (let m = 0; m < M; m++) {
            for (let n = 0; n < N; n++) {
              const at = m * W + c0 + n;
              want[at] = cs.alpha * (ab[m * N + n] + uf[m * N + n]) + cs.beta * c0v[at];
            }
          }
          const scale = rms(want);
          const tol = cs.out === "f32"
            ? { atol: 2e-5 * scale + 1e-6, rtol: 2e-5 }
            : { atol: 2e-3 * scale, rtol: 1e-3 };
          assertClose(Array.from(got), want, { ...tol, label });
        } finally {
          for (const x of [...bufs, c]) x.destroy();
        }
      }
    },
  );
}
