// matvec against its float64 reference: NF4 and f16 weights, f16 and f32 outputs, the second
// product, accumulation into y, ragged shapes (rows not a multiple of the rows per workgroup, rows
// that straddle NF4 blocks, an odd number of code words per row, words per row not a multiple of the
// threads per row, rows longer than one pass of 256 threads), a weight bound at an offset, large
// inputs (an f16 accumulator would overflow), the RMSNorm folded into f16 products (its h checked too)
// and into the fused NF4 q, k, v and SwiGLU products (norm weights above 1 and residual rows near
// f16's range), outputs poisoned before the run.

import { ok as assert } from "node:assert";
import {
  createBuffer,
  poison,
  readAs,
  roundToF16,
  upload,
  uploadF16,
  writeBuffer,
} from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, rms, Rng, testSeed } from "../../engine/testing.ts";
import { nf4Release, nf4Upload } from "../nf4/nf4.ts";
import { nf4DequantRef, nf4QuantizeRef } from "../nf4/nf4_ref.ts";
import {
  matvec,
  type MatvecArgs,
  matvecQkv,
  matvecQkvUnsupported,
  matvecSwiglu,
  matvecUnsupported,
  type MatvecVariant,
  scaleNormWeight,
  stackQkvTables,
} from "./matvec.ts";
import { matvecRef } from "./matvec_ref.ts";
import { ropeInvFreq, ropeRotation } from "../rope/rope.ts";
import { ropeRef } from "../rope/rope_ref.ts";
import { swigluRef } from "../swiglu/swiglu_ref.ts";
import { rmsnormRef } from "../norm/rmsnorm_ref.ts";
import { LLAMA31_8B } from "../../model/config.ts";

interface Case {
  kind: "nf4" | "f16";
  out: number;
  in: number;
  yType: "f16" | "f32";
  alpha: number;
  beta: number;
  /** Width of the second product, 0 for none. */
  K2: number;
  /** Magnitude of x. */
  xScale: number;
  /** Byte offset of an f16 weight inside its buffer. */
  wOffset?: number;
  /** Elements of y before the output. */
  yOffset?: number;
  /** Elements (NaN) of x2's buffer before x2. */
  x2Offset?: number;
  /** The product reads RMSNorm(x) with a random weight and this eps (f16 weights). */
  normEps?: number;
}

const CASES: Case[] = [
  { kind: "nf4", out: 77, in: 96, yType: "f16", alpha: 1, beta: 0, K2: 0, xScale: 1 },
  { kind: "nf4", out: 300, in: 1056, yType: "f32", alpha: 0.7, beta: 1, K2: 5, xScale: 200 },
  // Teams of 64 (4 per workgroup, 16 rows), one block per word pair, a LoRA-sized second product.
  // x2 from element 128 of its buffer (a projection's share of a u shared by three).
  {
    kind: "nf4",
    out: 37,
    in: 4096,
    yType: "f16",
    alpha: 1,
    beta: 1,
    K2: 64,
    xScale: 1,
    yOffset: 37 * 3,
    x2Offset: 128,
  },
  // x near the f16 limit (no sum of four f16 products may overflow) and a small x.
  { kind: "nf4", out: 64, in: 256, yType: "f32", alpha: 1, beta: 0, K2: 0, xScale: 65000 },
  { kind: "nf4", out: 64, in: 4096, yType: "f16", alpha: 1, beta: 0, K2: 0, xScale: 0.01 },
  // Teams of 256 with two passes over the row (257 word pairs).
  { kind: "nf4", out: 9, in: 16448, yType: "f32", alpha: 1, beta: 0, K2: 3, xScale: 2 },
  { kind: "f16", out: 45, in: 200, yType: "f16", alpha: 1, beta: 1, K2: 64, xScale: 1 },
  { kind: "f16", out: 1030, in: 8, yType: "f32", alpha: 0.5, beta: 0, K2: 0, xScale: 3, wOffset: 512 },
  // Few rows, spread over more lanes: 256 per row (LoRA's A·x, R = 64, in 4096), 128 per row with a
  // ragged last step, and 2048 rows at the lane switch back to 32.
  { kind: "f16", out: 64, in: 4096, yType: "f16", alpha: 1, beta: 0, K2: 0, xScale: 1 },
  {
    kind: "f16",
    out: 7,
    in: 2064,
    yType: "f32",
    alpha: 1,
    beta: 1,
    K2: 9,
    xScale: 1,
    yOffset: 5,
    x2Offset: 3,
  },
  { kind: "f16", out: 2048, in: 64, yType: "f16", alpha: 1, beta: 0, K2: 0, xScale: 1 },
  // RMSNorm folded in: the 8B LoRA group's A·h (3 x 64 rows of 4096), a row of 516 vec4s (the norm's
  // last step ragged over 256 invocations) with a large x, 32 lanes per row and beta 1.
  { kind: "f16", out: 192, in: 4096, yType: "f16", alpha: 1, beta: 0, K2: 0, xScale: 1, normEps: 1e-5 },
  { kind: "f16", out: 2050, in: 2064, yType: "f32", alpha: 1, beta: 1, K2: 0, xScale: 300, normEps: 0.5 },
  // A small x, where eps weighs as much as the mean square.
  { kind: "f16", out: 64, in: 1024, yType: "f16", alpha: 1, beta: 0, K2: 0, xScale: 0.05, normEps: 1e-3 },
];

function uniform(rng: Rng, n: number, scale: number): Float64Array {
  return Float64Array.from({ length: n }, () => scale * (2 * rng.next() - 1));
}

async function runCase(gpu: Gpu, c: Case, variant: MatvecVariant, seed: number): Promise<void> {
  const rng = new Rng(seed);
  const label = `seed ${seed} ${variant} ${JSON.stringify(c)}`;
  const x = roundToF16(uniform(rng, c.in, c.xScale));
  const normW = c.normEps === undefined ? undefined : roundToF16(uniform(rng, c.in, 0.5).map((v) => 1 + v));
  // What the product reads: x, or its RMSNorm.
  const input = normW ? rmsnormRef(x, normW, 1, c.in, c.normEps!).y : x;
  const owned: GPUBuffer[] = [];
  const keep = (b: GPUBuffer) => (owned.push(b), b);
  let wRef: Float64Array;
  let weight: MatvecArgs["w"];
  let release = () => {};
  if (c.kind === "nf4") {
    const host = nf4QuantizeRef(Float32Array.from(uniform(rng, c.out * c.in, 0.1)), c.out, c.in);
    wRef = nf4DequantRef(host, { f16: false });
    const w = nf4Upload(gpu, host, "matvec test");
    weight = { kind: "nf4", w };
    release = () => nf4Release(w);
  } else {
    wRef = roundToF16(uniform(rng, c.out * c.in, 1 / Math.sqrt(c.in)));
    const off = c.wOffset ?? 0;
    const bits = new Uint16Array(off / 2 + c.out * c.in + 64);
    bits.set(new Uint16Array(Float16Array.from(wRef).buffer), off / 2);
    const buf = keep(upload(gpu, bits));
    weight = { kind: "f16", w: off ? { buffer: buf, offset: off, size: c.out * c.in * 2 } : buf };
  }
  try {
    const w2 = roundToF16(uniform(rng, c.out * c.K2, 0.5));
    const x2 = roundToF16(uniform(rng, c.K2, 2));
    const y0 = c.yType === "f16" ? roundToF16(uniform(rng, c.out, 4)) : uniform(rng, c.out, 4);
    // y sits at element yOffset of a buffer with 4 more elements after it; all else stays poisoned.
    const yOff = c.yOffset ?? 0;
    const bytes = c.yType === "f32" ? 4 : 2;
    const y = keep(createBuffer(gpu, (yOff + c.out + 4) * bytes, "workspace", "y"));
    poison(gpu, y, c.yType);
    if (c.beta !== 0) {
      const host = c.yType === "f32" ? new Float32Array(y.size / 4) : new Float16Array(y.size / 2);
      host.fill(NaN);
      host.set(y0, yOff);
      writeBuffer(gpu, y, new Uint8Array(host.buffer));
    }
    const xb = keep(uploadF16(gpu, x));
    const x2Off = c.x2Offset ?? 0;
    const x2Buf = new Float64Array(x2Off + c.K2).fill(NaN);
    x2Buf.set(x2, x2Off);
    const second = c.K2 > 0
      ? {
        w: keep(uploadF16(gpu, w2)),
        x: keep(uploadF16(gpu, x2Buf)),
        alpha: 1.5,
        xOffset: x2Off || undefined,
      }
      : undefined;
    const h = normW ? keep(createBuffer(gpu, (c.in + 4) * 2, "workspace", "h")) : undefined;
    if (h) poison(gpu, h, "f16");
    const norm = normW ? { w: keep(uploadF16(gpu, normW)), eps: c.normEps!, h: h! } : undefined;
    const enc = new Encoder(gpu, { label: "matvec test" });
    await matvec(enc, {
      w: weight,
      out: c.out,
      in: c.in,
      K2: c.K2 || undefined,
      x: xb,
      y,
      yOffset: yOff || undefined,
      yType: c.yType,
      alpha: c.alpha,
      beta: c.beta,
      second,
      norm,
      variant,
    });
    await enc.submit();
    // The product's input as the kernel saw it: x, or its h.
    let productInput: ArrayLike<number> = input;
    if (h) {
      // h is written whole and nothing after it. Against the float64 norm: f16(x·r) may round the
      // other way (r in f32), and the product with the weight rounds again, so within 2 units in the
      // last place (relative 2^-9 at worst). The product is then checked on this h, so that such a
      // rounding is not taken for an error of the product.
      const hAll = await readAs(gpu, h, "f16", c.in + 4);
      assert(Array.from(hAll).slice(c.in).every(Number.isNaN), `${label}: h written past its end`);
      productInput = Array.from(hAll).slice(0, c.in);
      assertClose(productInput, input, { atol: 0, rtol: 2e-3, label: `${label} h` });
    }
    const all = await readAs(gpu, y, c.yType, yOff + c.out + 4);
    const got = Array.from(all).slice(yOff, yOff + c.out);
    for (let i = 0; i < all.length; i++) {
      if ((i < yOff || i >= yOff + c.out) && !Number.isNaN(all[i])) {
        throw new Error(`${label}: element ${i} of y lies outside the output and was written`);
      }
    }
    const want = matvecRef({
      w: wRef,
      out: c.out,
      in: c.in,
      x: productInput,
      alpha: c.alpha,
      beta: c.beta,
      y0,
      second: second ? { w: w2, x: x2, K: c.K2, alpha: 1.5 } : undefined,
    });
    // f32 sums of up to ~1000 terms; f16 output rounds to 2^-11 relative. The NF4 kernels' f16
    // products and sums of four round at random, about 3e-4 of the output's rms per element (a
    // float64 simulation of their roundings: at most 1.0e-3 beyond rtol over 5,000 rows of 96 to
    // 14336 terms), hence the NF4 atol.
    const scale = rms(want);
    const tol = c.kind === "nf4"
      ? { atol: 2.5e-3 * scale, rtol: 1e-3 }
      : c.yType === "f16"
      ? { atol: 1e-3 * scale, rtol: 1e-3 }
      : { atol: 1e-5 * scale, rtol: 1e-5 };
    assertClose(got, want, { ...tol, label });
  } finally {
    release();
    for (const b of owned) b.destroy();
  }
}

function variants(gpu: Gpu): MatvecVariant[] {
  return (["workgroup", "subgroup"] as const).filter((v) =>
    matvecUnsupported(gpu.caps, "f16", { out: 1, in: 8 }, v) === undefined
  );
}

await gpuTest(
  "matvec: NF4 and f16 weights vs float64, ragged shapes, second product, accumulate",
  async (gpu) => {
    const seed = testSeed();
    const vs = variants(gpu);
    assert(vs.includes("workgroup"), `the portable variant must run on ${gpu.name}`);
    if (gpu.caps.subgroups) {
      assert(
        vs.includes("subgroup"),
        `${gpu.name} has subgroups but no subgroup variant`,
      );
    }
    for (const v of vs) {
      for (const c of CASES) {
        if (matvecUnsupported(gpu.caps, c.kind, c, v) === undefined) await runCase(gpu, c, v, seed);
      }
    }
  },
);

interface SwigluCase {
  out: number;
  in: number;
  /** LoRA rank (0: none) and the elements of the shared x2 before gate's and up's slices. */
  K2: number;
  offsets: [number, number];
  yOffset: number;
  /** The RMSNorm folded in (K2 = 0): x is a residual row of magnitude xScale, the norm's weight
   * uniform in +-wMax. */
  norm?: FoldedNormCase;
}

interface FoldedNormCase {
  eps: number;
  xScale: number;
  wMax: number;
}

/** A residual row and a norm weight of a FoldedNormCase: the weight prepared on the GPU (checked
 * against nw · 2^-k / 4), the weighted row xw = f16(x · w) that the products read as their x, its
 * FoldedNorm, and the float64 RMSNorm (in HF's order of f16 roundings) that the products compute. */
async function foldedNormInputs(gpu: Gpu, rng: Rng, c: FoldedNormCase, n: number) {
  const x = roundToF16(uniform(rng, n, c.xScale));
  const nw = roundToF16(uniform(rng, n, c.wMax));
  nw[0] = c.wMax; // the largest weight sets the scale
  const raw = uploadF16(gpu, nw);
  try {
    const scaled = await scaleNormWeight(gpu, raw, n, "matvec test norm weight");
    const mul = 2 ** Math.max(0, Math.ceil(Math.log2(c.wMax)));
    assert(scaled.mul === mul, `scaleNormWeight: mul ${scaled.mul} for max |w| = ${c.wMax}, expected ${mul}`);
    const w = Array.from(await readAs(gpu, scaled.w, "f16", n));
    const wantW = roundToF16(Array.from(nw, (v) => v / mul / 4));
    const bad = w.findIndex((v, i) => v !== wantW[i]);
    assert(bad < 0, `scaleNormWeight: element ${bad} is ${w[bad]}, expected ${wantW[bad]}`);
    const xw = roundToF16(Array.from(x, (v, i) => v * w[i]));
    const residual = uploadF16(gpu, x);
    return { x, xw, scaled, h: rmsnormRef(x, nw, 1, n, c.eps).y, norm: { residual, mul, eps: c.eps } };
  } finally {
    raw.destroy();
  }
}

const SWIGLU_CASES: SwigluCase[] = [
  { out: 77, in: 2048, K2: 0, offsets: [0, 0], yOffset: 0 },
  // 33 code words per row (teams of 64, a ragged step), a ragged last workgroup.
  { out: 300, in: 1056, K2: 5, offsets: [0, 5], yOffset: 3 },
  // The 8B MLP's row length with a LoRA of rank 64: u = [gate's 64 | up's 64].
  { out: 37, in: 4096, K2: 64, offsets: [0, 64], yOffset: 0 },
  // Rows of 514 words: two passes of a team of 256.
  { out: 9, in: 16448, K2: 3, offsets: [7, 2], yOffset: 0 },
  // The RMSNorm folded in: the 8B MLP's rows, a norm weight above 1 (scaled by 2^-2), a residual near
  // f16's range; a small residual where eps matters; rows of 33 words.
  { out: 70, in: 4096, K2: 0, offsets: [0, 0], yOffset: 1, norm: { eps: 1e-5, xScale: 30000, wMax: 3 } },
  { out: 40, in: 1056, K2: 0, offsets: [0, 0], yOffset: 0, norm: { eps: 1e-2, xScale: 0.05, wMax: 1 } },
];

async function runSwigluCase(gpu: Gpu, c: SwigluCase, seed: number): Promise<void> {
  const rng = new Rng(seed);
  const label = `seed ${seed} swiglu ${JSON.stringify(c)}`;
  const folded = c.norm ? await foldedNormInputs(gpu, rng, c.norm, c.in) : undefined;
  const x = folded?.xw ?? roundToF16(uniform(rng, c.in, 1));
  const hosts = [0, 1].map(() =>
    nf4QuantizeRef(Float32Array.from(uniform(rng, c.out * c.in, 0.1)), c.out, c.in)
  );
  const ws = hosts.map((h) => nf4Upload(gpu, h, "matvec swiglu test"));
  const owned: GPUBuffer[] = folded ? [folded.scaled.w, folded.norm.residual] : [];
  const keep = (b: GPUBuffer) => (owned.push(b), b);
  try {
    const b2 = [0, 1].map(() => roundToF16(uniform(rng, c.out * c.K2, 0.5)));
    const x2Len = Math.max(c.offsets[0], c.offsets[1]) + c.K2;
    const x2 = roundToF16(uniform(rng, x2Len, 2));
    const y = keep(createBuffer(gpu, (c.yOffset + c.out + 4) * 2, "workspace", "y"));
    poison(gpu, y, "f16");
    const xb = keep(uploadF16(gpu, x));
    const lora = c.K2 > 0 ? { K2: c.K2, alpha: 1.5, x: keep(uploadF16(gpu, x2)) } : undefined;
    const proj = (i: number) => ({
      w: ws[i],
      second: lora ? { w: keep(uploadF16(gpu, b2[i])), xOffset: c.offsets[i] } : undefined,
    });
    const enc = new Encoder(gpu, { label: "matvec swiglu test" });
    await matvecSwiglu(enc, {
      out: c.out,
      in: c.in,
      gate: proj(0),
      up: proj(1),
      x: xb,
      lora,
      y,
      yOffset: c.yOffset,
      norm: folded?.norm,
    });
    await enc.submit();
    const all = await readAs(gpu, y, "f16", c.yOffset + c.out + 4);
    for (let i = 0; i < all.length; i++) {
      if ((i < c.yOffset || i >= c.yOffset + c.out) && !Number.isNaN(all[i])) {
        throw new Error(`${label}: element ${i} of y lies outside the output and was written`);
      }
    }
    const [g, u] = [0, 1].map((i) =>
      roundToF16(matvecRef({
        w: nf4DequantRef(hosts[i], { f16: false }),
        out: c.out,
        in: c.in,
        x: folded?.h ?? x,
        second: lora
          ? { w: b2[i], x: x2.slice(c.offsets[i], c.offsets[i] + c.K2), K: c.K2, alpha: 1.5 }
          : undefined,
      }))
    );
    const want = swigluRef(g, u);
    const got = Array.from(all).slice(c.yOffset, c.yOffset + c.out);
    // g and u may round to neighbouring f16 values (2^-11 relative) where the f32 sum lies near a tie,
    // and carry the f16 products' rounding (about 2^-12 of their rms, matvec_nf4.wgsl), which an
    // element with a large g and a small u (or the reverse) scales by the other factor. With the norm
    // folded in, h's elements carry one f16 rounding where the reference's carry two.
    const atol = 2e-3 * rms(want) + 2e-3 * rms(g) * rms(u);
    assertClose(got, want, { atol, rtol: 3e-3, label });
  } finally {
    ws.forEach((w) => nf4Release(w));
    for (const b of owned) b.destroy();
  }
}

await gpuTest("matvec: NF4 gate and up with their SwiGLU in one pass vs float64", async (gpu) => {
  const seed = testSeed();
  for (const c of SWIGLU_CASES) {
    if (matvecUnsupported(gpu.caps, "nf4", c, "workgroup") === undefined) await runSwigluCase(gpu, c, seed);
  }
});

interface RopeCase {
  heads: number;
  D: number;
  in: number;
  K2: number;
  yOffset: number;
}

const ROPE_CASES: RopeCase[] = [
  { heads: 3, D: 64, in: 1056, K2: 5, yOffset: 0 },
  // The 8B k projection into a KV-cache row, LoRA rank 64.
  { heads: 2, D: 128, in: 4096, K2: 64, yOffset: 256 * 5 },
];

async function runRopeCase(gpu: Gpu, c: RopeCase, seed: number): Promise<void> {
  const rng = new Rng(seed);
  const out = c.heads * c.D;
  const position = Math.floor(rng.next() * 131072);
  const label = `seed ${seed} rope at ${position} ${JSON.stringify(c)}`;
  const x = roundToF16(uniform(rng, c.in, 1));
  const host = nf4QuantizeRef(Float32Array.from(uniform(rng, out * c.in, 0.1)), out, c.in);
  const w = nf4Upload(gpu, host, "matvec rope test");
  const owned: GPUBuffer[] = [];
  const keep = (b: GPUBuffer) => (owned.push(b), b);
  try {
    const b2 = roundToF16(uniform(rng, out * c.K2, 0.5));
    const x2 = roundToF16(uniform(rng, c.K2, 2));
    const invFreq = ropeInvFreq(c.D, 500000, LLAMA31_8B.ropeScaling ?? undefined);
    const rotation = ropeRotation(invFreq, position);
    const y = keep(createBuffer(gpu, (c.yOffset + out + 4) * 2, "workspace", "y"));
    poison(gpu, y, "f16");
    const enc = new Encoder(gpu, { label: "matvec rope test" });
    await matvec(enc, {
      w: { kind: "nf4", w },
      out,
      in: c.in,
      K2: c.K2,
      x: keep(uploadF16(gpu, x)),
      y,
      yOffset: c.yOffset,
      yType: "f16",
      second: { w: keep(uploadF16(gpu, b2)), x: keep(uploadF16(gpu, x2)), alpha: 0.5 },
      rope: { headDim: c.D, rotation: keep(upload(gpu, rotation)) },
    });
    await enc.submit();
    const all = await readAs(gpu, y, "f16", c.yOffset + out + 4);
    for (let i = 0; i < all.length; i++) {
      if ((i < c.yOffset || i >= c.yOffset + out) && !Number.isNaN(all[i])) {
        throw new Error(`${label}: element ${i} of y lies outside the output and was written`);
      }
    }
    const v = roundToF16(matvecRef({
      w: nf4DequantRef(host, { f16: false }),
      out,
      in: c.in,
      x,
      second: { w: b2, x: x2, K: c.K2, alpha: 0.5 },
    }));
    const want = ropeRef(v, [position], invFreq, 1, c.heads, c.D);
    const got = Array.from(all).slice(c.yOffset, c.yOffset + out);
    // The rotated values may come from f16 neighbours of the reference's (ties of the f32 sums).
    assertClose(got, want, { atol: 3e-3 * rms(want), rtol: 3e-3, label });
  } finally {
    nf4Release(w);
    for (const b of owned) b.destroy();
  }
}

await gpuTest("matvec: NF4 product with the rotary embedding of one position vs float64", async (gpu) => {
  const seed = testSeed();
  for (const c of ROPE_CASES) {
    if (matvecUnsupported(gpu.caps, "nf4", { out: c.heads * c.D, in: c.in, K2: c.K2 }) === undefined) {
      await runRopeCase(gpu, c, seed);
    }
  }
});

/** The distance between f16 values next to |v|. */
function f16Step(v: number): number {
  return v < 2 ** -14 ? 2 ** -24 : 2 ** (Math.floor(Math.log2(v)) - 10);
}

interface QkvCase {
  heads: number;
  kvHeads: number;
  D: number;
  in: number;
  /** LoRA rank (0: none) and which of q, k, v have it. */
  K2: number;
  lora: [boolean, boolean, boolean];
  /** The KV caches' row that the position writes. */
  cacheRow: number;
  /** The RMSNorm folded in (K2 = 0). */
  norm?: FoldedNormCase;
}

const QKV_CASES: QkvCase[] = [
  // LoRA on q and v only (k's rows of the stacked B are zero), teams of 32 spanning two projections.
  { heads: 4, kvHeads: 2, D: 64, in: 256, K2: 5, lora: [true, false, true], cacheRow: 3 },
  // The 8B row length and head size, LoRA of rank 64 on all three.
  { heads: 4, kvHeads: 1, D: 128, in: 4096, K2: 64, lora: [true, true, true], cacheRow: 7 },
  { heads: 2, kvHeads: 1, D: 128, in: 1024, K2: 0, lora: [false, false, false], cacheRow: 0 },
  // The RMSNorm folded in: the 8B row length, a norm weight above 1, a residual near f16's range;
  // teams of 32 with a small residual.
  {
    heads: 4,
    kvHeads: 2,
    D: 128,
    in: 4096,
    K2: 0,
    lora: [false, false, false],
    cacheRow: 2,
    norm: { eps: 1e-5, xScale: 30000, wMax: 2.5 },
  },
  {
    heads: 4,
    kvHeads: 2,
    D: 64,
    in: 256,
    K2: 0,
    lora: [false, false, false],
    cacheRow: 1,
    norm: { eps: 1e-2, xScale: 0.05, wMax: 0.75 },
  },
];

/** q, k and v in one pass against float64 (q and k rotated), and (without a folded norm) within one
 * f16 step of the three separate products it replaces; nothing outside the outputs written, and
 * nothing into the caches for a position past them. */
async function runQkvCase(gpu: Gpu, c: QkvCase, seed: number): Promise<void> {
  const rng = new Rng(seed);
  const position = Math.floor(rng.next() * 131072);
  const label = `seed ${seed} qkv at ${position} ${JSON.stringify(c)}`;
  const rows = [c.heads * c.D, c.kvHeads * c.D, c.kvHeads * c.D];
  const folded = c.norm ? await foldedNormInputs(gpu, rng, c.norm, c.in) : undefined;
  const x = folded?.xw ?? roundToF16(uniform(rng, c.in, 1));
  const hosts = rows.map((r) => nf4QuantizeRef(Float32Array.from(uniform(rng, r * c.in, 0.1)), r, c.in));
  const ws = hosts.map((h) => nf4Upload(gpu, h, "matvec qkv test"));
  const owned: GPUBuffer[] = folded ? [folded.scaled.w, folded.norm.residual] : [];
  const keep = (b: GPUBuffer) => (owned.push(b), b);
  try {
    const scales = [0.5, 1.25, 2];
    const xOffsets = [0, 3, 7];
    const u = roundToF16(uniform(rng, 7 + c.K2, 2));
    const bs = rows.map((r, i) =>
      c.lora[i] ? roundToF16(uniform(rng, r * c.K2, 0.5)) : new Float64Array(r * c.K2)
    );
    const stacked = new Float64Array(bs.reduce((n, b) => n + b.length, 0));
    bs.reduce((at, b) => (stacked.set(b, at), at + b.length), 0);
    const invFreq = ropeInvFreq(c.D, 500000, LLAMA31_8B.ropeScaling ?? undefined);
    const rotation = keep(upload(gpu, ropeRotation(invFreq, position)));
    const xb = keep(uploadF16(gpu, x));
    const ub = keep(uploadF16(gpu, u));
    const tables = await stackQkvTables(gpu, ws[0], ws[1], ws[2], "matvec qkv test");
    owned.push(tables.absmaxCodes, tables.scales, tables.maps);
    // The caches hold rows 0 .. cacheRow + 1; 4 more elements show stray writes past them.
    const cacheRows = c.cacheRow + 2;
    const offsets = rows.map((r, i) => i ? c.cacheRow * r : 0);
    const sizes = rows.map((r, i) => (i ? cacheRows * r : r) + 4);
    const outs = sizes.map((n) => keep(createBuffer(gpu, n * 2, "workspace")));
    const sep = sizes.map((n) => keep(createBuffer(gpu, n * 2, "workspace")));
    const positionAt = (row: number) => keep(upload(gpu, Uint32Array.of(row)));
    for (const b of [...outs, ...sep]) poison(gpu, b, "f16");
    const proj = (i: number) => ({
      w: ws[i],
      lora: c.lora[i] ? { alpha: scales[i], xOffset: xOffsets[i] } : undefined,
    });
    const args = {
      in: c.in,
      headDim: c.D,
      q: proj(0),
      k: proj(1),
      v: proj(2),
      tables,
      x: xb,
      lora: c.K2 > 0 ? { K2: c.K2, b: keep(uploadF16(gpu, stacked)), x: ub } : undefined,
      rotation,
      y: outs[0],
      kCache: outs[1],
      vCache: outs[2],
      cacheRows,
      norm: folded?.norm,
    };
    const enc = new Encoder(gpu, { label: "matvec qkv test" });
    await matvecQkv(enc, { ...args, position: positionAt(c.cacheRow) });
    for (let i = 0; i < (folded ? 0 : 3); i++) {
      await matvec(enc, {
        w: { kind: "nf4", w: ws[i] },
        out: rows[i],
        in: c.in,
        K2: c.lora[i] ? c.K2 : undefined,
        x: xb,
        y: sep[i],
        yOffset: offsets[i],
        yType: "f16",
        second: c.lora[i]
          ? { w: keep(uploadF16(gpu, bs[i])), x: ub, alpha: scales[i], xOffset: xOffsets[i] }
          : undefined,
        rope: i < 2 ? { headDim: c.D, rotation } : undefined,
      });
    }
    await enc.submit();
    for (let i = 0; i < 3; i++) {
      const name = "qkv"[i];
      const off = offsets[i];
      const all = await readAs(gpu, outs[i], "f16", sizes[i]);
      for (let e = 0; e < all.length; e++) {
        if ((e < off || e >= off + rows[i]) && !Number.isNaN(all[e])) {
          throw new Error(`${label}: element ${e} of ${name}'s output lies outside it and was written`);
        }
      }
      const got = Array.from(all).slice(off, off + rows[i]);
      if (!folded) {
        const alone = Array.from(await readAs(gpu, sep[i], "f16", off + rows[i])).slice(off);
        // The same operations in the same order; a compiler may contract a multiply and an add into
        // an fma in one entry and not the other, which moves a rounding by one f16 step (and a
        // rotated value that cancels to near zero by a few f32 steps of its terms).
        const floor = 2 ** -20 * rms(alone);
        const diff = got.findIndex((g, e) =>
          !(Math.abs(g - alone[e]) <= f16Step(Math.max(Math.abs(g), Math.abs(alone[e]))) + floor)
        );
        assert(
          diff < 0,
          `${label}: ${name}[${diff}] = ${got[diff]}, the separate product gives ${alone[diff]}`,
        );
      }
      const plain = roundToF16(matvecRef({
        w: nf4DequantRef(hosts[i], { f16: false }),
        out: rows[i],
        in: c.in,
        x: folded?.h ?? x,
        second: c.lora[i]
          ? { w: bs[i], x: u.slice(xOffsets[i], xOffsets[i] + c.K2), K: c.K2, alpha: scales[i] }
          : undefined,
      }));
      const want = i < 2 ? ropeRef(plain, [position], invFreq, 1, rows[i] / c.D, c.D) : Array.from(plain);
      assertClose(got, want, { atol: 3e-3 * rms(want), rtol: 3e-3, label: `${label} ${name}` });
    }
    // At position cacheRows (past the caches) q is still written, the caches are left alone.
    for (const b of outs) poison(gpu, b, "f16");
    const past = new Encoder(gpu, { label: "matvec qkv test, past the caches" });
    await matvecQkv(past, { ...args, position: positionAt(cacheRows) });
    await past.submit();
    const q = Array.from(await readAs(gpu, outs[0], "f16", rows[0]));
    assert(q.every((e) => !Number.isNaN(e)), `${label}: q not written at a position past the caches`);
    for (const i of [1, 2]) {
      const cache = Array.from(await readAs(gpu, outs[i], "f16", sizes[i]));
      assert(cache.every(Number.isNaN), `${label}: ${"qkv"[i]} written into the caches at row ${cacheRows}`);
    }
  } finally {
    ws.forEach((w) => nf4Release(w));
    for (const b of owned) b.destroy();
  }
}

await gpuTest("matvec: NF4 q, k and v in one pass vs float64 and vs the separate products", async (gpu) => {
  const seed = testSeed();
  for (const c of QKV_CASES) {
    const shape = { in: c.in, headDim: c.D, qRows: c.heads * c.D, kvRows: c.kvHeads * c.D, K2: c.K2 };
    if (matvecQkvUnsupported(gpu.caps, shape) === undefined) await runQkvCase(gpu, c, seed);
  }
  const odd = matvecQkvUnsupported(gpu.caps, { in: 128, headDim: 64, qRows: 64, kvRows: 64 });
  if (gpu.caps.f16) assert(odd?.includes("multiple of 256"), String(odd));
});

await gpuTest(
  "matvec: an NF4 product into the residual stream writes the next norm's weighted input",
  async (gpu) => {
    const seed = testSeed();
    const rng = new Rng(seed);
    for (const [out, inDim, wMax] of [[4096, 1024, 2.5], [300, 96, 0.5]]) {
      const label = `seed ${seed} nextNorm [${out}, ${inDim}] max |w| ${wMax}`;
      const host = nf4QuantizeRef(Float32Array.from(uniform(rng, out * inDim, 0.1)), out, inDim);
      const w = nf4Upload(gpu, host, "matvec nextNorm test");
      const nw = roundToF16(uniform(rng, out, wMax));
      const owned: GPUBuffer[] = [];
      const keep = (b: GPUBuffer) => (owned.push(b), b);
      try {
        const raw = keep(uploadF16(gpu, nw));
        const scaled = await scaleNormWeight(gpu, raw, out, label);
        keep(scaled.w);
        const x = keep(uploadF16(gpu, roundToF16(uniform(rng, inDim, 1))));
        const y0 = roundToF16(uniform(rng, out, 3));
        const [y, yPlain] = [0, 1].map(() => keep(uploadF16(gpu, y0)));
        const xw = keep(createBuffer(gpu, (out + 4) * 2, "workspace", "xw"));
        poison(gpu, xw, "f16");
        const enc = new Encoder(gpu, { label });
        const args = { w: { kind: "nf4", w } as const, out, in: inDim, x, yType: "f16" as const, beta: 1 };
        await matvec(enc, { ...args, y, nextNorm: { w: scaled, xw } });
        await matvec(enc, { ...args, y: yPlain });
        await enc.submit();
        const got = Array.from(await readAs(gpu, y, "f16", out));
        const plain = Array.from(await readAs(gpu, yPlain, "f16", out));
        const diff = got.findIndex((v, i) => v !== plain[i]);
        assert(diff < 0, `${label}: y[${diff}] = ${got[diff]}, the plain product gives ${plain[diff]}`);
        const ws = Array.from(await readAs(gpu, scaled.w, "f16", out));
        const want = roundToF16(got.map((v, i) => v * ws[i]));
        const all = Array.from(await readAs(gpu, xw, "f16", out + 4));
        const bad = want.findIndex((v, i) => v !== all[i]);
        assert(bad < 0, `${label}: xw[${bad}] = ${all[bad]}, expected f16(y · w) = ${want[bad]}`);
        assert(all.slice(out).every(Number.isNaN), `${label}: xw written past its ${out} elements`);
      } finally {
        nf4Release(w);
        for (const b of owned) b.destroy();
      }
    }
  },
);

await gpuTest("matvec: shapes it cannot run are refused with the reason", async (gpu) => {
  const caps = gpu.caps;
  const nf4 = matvecUnsupported(caps, "nf4", { out: 4, in: 48 });
  assert(nf4?.includes("in % 32 == 0"), String(nf4));
  const f16 = matvecUnsupported(caps, "f16", { out: 4, in: 12 });
  assert(f16?.includes("in % 8 == 0"), String(f16));
  const y = createBuffer(gpu, 64, "workspace");
  const x = createBuffer(gpu, 64, "workspace");
  try {
    const enc = new Encoder(gpu);
    await matvec(enc, { w: { kind: "f16", w: x }, out: 4, in: 16, x, y, yType: "f16" }).then(
      () => assert(false, "a weight of 64 bytes for [4, 16] must be refused"),
      (e: Error) => assert(e.message.includes("w has 64 bytes, needs 128"), e.message),
    );
    const nf4Subgroup = matvecUnsupported(caps, "nf4", { out: 4, in: 64 }, "subgroup");
    assert(nf4Subgroup?.includes("nf4 weights have no subgroup variant"), String(nf4Subgroup));
    if (!caps.subgroups) {
      const why = matvecUnsupported(caps, "f16", { out: 4, in: 64 }, "subgroup");
      assert(why?.includes("no subgroups"), String(why));
    }
  } finally {
    y.destroy();
    x.destroy();
  }
});
