// Launchers of the matvec family: the product of a weight matrix and ONE input row, the linear
// layers of batch-1 decoding, where every weight byte is read once per token and the speed is the
// memory bandwidth. `matvec`:
//   y[o] = alpha · Σ_i W[o, i] x[i] + alpha2 · Σ_k W2[o, k] x2[k] + beta · y[o]      (o < out)
// W is NF4 (the GPU layout of kernels/nf4/nf4.ts, dequantized on the fly; in % 32 == 0) or f16
// [out, in] row-major (in % 8 == 0). The optional second product W2 x2 (W2 f16 [out, K2], x2 f16
// [K2], any K2, from element x2Offset of its buffer) carries a LoRA up-projection s·B·u into the
// same pass; beta 1 adds into y (a residual stream). f32 accumulation; y f16 or f32; beta 0 never reads y.
//
// Dimension letters: in and out the weight's [out, in] shape, K2 the second product's width.
//   x  f16 [in]   (16-byte loads)      W2 f16 [out, K2]      x2 f16 [K2]      y  f16|f32 [out]
//
// f16 weights: one lane group of 32 threads per output row (8 rows per workgroup of 256): lane l
// reads the 16-byte weight words l, l + 32, ... of its row, so a group reads 512 contiguous bytes per
// step; x comes from global memory (it is small and cached). Products of few rows (LoRA's A·x, R
// rows) take up to 256 lanes per row (f16Lanes), so that they still fill the GPU.
// NF4 weights: a team of nf4Team(in) threads per 4 consecutive rows; each thread keeps its 64-element
// slices of x in registers (as f16 pairs) across the 4 rows, issues the 8 code-word loads of the 4
// rows before the arithmetic, and multiplies two codes at a time in packed f16 through a table of
// code bytes in workgroup memory, summing four products in f16 before the f32 sums (see
// matvec_nf4.wgsl for the rounding and why nothing overflows).
// Fused forms for decoding, each saving dispatches (on an H100 a dependent dispatch costs about 3
// us to launch, a read of 8-13 MB in one takes about 7 us, 2-3 times its traffic at full bandwidth,
// and the host spends several us encoding and submitting it; bench/NOTES.md): `matvec` with `rope`
// rotates the heads of a q or k projection at one position in the product's epilogue (NF4),
// `matvec` with `norm` (f16) reads the RMSNorm of its input, which every workgroup computes for
// itself (the first one also writes it out for the products that follow), `matvecSwiglu` computes
// the NF4 gate and up projections, with their LoRA up-projections, in one pass over x and writes
// silu(gate) · up, and `matvecQkv` computes the NF4 q, k and v projections in one pass, q and k
// rotated, k and v into their cache rows (its absmax codes, nested scales and maps stacked once by
// `stackQkvTables`). Both take the RMSNorm of a residual row in the products by linearity (`norm`,
// without LoRA): they read the row times a scaled norm weight, which the NF4 product that added
// into the row wrote beside it (`matvec` with `nextNorm`), reduce its sum of squares with the row
// sums and apply one factor at the end, so the norm takes no dispatch.
// Variants:
//   "subgroup"   reduction with subgroupAdd (adapters with subgroups of 4..32 invocations); f16 only
//   "workgroup"  portable: a workgroup-memory tree reduction. The only NF4 variant: a subgroup
//                reduction measured no faster there (H100: 288 against 300 GB/s at 4096 -> 4096,
//                263 against 313 at 4096 -> 14336), while it halves the f16 lm_head's time.

import { type Binding, bindingBytes, Encoder, workgroupGrid } from "../../engine/encoder.ts";
import { createBuffer, readF16, uploadF16 } from "../../engine/buffers.ts";
import type { Capabilities, Gpu } from "../../engine/gpu.ts";
import type { Shader } from "../../engine/pipeline.ts";
import { NF4_F16_WGSL, type Nf4Weight } from "../nf4/nf4.ts";
import { nf4Counts } from "../nf4/nf4_ref.ts";
import nf4Code from "./matvec_nf4.wgsl" with { type: "text" };
import f16Code from "./matvec_f16.wgsl" with { type: "text" };
import f16SubgroupCode from "./matvec_f16_subgroup.wgsl" with { type: "text" };
import f16NormCode from "./matvec_f16_norm.wgsl" with { type: "text" };

const SHADERS: Record<MatvecWeight["kind"], Partial<Record<MatvecVariant, Shader>>> = {
  nf4: {
    workgroup: { file: "kernels/matvec/matvec_nf4.wgsl", code: nf4Code + NF4_F16_WGSL },
  },
  f16: {
    // Both f16 variants share the folded RMSNorm (declarations may follow their use in WGSL).
    workgroup: { file: "kernels/matvec/matvec_f16.wgsl", code: f16Code + f16NormCode },
    subgroup: { file: "kernels/matvec/matvec_f16_subgroup.wgsl", code: f16SubgroupCode + f16NormCode },
  },
};

/** Bytes of the kernels' parameter struct (matvec_nf4.wgsl's Params, 76, rounded up to 16). */
const PARAM_BYTES = 80;

/** Entries of an NF4 weight's dynamic map of absmax codes. */
const DYNMAP_ENTRIES = 256;
/** Rows per team of the NF4 kernels. */
const NF4_ROWS_PER_TEAM = 4;

/** Threads per team of the NF4 kernels for rows of `inDim` elements: the largest power of two in
 * 32..256 that is at most the row's pairs of code words (64 elements), so that no thread idles for a
 * whole row and longer rows give a thread several pairs (8B shapes: 64 at in = 4096, 128 at 14336,
 * where 256 left 32 of 256 threads idle and took 0.14 ms more per H100 decode step together with
 * the SwiGLU team below; bench/NOTES.md). */
export function nf4Team(inDim: number): number {
  return powerOfTwoTeam(Math.ceil(inDim / 64));
}

/** The largest power of two at most `units`, clamped to 32..256. */
function powerOfTwoTeam(units: number): number {
  return Math.min(256, Math.max(32, 2 ** Math.floor(Math.log2(Math.max(1, units)))));
}

/** Below this many output rows an f16 product spreads each row over more than 32 lanes. */
const F16_FEW_ROWS = 2048;

/** Lanes per row of the f16 kernels: 32 (8 rows per workgroup of 256), or for fewer than
 * F16_FEW_ROWS rows (a LoRA down-projection A·x of R rows) up to 256, so that the few rows still
 * spread over many workgroups, each lane keeping at least two 16-byte words. */
export function f16Lanes(out: number, inDim: number): number {
  if (out >= F16_FEW_ROWS) return 32;
  return powerOfTwoTeam(inDim / 8 / 2);
}

/** Threads per team of the NF4 swiglu entry, which walks the code words (32 elements) of its rows
 * one at a time: at least two words per thread, a power of two in 32..256 (64 at in = 4096; one
 * word per thread was slower on the H100, bench/NOTES.md). */
export function nf4SwigluTeam(inDim: number): number {
  return powerOfTwoTeam(Math.ceil(inDim / 32) / 2);
}

/** Output rows per workgroup of 256 invocations. */
export function matvecRowsPerWorkgroup(kind: MatvecWeight["kind"], out: number, inDim: number): number {
  return kind === "nf4" ? (256 / nf4Team(inDim)) * NF4_ROWS_PER_TEAM : 256 / f16Lanes(out, inDim);
}

export type MatvecVariant = "workgroup" | "subgroup";
export const MATVEC_VARIANTS: readonly MatvecVariant[] = ["workgroup", "subgroup"];

/** The weight: NF4 (QLoRA base) or f16 [out, in] row-major (lm_head, 16-bit bases, LoRA factors). */
export type MatvecWeight = { kind: "nf4"; w: Nf4Weight } | { kind: "f16"; w: Binding };

export interface MatvecShape {
  out: number;
  in: number;
  /** Width of the second product (0 or absent: none). */
  K2?: number;
}

export interface MatvecArgs extends MatvecShape {
  w: MatvecWeight;
  /** f16 [in]. */
  x: Binding;
  /** [out] in `yType` from element yOffset on; read only when beta != 0. */
  y: Binding;
  /** Elements of y before the output (e.g. a KV-cache row); 0 when absent. */
  yOffset?: number;
  yType: "f16" | "f32";
  alpha?: number;
  beta?: number;
  /** y += alpha2 · W2 x2 in the same pass (e.g. a LoRA up-projection: W2 = B16, x2 = u, alpha2 = s),
   * x2 from element xOffset (default 0) of `x` (e.g. one projection's share of a u that several
   * projections' down-products filled in one product). */
  second?: { w: Binding; x: Binding; alpha: number; xOffset?: number };
  /** NF4 only: the rotary embedding of the product's heads of headDim rows at one position
   * (kernels/rope's rotate-half form); rotation f32 [headDim / 2][2] holds (cos, sin) of that
   * position's angle per frequency (ropeRotation). Needs alpha 1 and beta 0; y gets the rotated
   * f16 values. */
  rope?: { headDim: number; rotation: Binding };
  /** f16 weights only: x is a row of the residual stream, and the product reads its RMSNorm
   * h = f16(f16(x · r) · w) with r = 1 / sqrt(mean(x²) + eps) (kernels/norm's forward) instead, which
   * it also writes to `h` (f16 [in]) for the products that read h next: the norm's own dispatch is
   * saved. */
  norm?: { w: Binding; eps: number; h: Binding };
  /** NF4 into an f16 residual stream: also writes xw = f16(y[o]) · w.w[o] (f16 [out], from element
   * 0), the input of the fused products that read the next RMSNorm of y (matvecQkv's and
   * matvecSwiglu's `norm`), w the ScaledNormWeight of that norm. */
  nextNorm?: { w: ScaledNormWeight; xw: Binding };
  variant?: MatvecVariant;
}

/** Why `variant` cannot run this product on this adapter, or undefined when it can. */
export function matvecUnsupported(
  caps: Capabilities,
  kind: MatvecWeight["kind"],
  shape: MatvecShape,
  variant: MatvecVariant = pickMatvecVariant(caps, kind),
): string | undefined {
  const { out, in: inDim, K2 = 0 } = shape;
  if (!caps.f16) return `${caps.adapter} has no shader-f16`;
  for (const [name, v] of Object.entries({ out, in: inDim, K2 })) {
    if (!Number.isInteger(v) || v < (name === "K2" ? 0 : 1)) {
      return `${name} = ${v} must be a positive integer`;
    }
  }
  if (kind === "nf4" && inDim % 32 !== 0) {
    return `NF4 rows of in = ${inDim} elements: the kernel reads 32 codes at a time and needs in % 32 == 0`;
  }
  if (kind === "f16" && inDim % 8 !== 0) {
    return `f16 rows of in = ${inDim} elements: the kernel reads 8 values at a time and needs in % 8 == 0`;
  }
  if (out * Math.max(inDim, K2) >= 2 ** 32) {
    return `[${out}, ${Math.max(inDim, K2)}] has 2^32 or more elements; the kernel's indices are 32-bit`;
  }
  if (!SHADERS[kind][variant]) return `${kind} weights have no ${variant} variant`;
  if (variant === "subgroup") {
    const { subgroupMinSize: lo, subgroupMaxSize: hi } = caps;
    if (!caps.subgroups) return `${caps.adapter} has no subgroups`;
    if (lo < 4 || hi > 32) {
      return `subgroup sizes ${lo}..${hi}: the kernel needs sizes that divide its lane groups of 32`;
    }
  }
  return undefined;
}

/** Whether `matvec`'s folded RMSNorm (`norm`) fits the adapter: it holds h, f16 [in], in workgroup
 * memory next to the 1 KB of the reduction. */
export function foldedNormFits(caps: Capabilities, inDim: number): boolean {
  return inDim * 2 + 256 * 4 <= caps.limits.maxComputeWorkgroupStorageSize;
}

/** For f16 weights the subgroup reduction where the adapter has subgroups of 4..32 invocations;
 * otherwise the portable one. */
export function pickMatvecVariant(caps: Capabilities, kind: MatvecWeight["kind"]): MatvecVariant {
  const subgroups = caps.subgroups && caps.subgroupMinSize >= 4 && caps.subgroupMaxSize <= 32;
  return kind === "f16" && subgroups ? "subgroup" : "workgroup";
}

type SizeCheck = (name: string, b: Binding, bytes: number) => void;

/** A check that a binding holds at least `bytes`, naming the launcher call in its error. */
function sizeCheck(where: string): SizeCheck {
  return (name, b, bytes) => {
    const have = bindingBytes(b);
    if (have < bytes) throw new RangeError(`${where}: ${name} has ${have} bytes, needs ${bytes}`);
  };
}

/** An element offset (0 when absent), refused unless a whole number >= 0. */
function wholeOffset(where: string, name: string, v: number | undefined): number {
  const off = v ?? 0;
  if (!Number.isInteger(off) || off < 0) {
    throw new RangeError(`${where}: ${name} = ${off} must be a whole number >= 0`);
  }
  return off;
}

/** The NF4 weight has the product's shape and its four buffers their sizes. */
function needNf4(where: string, need: SizeCheck, prefix: string, w: Nf4Weight, out: number, inDim: number) {
  if (w.out !== out || w.in !== inDim) {
    throw new RangeError(`${where}: the ${prefix}NF4 weight is [${w.out}, ${w.in}]; pass its shape`);
  }
  const blocks = Math.ceil((out * inDim) / 64);
  need(`${prefix}codes`, w.codes, (out * inDim) / 2);
  need(`${prefix}absmaxCodes`, w.absmaxCodes, Math.ceil(blocks / 4) * 4);
  need(`${prefix}nested`, w.nested, (1 + Math.ceil(blocks / 256)) * 4);
  need(`${prefix}dynmap`, w.dynmap, DYNMAP_ENTRIES * 4);
}

/** Encodes y = alpha · W x (+ alpha2 · W2 x2) + beta · y: one dispatch. */
export async function matvec(enc: Encoder, args: MatvecArgs): Promise<void> {
  const { w, out, in: inDim } = args;
  const K2 = args.second ? (args.K2 ?? 0) : 0;
  const variant = args.variant ?? pickMatvecVariant(enc.gpu.caps, w.kind);
  const where = `matvec ${w.kind} [${out}, ${inDim}]${K2 ? ` + f16 [${out}, ${K2}]` : ""} (${variant})`;
  if (args.second && !(K2 > 0)) throw new RangeError(`${where}: a second product needs K2 >= 1`);
  if (!args.second && args.K2) {
    throw new RangeError(`${where}: K2 = ${args.K2} given without a second product`);
  }
  const why = matvecUnsupported(enc.gpu.caps, w.kind, { out, in: inDim, K2 }, variant);
  if (why) throw new Error(`${where} on ${enc.gpu.name}: ${why}`);
  const need = sizeCheck(where);
  need("x", args.x, inDim * 2);
  const yOffset = wholeOffset(where, "yOffset", args.yOffset);
  need("y", args.y, (yOffset + out) * (args.yType === "f32" ? 4 : 2));
  if (w.kind === "f16") need("w", w.w, out * inDim * 2);
  else needNf4(where, need, "", w.w, out, inDim);
  if (args.second) {
    need("second.w", args.second.w, out * K2 * 2);
    const xOffset = wholeOffset(where, "second.xOffset", args.second.xOffset);
    need("second.x", args.second.x, (xOffset + K2) * 2);
  }
  const rope = args.rope;
  if (rope) {
    const D = rope.headDim;
    if (w.kind !== "nf4") throw new Error(`${where}: the rotary embedding runs with NF4 weights only`);
    if (!Number.isInteger(D) || D <= 0 || D % 4 !== 0 || out % D !== 0) {
      throw new RangeError(`${where}: headDim = ${D} must be a multiple of 4 that divides out = ${out}`);
    }
    if ((args.alpha ?? 1) !== 1 || (args.beta ?? 0) !== 0 || args.yType !== "f16") {
      throw new RangeError(`${where}: with the rotary embedding alpha is 1, beta 0 and y f16`);
    }
    need("rope.rotation", rope.rotation, D * 4);
  }
  const norm = args.norm;
  if (norm) {
    if (w.kind !== "f16") throw new Error(`${where}: the folded RMSNorm runs with f16 weights only`);
    if (!(norm.eps >= 0)) throw new RangeError(`${where}: norm.eps = ${norm.eps} must be >= 0`);
    if (!foldedNormFits(enc.gpu.caps, inDim)) {
      throw new RangeError(
        `${where}: the folded RMSNorm holds h in ${inDim * 2 + 1024} bytes of workgroup ` +
          `memory; ${enc.gpu.name} allows ${enc.gpu.caps.limits.maxComputeWorkgroupStorageSize}`,
      );
    }
    need("norm.w", norm.w, inDim * 2);
    need("norm.h", norm.h, inDim * 2);
  }
  const nextNorm = args.nextNorm;
  if (nextNorm) {
    if (w.kind !== "nf4" || rope || args.yType !== "f16") {
      throw new Error(`${where}: the next norm's input is written by NF4 products into f16 y without rope`);
    }
    need("nextNorm.w", nextNorm.w.w, out * 2);
    need("nextNorm.xw", nextNorm.xw, out * 2);
  }
  const entry = rope ? "rope" : nextNorm ? "scaled" : "main";
  const pipeline = w.kind === "nf4"
    ? await nf4Pipeline(enc, entry, nf4Team(inDim), args.yType)
    : await enc.gpu.pipelines.get({
      shader: SHADERS.f16[variant]!,
      entry: norm ? "normed" : "main",
      substitutions: { OUT: args.yType },
      constants: { LANES: f16Lanes(out, inDim), ...(norm ? { NORMED: 1, HV: inDim / 4 } : {}) },
    });
  const g = workgroupGrid(enc.gpu.caps, Math.ceil(out / matvecRowsPerWorkgroup(w.kind, out, inDim)));
  const params = new ArrayBuffer(PARAM_BYTES);
  new Uint32Array(params, 0, 4).set([out, inDim, K2, g[0]]);
  new Float32Array(params, 16, 3).set([args.alpha ?? 1, args.second?.alpha ?? 0, args.beta ?? 0]);
  new Uint32Array(params, 28, 4).set([yOffset, args.second?.xOffset ?? 0, 0, rope?.headDim ?? 0]);
  if (norm) new Float32Array(params, 36, 1)[0] = norm.eps;
  // Without a second product its two bindings take x (read-only, never read).
  const w2 = args.second?.w ?? args.x;
  const x2 = args.second?.x ?? args.x;
  const buffers: Binding[] = w.kind === "nf4"
    ? [args.x, w.w.codes, w.w.absmaxCodes, w.w.nested, w.w.dynmap, w2, x2, args.y]
    : [args.x, w.w, w2, x2, args.y];
  if (rope) buffers.push(rope.rotation);
  if (norm) buffers.push(norm.w, norm.h);
  if (nextNorm) buffers.push(nextNorm.w.w, nextNorm.xw);
  enc.dispatch(pipeline, new Uint8Array(params), buffers, g);
}

/** Bytes one product reads and writes: the weight (NF4 codes, absmax codes, nested scales and the
 * dynamic map; or f16), x, the second product, y (twice with beta != 0). */
export function matvecBytes(
  kind: MatvecWeight["kind"],
  shape: MatvecShape,
  yType: "f16" | "f32",
  beta = 0,
): number {
  const { out, in: inDim, K2 = 0 } = shape;
  const n = out * inDim;
  const blocks = Math.ceil(n / 64);
  const weight = kind === "nf4"
    ? n / 2 + blocks + (1 + Math.ceil(blocks / 256)) * 4 + DYNMAP_ENTRIES * 4
    : n * 2;
  const y = out * (yType === "f32" ? 4 : 2) * (beta !== 0 ? 2 : 1);
  return weight + inDim * 2 + K2 * (out + 1) * 2 + y;
}

/** The NF4 kernel's entry `entry` with `yType` output, teams of `team` threads, and the RMSNorm of
 * the input folded in (`normed`: qkv and swiglu). Its view of a u32 as an f16 pair (matvec_nf4.wgsl's
 * f16_pair) is a bitcast, which Deno's WGSL compiler mistypes, so that backend goes through
 * unpack2x16float (the same value). */
function nf4Pipeline(
  enc: Encoder,
  entry: string,
  team: number,
  yType: "f16" | "f32" = "f16",
  normed = false,
): Promise<GPUComputePipeline> {
  const f16Pair = enc.gpu.caps.backend === "deno" ? "vec2<f16>(unpack2x16float(u))" : "bitcast<vec2<f16>>(u)";
  return enc.gpu.pipelines.get({
    shader: SHADERS.nf4.workgroup!,
    entry,
    substitutions: { OUT: yType, F16_PAIR: f16Pair },
    constants: { TEAM: team, ...(normed ? { NORMED: 1 } : {}) },
  });
}

/** An RMSNorm weight nw [n] prepared for the folded norm (`matvec`'s nextNorm writes the residual
 * row times w, matvecQkv's and matvecSwiglu's `norm` read it): w holds nw · 2^-k / 4 in f16 (exact
 * but for f16 subnormals), k >= 0 the least with max |nw| · 2^-k <= 1, and mul = 2^k, so that the
 * kernels' f16 sums of products stay finite (matvec_nf4.wgsl). */
export interface ScaledNormWeight {
  w: GPUBuffer;
  mul: number;
}

/** Makes the ScaledNormWeight of the f16 norm weight `w` [n]: a new buffer (counted as weights),
 * which the caller releases. A weight with a non-finite value is refused. */
export async function scaleNormWeight(
  gpu: Gpu,
  w: GPUBuffer,
  n: number,
  label: string,
): Promise<ScaledNormWeight> {
  const values = await readF16(gpu, w, n);
  let max = 0;
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(values[i])) throw new RangeError(`${label}: element ${i} is ${values[i]}`);
    max = Math.max(max, Math.abs(values[i]));
  }
  let k = 0;
  while (max * 2 ** -k > 1) k++;
  const f = 2 ** -k / 4;
  return { w: uploadF16(gpu, Array.from(values, (v) => v * f), "weights", label), mul: 2 ** k };
}

/** The products read the RMSNorm h = res · r · nw of a residual row res (r = 1 / sqrt(mean(res²) +
 * eps)) by linearity (matvec_nf4.wgsl's NORMED): their x holds xw = f16(res · nw · 2^-k / 4), as
 * `matvec` with `nextNorm` writes it from the ScaledNormWeight of nw. */
export interface FoldedNorm {
  /** f16 [in]: res. */
  residual: Binding;
  /** The ScaledNormWeight's mul (2^k). */
  mul: number;
  eps: number;
}

/** Checks a FoldedNorm for a product of `inDim` inputs and `K2` LoRA inputs. */
function checkFoldedNorm(where: string, need: SizeCheck, norm: FoldedNorm, inDim: number, K2: number): void {
  if (K2 > 0) {
    throw new Error(
      `${where}: the folded RMSNorm runs without LoRA products (its factor would scale them too)`,
    );
  }
  if (!(norm.eps >= 0)) throw new RangeError(`${where}: norm.eps = ${norm.eps} must be >= 0`);
  if (!(norm.mul >= 1 && Number.isInteger(Math.log2(norm.mul)))) {
    throw new RangeError(`${where}: norm.mul = ${norm.mul} must be a power of two >= 1 (scaleNormWeight)`);
  }
  need("norm.residual", norm.residual, inDim * 2);
}

/** One projection of matvecSwiglu: its NF4 weight and its optional LoRA up-projection. */
export interface SwigluProjection {
  w: Nf4Weight;
  /** alpha2 · W2 x2 added before rounding (W2 f16 [out, K2], x2 from element xOffset). */
  second?: { w: Binding; xOffset?: number };
}

export interface MatvecSwigluArgs {
  out: number;
  in: number;
  gate: SwigluProjection;
  up: SwigluProjection;
  /** f16 [in]. */
  x: Binding;
  /** LoRA: width, scale and the f16 input that both second products read from. */
  lora?: { K2: number; alpha: number; x: Binding };
  /** f16 [out] from element yOffset on: silu(gate) · up. */
  y: Binding;
  yOffset?: number;
  /** Without LoRA: gate and up read the RMSNorm of a residual row, x its weighted copy. */
  norm?: FoldedNorm;
}

/** Encodes y = silu(f16(G x + s·BG x2)) · f16(U x + s·BU x2) for the NF4 gate and up projections of a
 * Llama MLP (kernels/swiglu's rounding): one dispatch, each slice of x read once for both. */
export async function matvecSwiglu(enc: Encoder, args: MatvecSwigluArgs): Promise<void> {
  const { out, in: inDim, gate, up, lora } = args;
  const K2 = lora?.K2 ?? 0;
  const where = `matvecSwiglu nf4 [${out}, ${inDim}]${K2 ? ` + f16 [${out}, ${K2}]` : ""}`;
  const why = matvecUnsupported(enc.gpu.caps, "nf4", { out, in: inDim, K2 }, "workgroup");
  if (why) throw new Error(`${where} on ${enc.gpu.name}: ${why}`);
  const need = sizeCheck(where);
  need("x", args.x, inDim * 2);
  const yOffset = wholeOffset(where, "yOffset", args.yOffset);
  need("y", args.y, (yOffset + out) * 2);
  for (const [name, p] of [["gate", gate], ["up", up]] as const) {
    if (!lora !== !p.second) throw new RangeError(`${where}: give lora and both second products, or neither`);
    needNf4(where, need, `${name}.`, p.w, out, inDim);
    if (p.second) {
      need(`${name}.second.w`, p.second.w, out * K2 * 2);
      const xOffset = wholeOffset(where, `${name}.second.xOffset`, p.second.xOffset);
      need("lora.x", lora!.x, (xOffset + K2) * 2);
    }
  }
  const norm = args.norm;
  if (norm) checkFoldedNorm(where, need, norm, inDim, K2);
  const team = nf4SwigluTeam(inDim);
  const pipeline = await nf4Pipeline(enc, "swiglu", team, "f16", norm !== undefined);
  const g = workgroupGrid(enc.gpu.caps, Math.ceil(out / ((256 / team) * NF4_ROWS_PER_TEAM)));
  const params = new ArrayBuffer(PARAM_BYTES);
  new Uint32Array(params, 0, 4).set([out, inDim, K2, g[0]]);
  new Float32Array(params, 16, 3).set([1, lora?.alpha ?? 0, 0]);
  new Uint32Array(params, 28, 3).set([yOffset, gate.second?.xOffset ?? 0, up.second?.xOffset ?? 0]);
  if (norm) new Float32Array(params, 68, 2).set([norm.eps, norm.mul]);
  // Without LoRA the second products' bindings take x (read-only, never read).
  const x2 = lora?.x ?? args.x;
  enc.dispatch(pipeline, new Uint8Array(params), [
    args.x,
    gate.w.codes,
    gate.w.absmaxCodes,
    gate.w.nested,
    gate.w.dynmap,
    gate.second?.w ?? args.x,
    x2,
    args.y,
    up.w.codes,
    up.w.absmaxCodes,
    up.w.nested,
    up.second?.w ?? args.x,
    up.w.dynmap,
    norm?.residual ?? args.x,
  ], g);
}

/** The absmax codes, nested scales and dynamic maps of an attention layer's NF4 q, k and v weights,
 * stacked for matvecQkv (made once per layer, see stackQkvTables). */
export interface QkvTables {
  /** u8 absmax codes of q's blocks, then k's, then v's. */
  absmaxCodes: GPUBuffer;
  /** f32 nested scales of q's groups of 256 blocks, then k's, then v's (their mean offsets left out). */
  scales: GPUBuffer;
  /** f32 [QKV_MAP_FLOATS]: q's, k's and v's dynamic maps (256 each), then their three mean offsets. */
  maps: GPUBuffer;
}

/** f32 values of QkvTables.maps (matvec_nf4.wgsl's dyn3). */
const QKV_MAP_FLOATS = 3 * DYNMAP_ENTRIES + 3;

/** Why q, k and v of these shapes cannot go through matvecQkv, or undefined when they can: NF4
 * rows of in % 64 == 0 elements, q and k whole heads, and each weight's blocks a multiple of 256
 * (so that a block counted over all three rows finds its nested scale). */
export function matvecQkvUnsupported(
  caps: Capabilities,
  shape: { in: number; headDim: number; qRows: number; kvRows: number; K2?: number },
): string | undefined {
  const { in: inDim, headDim: D, qRows, kvRows, K2 = 0 } = shape;
  const why = matvecUnsupported(caps, "nf4", { out: qRows + 2 * kvRows, in: inDim, K2 }, "workgroup");
  if (why) return why;
  if (inDim % 64 !== 0) return `in = ${inDim}: the fused q, k, v product needs in % 64 == 0`;
  if (!(D > 0 && D % 4 === 0 && qRows % D === 0 && kvRows % D === 0)) {
    return `headDim = ${D} must be a multiple of 4 that divides q's ${qRows} and k's ${kvRows} rows`;
  }
  for (const [name, rows] of [["q", qRows], ["k", kvRows]] as const) {
    if ((rows * inDim) % (64 * 256) !== 0) {
      return `${name} [${rows}, ${inDim}] has ${
        rows * inDim / 64
      } blocks; the fused product needs a multiple of 256`;
    }
  }
  return undefined;
}

/** Stacks the absmax codes, nested scales and maps of q, k and v (shapes that matvecQkv takes) into
 * new buffers, counted as weights; the caller releases them. */
export async function stackQkvTables(
  gpu: Gpu,
  q: Nf4Weight,
  k: Nf4Weight,
  v: Nf4Weight,
  label: string,
): Promise<QkvTables> {
  const weights = [q, k, v];
  const counts = weights.map((w) => nf4Counts(w.out, w.in));
  const blocks = counts.reduce((n, c) => n + c.blocks, 0);
  const tables: QkvTables = {
    absmaxCodes: createBuffer(gpu, blocks, "weights", `${label}.absmax_codes`),
    scales: createBuffer(gpu, (blocks / 256) * 4, "weights", `${label}.nested`),
    maps: createBuffer(gpu, QKV_MAP_FLOATS * 4, "weights", `${label}.dynmaps`),
  };
  const enc = new Encoder(gpu, { label: `stack ${label}` });
  let block = 0;
  weights.forEach((w, i) => {
    const n = counts[i].blocks;
    enc.copy(w.absmaxCodes, 0, tables.absmaxCodes, block, n);
    enc.copy(w.nested, 4, tables.scales, (block / 256) * 4, (n / 256) * 4);
    enc.copy(w.dynmap, 0, tables.maps, i * DYNMAP_ENTRIES * 4, DYNMAP_ENTRIES * 4);
    enc.copy(w.nested, 0, tables.maps, (3 * DYNMAP_ENTRIES + i) * 4, 4);
    block += n;
  });
  await enc.submit();
  return tables;
}

/** One projection of matvecQkv: its NF4 weight and LoRA up-projection, if any. */
export interface QkvProjection {
  w: Nf4Weight;
  /** s·B x2 added before rounding: its rows of matvecQkv's stacked B, x2 from element xOffset. */
  lora?: { alpha: number; xOffset: number };
}

export interface MatvecQkvArgs {
  in: number;
  headDim: number;
  q: QkvProjection;
  k: QkvProjection;
  v: QkvProjection;
  tables: QkvTables;
  /** f16 [in]. */
  x: Binding;
  /** LoRA of any of the three: rank, the stacked B f16 [q rows + 2 kv rows, K2] (zero rows for a
   * projection without LoRA) and the f16 input that the projections read from their xOffset. */
  lora?: { K2: number; b: Binding; x: Binding };
  /** f32 [headDim / 2][2]: (cos, sin) of the position's angle per frequency (ropeRotation). */
  rotation: Binding;
  /** f16 [q rows]: q rotated. */
  y: Binding;
  /** f16 caches [cacheRows, k rows]: k rotated and v into row position[0]. */
  kCache: Binding;
  vCache: Binding;
  cacheRows: number;
  /** u32 [1]: the position, read when the dispatch runs (a recorded dispatch serves every
   * position); at cacheRows or beyond nothing is written to the caches. */
  position: Binding;
  /** Without LoRA: q, k and v read the RMSNorm of a residual row, x its weighted copy. */
  norm?: FoldedNorm;
}

/** Encodes q, k and v of one position (matvec_nf4.wgsl's `qkv`): one dispatch where `matvec` with
 * `rope` (q, k) and `matvec` (v) take three, by the same operations in the same order. */
export async function matvecQkv(enc: Encoder, args: MatvecQkvArgs): Promise<void> {
  const { in: inDim, headDim: D, q, k, v, lora } = args;
  const K2 = lora?.K2 ?? 0;
  const [qRows, kvRows] = [q.w.out, k.w.out];
  const where = `matvecQkv nf4 q [${qRows}, ${inDim}] k, v [${kvRows}, ${inDim}]${K2 ? ` + LoRA ${K2}` : ""}`;
  const why = matvecQkvUnsupported(enc.gpu.caps, { in: inDim, headDim: D, qRows, kvRows, K2 });
  if (why) throw new Error(`${where} on ${enc.gpu.name}: ${why}`);
  if (v.w.out !== kvRows) throw new RangeError(`${where}: v has ${v.w.out} rows, k ${kvRows}`);
  const need = sizeCheck(where);
  needNf4(where, need, "q.", q.w, qRows, inDim);
  needNf4(where, need, "k.", k.w, kvRows, inDim);
  needNf4(where, need, "v.", v.w, kvRows, inDim);
  const rows = qRows + 2 * kvRows;
  const blocks = (rows * inDim) / 64;
  need("tables.absmaxCodes", args.tables.absmaxCodes, blocks);
  need("tables.scales", args.tables.scales, (blocks / 256) * 4);
  need("tables.maps", args.tables.maps, QKV_MAP_FLOATS * 4);
  need("x", args.x, inDim * 2);
  need("rotation", args.rotation, D * 4);
  need("y", args.y, qRows * 2);
  const cacheRows = wholeOffset(where, "cacheRows", args.cacheRows);
  need("kCache", args.kCache, cacheRows * kvRows * 2);
  need("vCache", args.vCache, cacheRows * kvRows * 2);
  need("position", args.position, 4);
  const xOffsets = [q, k, v].map((p, i) => {
    if (p.lora && !lora) throw new RangeError(`${where}: ${"qkv"[i]} has LoRA; pass lora`);
    return wholeOffset(where, `${"qkv"[i]}.lora.xOffset`, p.lora?.xOffset);
  });
  if (lora) {
    need("lora.b", lora.b, rows * K2 * 2);
    need("lora.x", lora.x, (Math.max(...xOffsets) + K2) * 2);
  }
  const norm = args.norm;
  if (norm) checkFoldedNorm(where, need, norm, inDim, K2);
  const pipeline = await nf4Pipeline(enc, "qkv", nf4Team(inDim), "f16", norm !== undefined);
  const g = workgroupGrid(enc.gpu.caps, Math.ceil(rows / matvecRowsPerWorkgroup("nf4", rows, inDim)));
  const params = new ArrayBuffer(PARAM_BYTES);
  const u32 = new Uint32Array(params);
  const f32 = new Float32Array(params);
  u32.set([qRows, inDim, K2, g[0]]);
  f32.set([1, q.lora?.alpha ?? 0, 0], 4);
  u32.set([0, xOffsets[0], 0, D, kvRows, xOffsets[1], xOffsets[2], cacheRows], 7);
  f32.set([k.lora?.alpha ?? 0, v.lora?.alpha ?? 0, norm?.eps ?? 0, norm?.mul ?? 1], 15);
  // Without LoRA the B and x2 bindings take x (read-only, never read).
  enc.dispatch(pipeline, new Uint8Array(params), [
    args.x,
    q.w.codes,
    args.tables.absmaxCodes,
    args.tables.scales,
    args.tables.maps,
    lora?.b ?? args.x,
    lora?.x ?? args.x,
    args.y,
    args.rotation,
    k.w.codes,
    v.w.codes,
    args.kCache,
    args.vCache,
    norm?.residual ?? args.x,
    args.position,
  ], g);
}
