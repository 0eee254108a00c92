import { deepStrictEqual as assertEquals } from "node:assert";
import {
  createBuffer,
  poison,
  readAs,
  roundToF16,
  upload,
  uploadF16,
  uploadF32,
} from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import { matmulRef } from "../matmul/matmul_ref.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, rms, Rng, testSeed } from "../../engine/testing.ts";
import {
  type BnbNf4Tensors,
  nf4Dequantize,
  nf4Download,
  Nf4FormatError,
  nf4FromBnb,
  nf4Matmul,
  type Nf4MatmulMode,
  nf4MatmulUnsupported,
  type Nf4MatmulVariant,
  nf4Quantize,
  nf4Release,
  nf4SliceColumns,
  type Nf4SourceDtype,
  nf4Upload,
} from "./nf4.ts";
import {
  bf16BitsToF32,
  f16BitsToF32,
  NF4_MIDPOINTS,
  nf4Code,
  nf4CodeAt,
  nf4DequantRef,
  type Nf4Host,
  nf4MatmulRef,
  nf4QuantizeRef,
  nf4Reciprocal,
  nf4ToBnbTensors,
  wordByte,
} from "./nf4_ref.ts";

/** Weights with every hard case: random normals of mixed scale, whole zero blocks, values that land
 * exactly on the codebook midpoints after normalization, tiny and subnormal values. */
function hardWeights(rng: Rng, n: number): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = rng.normal() * 0.02 * (1 + 10 * (Math.floor(i / 64) % 3));
  const blocks = Math.ceil(n / 64);
  for (let b = 0; b < blocks; b++) {
    const start = b * 64;
    const end = Math.min(n, start + 64);
    const kind = b % 5;
    if (kind === 1) {
      x.fill(0, start, end);
    } else if (kind === 2 || kind === 3) {
      // absmax a is the block's first element; the others are chosen so f32(x * f32(1/a)) is a midpoint.
      const a = kind === 2 ? 2 : Math.fround(0.037 + rng.next() * 0.1);
      x[start] = rng.next() < 0.5 ? a : -a;
      const r = nf4Reciprocal(a);
      for (let i = start + 1; i < end; i++) {
        const m = NF4_MIDPOINTS[rng.int(15)];
        let v = Math.fround(m / r);
        for (const d of [0, 1, -1, 2, -2]) {
          const cand = new Float32Array([v]);
          new Uint32Array(cand.buffer)[0] += d;
          if (Math.fround(cand[0] * r) === m && Math.abs(cand[0]) <= a) {
            v = cand[0];
            break;
          }
        }
        x[i] = v;
      }
    } else if (kind === 4) {
      x[start] = 1e-30;
      if (start + 1 < end) x[start + 1] = -3e-39; // subnormal: counts as zero
    }
  }
  return x;
}

function assertThrows(fn: () => unknown, cls: new (...args: never[]) => Error, includes: string): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof cls)) {
      throw new Error(`expected ${cls.name}, got ${(e as Error).name}: ${(e as Error).message}`);
    }
    if (!e.message.includes(includes)) throw new Error(`error "${e.message}" does not mention "${includes}"`);
    return;
  }
  throw new Error(`expected ${cls.name} mentioning "${includes}", nothing was thrown`);
}

function sourceOf(values: Float32Array, dtype: Nf4SourceDtype): { data: Uint32Array; f32: Float32Array } {
  if (dtype === "f32") return { data: new Uint32Array(values.buffer.slice(0)), f32: values };
  const bits = new Uint16Array(values.length + (values.length % 2));
  if (dtype === "f16") {
    bits.set(new Uint16Array(Float16Array.from(values).buffer));
  } else {
    const words = new Uint32Array(values.buffer);
    for (let i = 0; i < values.length; i++) bits[i] = words[i] >>> 16; // truncation is a valid bf16 value
  }
  const exact = bits.subarray(0, values.length);
  return {
    data: new Uint32Array(bits.buffer),
    f32: dtype === "f16" ? f16BitsToF32(exact) : bf16BitsToF32(exact),
  };
}

function compareHost(got: Nf4Host, want: Nf4Host, label: string): void {
  const n = want.out * want.in;
  for (let i = 0; i < n; i++) {
    if (nf4CodeAt(got, i) !== nf4CodeAt(want, i)) {
      throw new Error(
        `${label}: code of element ${i} is ${nf4CodeAt(got, i)}, expected ${nf4CodeAt(want, i)}`,
      );
    }
  }
  const blocks = Math.ceil(n / 64);
  for (let b = 0; b < blocks; b++) {
    if (wordByte(got.absmaxCodes, b) !== wordByte(want.absmaxCodes, b)) {
      throw new Error(
        `${label}: absmax code of block ${b} is ${wordByte(got.absmaxCodes, b)}, expected ${
          wordByte(want.absmaxCodes, b)
        }`,
      );
    }
  }
  for (let i = 0; i < want.nested.length; i++) {
    if (got.nested[i] !== want.nested[i]) {
      throw new Error(
        `${label}: nested[${i}] (${i === 0 ? "offset" : "scale"}) is ${got.nested[i]}, expected ${
          want.nested[i]
        }`,
      );
    }
  }
}

Deno.test("nf4 reference: midpoint ties go to the lower code, zero blocks hold code 7", () => {
  for (let i = 0; i < 15; i++) {
    assertEquals(nf4Code(NF4_MIDPOINTS[i]), i);
    const above = new Float32Array([NF4_MIDPOINTS[i]]);
    const bits = new Int32Array(above.buffer);
    bits[0] += NF4_MIDPOINTS[i] > 0 ? 1 : -1;
    assertEquals(nf4Code(above[0]), i + 1);
  }
  const host = nf4QuantizeRef(new Float32Array(128), 2, 64);
  for (let i = 0; i < 128; i++) assertEquals(nf4CodeAt(host, i), 7);
  assertEquals(Array.from(nf4DequantRef(host)), new Array(128).fill(0));
});

await gpuTest("nf4 quantize: GPU codes and absmax codes equal the CPU reference bit for bit", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  // [72, 1000]: 1125 blocks, 5 absmax groups, a two-level sum; [7, 100]: partial last block.
  const cases: [number, number, Nf4SourceDtype][] = [
    [72, 1000, "f32"],
    [7, 100, "f32"],
    [72, 136, "f16"],
    [9, 77, "bf16"],
  ];
  for (const [out, inDim, dtype] of cases) {
    const src = sourceOf(hardWeights(rng, out * inDim), dtype);
    const want = nf4QuantizeRef(src.f32, out, inDim);
    const buf = upload(gpu, src.data);
    const w = await nf4Quantize(gpu, buf, dtype, out, inDim);
    try {
      compareHost(await nf4Download(gpu, w), want, `seed ${seed}: ${dtype} [${out}, ${inDim}]`);
    } finally {
      nf4Release(w);
      buf.destroy();
    }
  }
});

Deno.test("nf4 slice widths: one slice where the weight fits, else the fewest waves of tiles", () => {
  // [T, N, K] -> columns per slice (the workspace holds 32 MiB of f16: 4096 columns at K = 4096).
  const cases: [number, number, number, number | undefined][] = [
    [4096, 4096, 4096, 4096], // fits: one slice
    [4096, 1000, 4096, 1024], // fits, ragged: one slice of whole tiles
    [4096, 14336, 4096, 4096], // 1024 + 1024 + 1024 + 512 tiles: 4 + 4 + 4 + 2 waves (3584: 4 x 4)
    [4096, 4096, 14336, 1024], // at most 1152 fit: 4 x 256 tiles, one wave each (1152: 2 + 2 + 2 + 1)
    [2048, 14336, 4096, 4096], // 2 + 2 + 2 + 1 waves (3584: 448 tiles, 2 waves each, 4 slices)
    [1024, 4096, 14336, undefined], // slices of 8 x 9 tiles at most: too few
    [256, 14336, 4096, undefined],
    [4096, 8, 2 ** 20, undefined], // not even one tile fits
  ];
  for (const [T, N, K, want] of cases) {
    assertEquals(nf4SliceColumns(T, N, K), want, `T=${T} N=${N} K=${K}`);
  }
});

Deno.test("nf4 bitsandbytes loader: round trip of our quantizer's tensors, and clear errors", () => {
  const rng = new Rng(testSeed());
  const host = nf4QuantizeRef(hardWeights(rng, 24 * 40), 24, 40);
  const t = nf4ToBnbTensors(host);
  const back = nf4FromBnb("model.layers.0.self_attn.q_proj.weight", t);
  compareHost(back, host, "round trip");
  assertEquals(Array.from(back.dynmap), Array.from(host.dynmap));
  assertEquals(Array.from(nf4DequantRef(back)), Array.from(nf4DequantRef(host)));

  const name = "layers.3.mlp.up_proj.weight";
  const withState = (patch: Record<string, unknown>): BnbNf4Tensors => {
    const state = { ...JSON.parse(new TextDecoder().decode(t.quantState)), ...patch };
    return { ...t, quantState: new TextEncoder().encode(JSON.stringify(state)) };
  };
  assertThrows(() => nf4FromBnb(name, withState({ quant_type: "fp4" })), Nf4FormatError, "quant_type");
  assertThrows(() => nf4FromBnb(name, withState({ blocksize: 128 })), Nf4FormatError, "blocksize is 128");
  assertThrows(
    () => nf4FromBnb(name, withState({ nested_blocksize: 64 })),
    Nf4FormatError,
    "nested_blocksize",
  );
  assertThrows(
    () => nf4FromBnb(name, withState({ shape: [24, 41] })),
    Nf4FormatError,
    `${name}: has 480 bytes`,
  );
  assertThrows(
    () => nf4FromBnb(name, { ...t, absmax: t.absmax.subarray(1) }),
    Nf4FormatError,
    `${name}.absmax: has 14 bytes`,
  );
  const badMap = t.quantMap.slice();
  badMap[3] = 0.5;
  assertThrows(() => nf4FromBnb(name, { ...t, quantMap: badMap }), Nf4FormatError, `${name}.quant_map`);
  const single = JSON.parse(new TextDecoder().decode(t.quantState));
  delete single.nested_offset;
  assertThrows(
    () => nf4FromBnb(name, { ...t, quantState: new TextEncoder().encode(JSON.stringify(single)) }),
    Nf4FormatError,
    "not double-quantized",
  );
  assertThrows(
    () => nf4FromBnb(name, { ...t, quantState: new TextEncoder().encode("{oops") }),
    Nf4FormatError,
    "quant_state.bitsandbytes__nf4: not valid JSON",
  );
});

await gpuTest("nf4 dequantize: row and column slices vs the reference", async (gpu) => {
  const rng = new Rng(testSeed());
  const out = 136;
  const inDim = 200;
  const host = nf4QuantizeRef(Float32Array.from(rng.normals(out * inDim, 0.05)), out, inDim);
  const w = nf4Upload(gpu, host);
  // W as f16, in either rounding of the absmax multiply-add (see runMatmul).
  const roundings = [nf4DequantRef(host), nf4DequantRef(host, { fused: true })];
  try {
    // Rows: all, and a block off any alignment; columns: all, and a slice inside the rows.
    const slices: [boolean, number, number][] = [[false, 0, out], [false, 5, 70], [true, 0, inDim], [
      true,
      56,
      96,
    ]];
    for (const [columns, first, count] of slices) {
      const [rows, width] = columns ? [out, count] : [count, inDim];
      const d = createBuffer(gpu, (rows * width + 8) * 2, "workspace", "d");
      poison(gpu, d, "f16");
      const enc = new Encoder(gpu);
      await nf4Dequantize(enc, { w, d, first, count, columns });
      await enc.submit();
      const got = Array.from(await readAs(gpu, d, "f16", rows * width + 8));
      d.destroy();
      const label = `${columns ? "columns" : "rows"} ${first}..${first + count - 1}`;
      if (!got.slice(rows * width).every(Number.isNaN)) throw new Error(`${label}: written past the slice`);
      const wants = roundings.map((wd) =>
        Array.from({ length: rows * width }, (_, j) => {
          const [r, c] = [Math.floor(j / width), j % width];
          return columns ? wd[r * inDim + first + c] : wd[(first + r) * inDim + c];
        })
      );
      const exact = wants.some((want) => want.every((v, j) => Object.is(v, got[j]) || v === got[j]));
      if (!exact) {
        const bad = got.findIndex((v, j) => v !== wants[0][j] && v !== wants[1][j]);
        throw new Error(`${label}: element ${bad} is ${got[bad]}, want ${wants[0][bad]} or ${wants[1][bad]}`);
      }
    }
  } finally {
    nf4Release(w);
  }
});

interface MatmulCase {
  T: number;
  out: number;
  in: number;
  mode: Nf4MatmulMode;
  outType: "f16" | "f32";
  alpha: number;
  beta: number;
  /** A low-rank term of width R and scale s (absent: none). */
  lowRank?: { R: number; s: number };
  /** Output columns per slice of the sliced path (tensor cores; absent: the launcher's choice). */
  sliceColumns?: number;
}

async function runMatmul(gpu: Gpu, variant: Nf4MatmulVariant, cs: MatmulCase, rng: Rng): Promise<void> {
  const { T, mode, outType } = cs;
  const host = nf4QuantizeRef(Float32Array.from(rng.normals(cs.out * cs.in, 0.05)), cs.out, cs.in);
  const wDeq = nf4DequantRef(host);
  const wDeqFused = nf4DequantRef(host, { fused: true });
  const K = mode === "fwd" ? cs.in : cs.out;
  const N = mode === "fwd" ? cs.out : cs.in;
  const x = roundToF16(rng.uniforms(T * K));
  const c0 = outType === "f16" ? roundToF16(rng.uniforms(T * N)) : Float64Array.from(rng.uniforms(T * N));
  const w = nf4Upload(gpu, host);
  const xBuf = uploadF16(gpu, x);
  const yBuf = cs.beta !== 0
    ? (outType === "f16" ? uploadF16(gpu, c0) : uploadF32(gpu, c0))
    : createBuffer(gpu, T * N * (outType === "f16" ? 2 : 4), "workspace");
  if (cs.beta === 0) poison(gpu, yBuf, outType);
  const R = cs.lowRank?.R ?? 0;
  const u = roundToF16(rng.uniforms(T * R));
  const f = roundToF16(rng.uniforms(N * R, -0.3, 0.3));
  const uBuf = R > 0 ? uploadF16(gpu, u) : undefined;
  const fBuf = R > 0 ? uploadF16(gpu, f) : undefined;
  try {
    const enc = new Encoder(gpu);
    await nf4Matmul(enc, {
      x: xBuf,
      w,
      y: yBuf,
      T,
      mode,
      out: outType,
      alpha: cs.alpha,
      beta: cs.beta,
      lowRank: cs.lowRank ? { u: uBuf!, f: fBuf!, R, scale: cs.lowRank.s } : undefined,
      variant,
      sliceColumns: cs.sliceColumns,
    });
    await enc.submit();
    const got = await readAs(gpu, yBuf, outType, T * N);
    const label =
      `${variant} ${mode} T=${T} [${cs.out}, ${cs.in}] out ${outType} alpha ${cs.alpha} beta ${cs.beta}` +
      (cs.lowRank ? ` + rank ${R} s ${cs.lowRank.s}` : "") +
      (cs.sliceColumns !== undefined ? ` slices of ${cs.sliceColumns}` : "");
    // alpha * s * U[T,R] · F, with F = B [N, R] ("fwd", an nt product) or A [R, N] ("dx", nn).
    const extra = cs.lowRank
      ? matmulRef(u, f, T, N, R, mode === "fwd" ? "nt" : "nn", { alpha: cs.alpha * cs.lowRank.s })
      : undefined;
    const check = (weights: Float64Array) => {
      const want = nf4MatmulRef(x, weights, T, cs.out, cs.in, mode, {
        alpha: cs.alpha,
        beta: cs.beta,
        c: c0,
      });
      if (extra) { for (let i = 0; i < want.length; i++) want[i] += extra[i]; }
      const scale = rms(want);
      const tol = outType === "f32"
        ? { atol: 2e-5 * scale + 1e-6, rtol: 2e-5 }
        : { atol: 2e-3 * scale, rtol: 1e-3 };
      assertClose(got, want, { ...tol, label });
    };
    // The shader compiler may fuse the absmax's multiply-add: the output must match exactly one
    // of the two roundings of the dequantized weights.
    try {
      check(wDeq);
    } catch (twoRoundings) {
      try {
        check(wDeqFused);
      } catch {
        throw twoRoundings;
      }
    }
  } finally {
    nf4Release(w);
    xBuf.destroy();
    yBuf.destroy();
    uBuf?.destroy();
    fBuf?.destroy();
  }
}

for (const variant of ["tiled", "subgroup_matrix"] as Nf4MatmulVariant[]) {
  await gpuTest(`nf4 matmul ${variant}: forward and input gradient on ragged shapes`, async (gpu) => {
    const why = nf4MatmulUnsupported(gpu.caps, { out: 72, in: 136 }, variant);
    if (why) {
      console.log(`  ${variant} not available on ${gpu.name}: ${why}`);
      return;
    }
    const seed = testSeed();
    const rng = new Rng(seed);
    const cases: MatmulCase[] = [
      { T: 37, out: 72, in: 136, mode: "fwd", outType: "f16", alpha: 1, beta: 0 },
      { T: 37, out: 72, in: 136, mode: "dx", outType: "f32", alpha: 1, beta: 0 },
      { T: 130, out: 200, in: 264, mode: "fwd", outType: "f16", alpha: 1, beta: 0 },
      { T: 70, out: 136, in: 200, mode: "dx", outType: "f32", alpha: 0.5, beta: 1 },
      { T: 45, out: 88, in: 72, mode: "fwd", outType: "f32", alpha: -2, beta: 0.25 },
      // Fused LoRA paths: a low-rank term over one partial K step, several, and one whole. Scales
      // that are powers of two where the output is f32 (F times s is staged as f16).
      { T: 37, out: 72, in: 136, mode: "fwd", outType: "f16", alpha: 1, beta: 0, lowRank: { R: 8, s: 0.3 } },
      { T: 70, out: 136, in: 200, mode: "dx", outType: "f32", alpha: 0.5, beta: 1, lowRank: { R: 40, s: 2 } },
      {
        T: 130,
        out: 200,
        in: 264,
        mode: "fwd",
        outType: "f32",
        alpha: 1,
        beta: 0,
        lowRank: { R: 64, s: 0.5 },
      },
      { T: 45, out: 88, in: 72, mode: "dx", outType: "f16", alpha: 1, beta: 0, lowRank: { R: 16, s: 1.7 } },
    ];
    // These run the decoding kernel; on tensor cores the launcher would slice such small weights.
    for (const cs of cases) cs.sliceColumns = 0;
    // The sliced path (each slice of W dequantized into an f16 workspace first), asked for on either
    // variant: several slices with a ragged last one, T not a multiple of the row tiles, LoRA terms in
    // both modes (F sliced by rows for "fwd", by columns for "dx"), accumulation into y.
    cases.push({
      T: 1100,
      out: 392,
      in: 264,
      mode: "fwd",
      outType: "f16",
      alpha: 1,
      beta: 0,
      sliceColumns: 128,
    });
    cases.push({
      T: 1030,
      out: 200,
      in: 392,
      mode: "dx",
      outType: "f32",
      alpha: 0.5,
      beta: 1,
      lowRank: { R: 40, s: 2 },
      sliceColumns: 256,
    });
    cases.push({
      T: 1024,
      out: 264,
      in: 136,
      mode: "fwd",
      outType: "f32",
      alpha: 1,
      beta: 0,
      lowRank: { R: 64, s: 0.5 },
      sliceColumns: 128,
    });
    cases.push({
      T: 1030,
      out: 136,
      in: 264,
      mode: "dx",
      outType: "f16",
      alpha: 1,
      beta: 0,
      sliceColumns: 128,
    });
    cases.push({
      T: 37,
      out: 264,
      in: 72,
      mode: "fwd",
      outType: "f32",
      alpha: 1,
      beta: 0,
      lowRank: { R: 8, s: 0.5 },
      sliceColumns: 128,
    });
    if (variant === "subgroup_matrix") {
      // The launcher's own choice: small weights take one slice.
      cases.push({ T: 1024, out: 72, in: 136, mode: "fwd", outType: "f16", alpha: 1, beta: 0 });
      cases.push({
        T: 45,
        out: 88,
        in: 72,
        mode: "dx",
        outType: "f32",
        alpha: 1,
        beta: 0,
        lowRank: { R: 16, s: 2 },
      });
    }
    if (variant === "tiled") {
      // Blocks straddle rows when in is not a multiple of 64 (nor of 8); ragged R.
      cases.push({ T: 9, out: 13, in: 27, mode: "fwd", outType: "f16", alpha: 1, beta: 0 });
      cases.push({ T: 9, out: 13, in: 27, mode: "dx", outType: "f32", alpha: 1, beta: 0 });
      cases.push({
        T: 9,
        out: 13,
        in: 27,
        mode: "fwd",
        outType: "f32",
        alpha: 1,
        beta: 0,
        lowRank: { R: 5, s: 4 },
      });
      cases.push({
        T: 9,
        out: 13,
        in: 27,
        mode: "dx",
        outType: "f16",
        alpha: 1,
        beta: 0,
        lowRank: { R: 21, s: 0.7 },
      });
    }
    for (const cs of cases) {
      try {
        await runMatmul(gpu, variant, cs, rng);
      } catch (e) {
        throw new Error(`seed ${seed}: ${(e as Error).message}`);
      }
    }
  });
}
