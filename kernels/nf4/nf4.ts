// The one launcher of the NF4 family: bitsandbytes-compatible 4-bit NormalFloat weights with
// double-quantized absmax (FACTS.md, NF4), quantized on the GPU or loaded from a pre-quantized
// bitsandbytes checkpoint, and the dequant-matmul products of a QLoRA linear layer.
//
// The portable products decode the codes tile by tile inside the matmul kernel. On tensor cores,
// where every one of the ceil(T / 256) workgroups along T would decode the same codes again, the
// weight is dequantized one slice of output columns at a time instead (at most
// NF4_SLICE_WORKSPACE_BYTES of f16, never the whole weight) and the slice goes through the f16
// tensor-core matmul, LoRA's up-projection as extra steps of its reduction; weights that need
// several slices keep the decoding kernel when T is too short to fill the GPU with each slice
// (nf4SliceColumns). On an H100 at T = 4096 that took the 8B shapes from 128-148 to 184-232
// TFLOP/s (bench/RESULTS.md).
//
// Dimension letters: T tokens, out and in the weight's [out, in] shape (C or I in a model).
//
// GPU layout of one NF4 weight W[out, in] (n = out * in, nb = ceil(n / 64) blocks):
//   codes        u32 [ceil(n / 8)]       packed codes, 8 per word; byte j of the word stream is
//                                        bitsandbytes' packed byte j = code[2j] << 4 | code[2j + 1]
//                                        (word w holds bytes 4w..4w+3, little-endian), so element f
//                                        is the high nibble of byte f/2 for even f, the low one for odd f
//   absmaxCodes  u32 [ceil(nb / 4)]      8-bit absmax codes, 4 per word, byte b = block b
//   nested       f32 [1 + ceil(nb / 256)] nested[0] = offset (mean of the block absmax values),
//                                        nested[1 + g] = scale of absmax group g (256 blocks)
//   dynmap       f32 [256]               the signed dynamic map of the absmax codes
//   codebook     the 16 NF4 values, constants in the kernels (a loaded quant_map must equal them)
// absmax[b] = dynmap[absmaxCodes[b]] * nested[1 + b / 256] + nested[0];
// W[o, i] = NF4[code(o * in + i)] * absmax[(o * in + i) / 64].
//
// The exact quantization rules (rounding, ties, zero blocks, the fixed-order absmax sum) are in
// nf4_ref.ts, which the GPU quantizer matches bit for bit.

import {
  createBuffer,
  deviceWorkspace,
  readF32,
  readU32,
  releaseBuffer,
  roundToF16,
  upload,
} from "../../engine/buffers.ts";
import { type Binding, bindingBytes, Encoder, workgroupGrid } from "../../engine/encoder.ts";
import type { Capabilities, Gpu } from "../../engine/gpu.ts";
import { hasTensorCores, matmul, SLOT32_WGSL } from "../matmul/matmul.ts";
import {
  NF4_BLOCK,
  NF4_CODEBOOK,
  NF4_NESTED_BLOCK,
  nf4Counts,
  nf4DynamicMap,
  type Nf4Host,
} from "./nf4_ref.ts";
import quantizeCode from "./nf4_quantize.wgsl" with { type: "text" };
import sumCode from "./nf4_absmax_sum.wgsl" with { type: "text" };
import quantizeAbsmaxCode from "./nf4_quantize_absmax.wgsl" with { type: "text" };
import tiledCode from "./nf4_matmul_tiled.wgsl" with { type: "text" };
import subgroupMatrixCode from "./nf4_matmul_subgroup_matrix.wgsl" with { type: "text" };
import dequantizeCode from "./nf4_dequantize.wgsl" with { type: "text" };

const QUANTIZE = { file: "kernels/nf4/nf4_quantize.wgsl", code: quantizeCode };
const SUM = { file: "kernels/nf4/nf4_absmax_sum.wgsl", code: sumCode };
const QUANTIZE_ABSMAX = { file: "kernels/nf4/nf4_quantize_absmax.wgsl", code: quantizeAbsmaxCode };
/** The WGSL constant `NF4` (array<u32, 16>: NF4_CODEBOOK's f32 bit patterns), appended to every kernel
 * that decodes codes, so that they and the reference read one table. */
export const NF4_CODEBOOK_WGSL = `\nconst NF4 = array<u32, 16>(${
  [...new Uint32Array(NF4_CODEBOOK.buffer, NF4_CODEBOOK.byteOffset, 16)]
    .map((b) => `0x${b.toString(16).padStart(8, "0")}u`).join(", ")
});\n`;
/** The WGSL constant `NF4_F16` (array<f16, 16>: the codebook rounded to f16, to nearest even, as
 * exact decimal literals), for kernels that multiply codes in f16. */
export const NF4_F16_WGSL = `\nconst NF4_F16 = array<f16, 16>(${
  [...roundToF16(NF4_CODEBOOK)].map((v) => `${v}h`).join(", ")
});\n`;
const TILED = { file: "kernels/nf4/nf4_matmul_tiled.wgsl", code: tiledCode + NF4_CODEBOOK_WGSL };
const SUBGROUP_MATRIX = {
  file: "kernels/nf4/nf4_matmul_subgroup_matrix.wgsl",
  code: subgroupMatrixCode + NF4_CODEBOOK_WGSL + SLOT32_WGSL,
};
const DEQUANTIZE = { file: "kernels/nf4/nf4_dequantize.wgsl", code: dequantizeCode + NF4_CODEBOOK_WGSL };

/** An NF4 weight W[out, in] on the GPU, in the layout above. */
export interface Nf4Weight {
  out: number;
  in: number;
  codes: GPUBuffer;
  absmaxCodes: GPUBuffer;
  nested: GPUBuffer;
  dynmap: GPUBuffer;
}

/** Dtype of the weights handed to the quantizer; f16 and bf16 travel as Uint16Array bits. */
export type Nf4SourceDtype = "f32" | "f16" | "bf16";
const DTYPE_CODE: Record<Nf4SourceDtype, number> = { f32: 0, f16: 1, bf16: 2 };

function checkShape(what: string, out: number, inDim: number): void {
  if (!Number.isInteger(out) || !Number.isInteger(inDim) || out < 1 || inDim < 1) {
    throw new RangeError(`${what}: weight shape [${out}, ${inDim}] must be positive integers`);
  }
  if (out * inDim >= 2 ** 32) {
    throw new RangeError(`${what}: weight [${out}, ${inDim}] has 2^32 or more elements; split it`);
  }
}

/** Allocates the buffers of an NF4 weight (contents undefined). */
export function nf4Allocate(gpu: Gpu, out: number, inDim: number, label = "nf4"): Nf4Weight {
  checkShape("nf4Allocate", out, inDim);
  const { n, blocks, nested } = nf4Counts(out, inDim);
  return {
    out,
    in: inDim,
    codes: createBuffer(gpu, Math.ceil(n / 8) * 4, "weights", `${label}.codes`),
    absmaxCodes: createBuffer(gpu, Math.ceil(blocks / 4) * 4, "weights", `${label}.absmax_codes`),
    nested: createBuffer(gpu, (1 + nested) * 4, "weights", `${label}.nested`),
    dynmap: createBuffer(gpu, 256 * 4, "weights", `${label}.dynmap`),
  };
}

export function nf4Release(w: Nf4Weight): void {
  for (const b of [w.codes, w.absmaxCodes, w.nested, w.dynmap]) releaseBuffer(b);
}

/** Uploads a weight in the GPU layout (from nf4QuantizeRef or nf4FromBnb). */
export function nf4Upload(gpu: Gpu, host: Nf4Host, label = "nf4"): Nf4Weight {
  checkShape("nf4Upload", host.out, host.in);
  return {
    out: host.out,
    in: host.in,
    codes: upload(gpu, host.codes, "weights", `${label}.codes`),
    absmaxCodes: upload(gpu, host.absmaxCodes, "weights", `${label}.absmax_codes`),
    nested: upload(gpu, host.nested, "weights", `${label}.nested`),
    dynmap: upload(gpu, host.dynmap, "weights", `${label}.dynmap`),
  };
}

/** Reads a weight back into the host layout. */
export async function nf4Download(gpu: Gpu, w: Nf4Weight): Promise<Nf4Host> {
  const { n, blocks, nested } = nf4Counts(w.out, w.in);
  return {
    out: w.out,
    in: w.in,
    codes: await readU32(gpu, w.codes, Math.ceil(n / 8)),
    absmaxCodes: await readU32(gpu, w.absmaxCodes, Math.ceil(blocks / 4)),
    nested: await readF32(gpu, w.nested, 1 + nested),
    dynmap: await readF32(gpu, w.dynmap, 256),
  };
}

/** Scratch of the GPU quantizer: block absmax f32 [nb] and two levels of partial sums. */
export interface Nf4QuantizeWorkspace {
  absmax: GPUBuffer;
  sumA: GPUBuffer;
  sumB: GPUBuffer;
}

export function nf4QuantizeWorkspace(gpu: Gpu, out: number, inDim: number): Nf4QuantizeWorkspace {
  const { blocks } = nf4Counts(out, inDim);
  return {
    absmax: createBuffer(gpu, blocks * 4, "workspace", "nf4.absmax_f32"),
    sumA: createBuffer(gpu, Math.ceil(blocks / 256) * 4, "workspace", "nf4.sum_a"),
    sumB: createBuffer(gpu, Math.ceil(blocks / 65536) * 4, "workspace", "nf4.sum_b"),
  };
}

export function nf4ReleaseWorkspace(ws: Nf4QuantizeWorkspace): void {
  for (const b of [ws.absmax, ws.sumA, ws.sumB]) releaseBuffer(b);
}

export interface Nf4QuantizeArgs {
  /** The weight [out, in]: f32, or f16 / bf16 bit patterns (2 per word). */
  src: Binding;
  dtype: Nf4SourceDtype;
  /** Destination, e.g. from nf4Allocate; its dynmap must already hold nf4DynamicMap(). */
  weight: Nf4Weight;
  ws: Nf4QuantizeWorkspace;
}

/** Encodes the quantizer: codes and block absmax, the fixed-order absmax sum (one dispatch per
 * level of 256), then offset, scales and absmax codes. */
export async function encodeNf4Quantize(enc: Encoder, args: Nf4QuantizeArgs): Promise<void> {
  const { weight: w, ws } = args;
  const gpu = enc.gpu;
  const { n, blocks } = nf4Counts(w.out, w.in);
  const quantize = await gpu.pipelines.get({
    shader: QUANTIZE,
    constants: { DTYPE: DTYPE_CODE[args.dtype] },
  });
  const sum = await gpu.pipelines.get({ shader: SUM });
  const quantizeAbsmax = await gpu.pipelines.get({ shader: QUANTIZE_ABSMAX });
  const params = (a: number, gx: number) => new Uint32Array([a, gx]);

  let g = workgroupGrid(gpu.caps, Math.ceil(Math.ceil(n / 8) / 64));
  enc.dispatch(quantize, params(n, g[0]), [args.src, w.codes, ws.absmax], g);
  let src = ws.absmax;
  let L = blocks;
  let level = 0;
  do {
    const dst = level % 2 === 0 ? ws.sumA : ws.sumB;
    g = workgroupGrid(gpu.caps, Math.ceil(L / 256));
    enc.dispatch(sum, params(L, g[0]), [src, dst], g);
    src = dst;
    L = Math.ceil(L / 256);
    level++;
  } while (L > 1);
  g = workgroupGrid(gpu.caps, Math.ceil(blocks / NF4_NESTED_BLOCK));
  enc.dispatch(quantizeAbsmax, params(blocks, g[0]), [ws.absmax, src, w.dynmap, w.absmaxCodes, w.nested], g);
}

/** Quantizes a weight [out, in] held in `src` on the GPU; waits for the work and frees the scratch. */
export async function nf4Quantize(
  gpu: Gpu,
  src: Binding,
  dtype: Nf4SourceDtype,
  out: number,
  inDim: number,
  label = "nf4",
): Promise<Nf4Weight> {
  const weight = nf4Allocate(gpu, out, inDim, label);
  gpu.device.queue.writeBuffer(weight.dynmap, 0, nf4DynamicMap());
  const ws = nf4QuantizeWorkspace(gpu, out, inDim);
  try {
    const enc = new Encoder(gpu, { label: `${label} quantize` });
    await encodeNf4Quantize(enc, { src, dtype, weight, ws });
    await enc.submit();
    await gpu.sync();
  } finally {
    nf4ReleaseWorkspace(ws);
  }
  return weight;
}

/** The tensors bitsandbytes saves for one double-quantized 4-bit weight `X.weight`. */
export interface BnbNf4Tensors {
  /** `X.weight`: packed codes, ceil(n / 2) bytes. */
  weight: Uint8Array;
  /** `X.weight.absmax`: 8-bit absmax codes, one per 64-block. */
  absmax: Uint8Array;
  /** `X.weight.quant_map`: f32[16], the NF4 codebook. */
  quantMap: Float32Array;
  /** `X.weight.nested_absmax`: f32 scale per 256 blocks. */
  nestedAbsmax: Float32Array;
  /** `X.weight.nested_quant_map`: f32[256], the dynamic map. */
  nestedQuantMap: Float32Array;
  /** `X.weight.quant_state.bitsandbytes__nf4`: UTF-8 JSON bytes. */
  quantState: Uint8Array;
}

export class Nf4FormatError extends Error {
  override name = "Nf4FormatError";
}

/** Maps the tensors of a pre-quantized bitsandbytes NF4 weight named `name` (e.g.
 * "model.layers.0.mlp.down_proj.weight") to the GPU layout, without re-quantizing. Checks the
 * quant state (nf4, block 64, nested block 256, double quantization) and every size. */
export function nf4FromBnb(name: string, t: BnbNf4Tensors): Nf4Host {
  const stateName = `${name}.quant_state.bitsandbytes__nf4`;
  let state: Record<string, unknown>;
  try {
    state = JSON.parse(new TextDecoder().decode(t.quantState));
  } catch (e) {
    throw new Nf4FormatError(`${stateName}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof state !== "object" || state === null) {
    throw new Nf4FormatError(`${stateName}: not a JSON object`);
  }
  const fail = (tensor: string, msg: string): never => {
    throw new Nf4FormatError(`${tensor}: ${msg}`);
  };
  if (state.quant_type !== "nf4") {
    fail(stateName, `quant_type is ${JSON.stringify(state.quant_type)}; only "nf4" is supported (not fp4)`);
  }
  if (state.blocksize !== NF4_BLOCK) {
    fail(stateName, `blocksize is ${state.blocksize}; the kernels need ${NF4_BLOCK} (bnb_4bit default)`);
  }
  if (!("nested_blocksize" in state) || !("nested_offset" in state)) {
    fail(
      stateName,
      "no nested_blocksize / nested_offset: the weight is not double-quantized; save it with " +
        "bnb_4bit_use_double_quant=True",
    );
  }
  if (state.nested_blocksize !== NF4_NESTED_BLOCK) {
    fail(stateName, `nested_blocksize is ${state.nested_blocksize}; the kernels need ${NF4_NESTED_BLOCK}`);
  }
  if (state.nested_dtype !== undefined && state.nested_dtype !== "float32") {
    fail(stateName, `nested_dtype is ${JSON.stringify(state.nested_dtype)}; expected "float32"`);
  }
  if (typeof state.nested_offset !== "number" || !Number.isFinite(state.nested_offset)) {
    fail(stateName, `nested_offset is ${JSON.stringify(state.nested_offset)}; expected a finite number`);
  }
  const shape = state.shape;
  if (
    !Array.isArray(shape) || shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d > 0)
  ) {
    fail(stateName, `shape is ${JSON.stringify(shape)}; expected [out, in] of positive integers`);
  }
  const [out, inDim] = shape as number[];
  checkShape(stateName, out, inDim);
  const { n, blocks, nested } = nf4Counts(out, inDim);
  const expectLength = (tensor: string, got: number, want: number, unit: string) => {
    if (got !== want) fail(tensor, `has ${got} ${unit}; shape [${out}, ${inDim}] needs ${want}`);
  };
  expectLength(name, t.weight.length, Math.ceil(n / 2), "bytes");
  expectLength(`${name}.absmax`, t.absmax.length, blocks, "bytes (uint8 codes)");
  expectLength(`${name}.quant_map`, t.quantMap.length, 16, "values");
  expectLength(`${name}.nested_absmax`, t.nestedAbsmax.length, nested, "values");
  expectLength(`${name}.nested_quant_map`, t.nestedQuantMap.length, 256, "values");
  for (let i = 0; i < 16; i++) {
    if (t.quantMap[i] !== NF4_CODEBOOK[i]) {
      fail(`${name}.quant_map`, `entry ${i} is ${t.quantMap[i]}, not the NF4 value ${NF4_CODEBOOK[i]}`);
    }
  }
  for (
    const [tensor, arr] of [[`${name}.nested_absmax`, t.nestedAbsmax], [
      `${name}.nested_quant_map`,
      t.nestedQuantMap,
    ]] as const
  ) {
    const bad = arr.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) fail(tensor, `entry ${bad} is ${arr[bad]}; expected finite values`);
  }
  const codeBytes = new Uint8Array(Math.ceil(n / 8) * 4);
  codeBytes.fill(0x77);
  codeBytes.set(t.weight);
  const absBytes = new Uint8Array(Math.ceil(blocks / 4) * 4);
  absBytes.set(t.absmax);
  const nestedOut = new Float32Array(1 + nested);
  nestedOut[0] = state.nested_offset as number;
  nestedOut.set(t.nestedAbsmax, 1);
  return {
    out,
    in: inDim,
    codes: new Uint32Array(codeBytes.buffer),
    absmaxCodes: new Uint32Array(absBytes.buffer),
    nested: nestedOut,
    dynmap: Float32Array.from(t.nestedQuantMap),
  };
}

/** "fwd": Y[T,out] = X[T,in] · deq(W)^T; "dx": dX[T,in] = dY[T,out] · deq(W); each optionally with
 * a low-rank term in the same accumulators (a fused LoRA path, see Nf4LowRank). */
export type Nf4MatmulMode = "fwd" | "dx";
export type Nf4MatmulVariant = "tiled" | "subgroup_matrix";

export interface Nf4MatmulArgs {
  /** f16: X [T, in] ("fwd") or dY [T, out] ("dx"). */
  x: Binding;
  w: Nf4Weight;
  /** Output in `out` precision: Y [T, out] ("fwd") or dX [T, in] ("dx"). */
  y: Binding;
  T: number;
  mode: Nf4MatmulMode;
  out: "f16" | "f32";
  /** y = alpha * (product + low-rank term) + beta * y; beta 0 never reads y. */
  alpha?: number;
  beta?: number;
  lowRank?: Nf4LowRank;
  variant?: Nf4MatmulVariant;
  /** Output columns per slice of the sliced path (a multiple of 128), or 0 for the decoding kernel;
   * by default nf4SliceColumns(T, N, K) on tensor cores and the decoding kernel on the portable
   * variant. */
  sliceColumns?: number;
}

/** A rank-R term added to the product in the same pass, as R more steps of its reduction:
 * "fwd": + scale · U[T,R] · F[out,R]^T (LoRA: U = X A^T, F = B16);
 * "dx":  + scale · U[T,R] · F[R,in]    (LoRA: U = dU, F = A16). U and F are f16. */
export interface Nf4LowRank {
  u: Binding;
  f: Binding;
  R: number;
  scale: number;
}

/** Why `variant` cannot run this product on this adapter, or undefined when it can. */
export function nf4MatmulUnsupported(
  caps: Capabilities,
  shape: { out: number; in: number; R?: number },
  variant: Nf4MatmulVariant,
): string | undefined {
  if (!caps.f16) return `${caps.adapter} has no shader-f16`;
  const R = shape.R ?? 0;
  if (!Number.isInteger(R) || R < 0) return `low-rank width R = ${R} must be a whole number`;
  if (variant === "tiled") return undefined;
  if (!hasTensorCores(caps, "f32")) return `${caps.adapter} has no f16 16x16x16 subgroup matrices`;
  if (shape.in % 8 !== 0 || shape.out % 8 !== 0) {
    return `in (${shape.in}) and out (${shape.out}) must be multiples of 8`;
  }
  if (R % 8 !== 0) return `the low-rank width R = ${R} must be a multiple of 8`;
  return undefined;
}

export function pickNf4MatmulVariant(
  caps: Capabilities,
  shape: { out: number; in: number; R?: number },
): Nf4MatmulVariant {
  return nf4MatmulUnsupported(caps, shape, "subgroup_matrix") === undefined ? "subgroup_matrix" : "tiled";
}

export interface Nf4DequantizeArgs {
  w: Nf4Weight;
  /** f16 [count, in] (rows of W) or, with `columns`, [out, count] (columns of W). */
  d: Binding;
  /** The slice: W's rows first..first+count-1, or with `columns` its columns. */
  first: number;
  count: number;
  columns?: boolean;
}

/** Encodes D = f16(deq(W)) of a slice of W's rows or columns: one dispatch. in and out must be
 * multiples of 8, and a column slice must start and end on multiples of 8. */
export async function nf4Dequantize(enc: Encoder, args: Nf4DequantizeArgs): Promise<void> {
  const { w, first, count } = args;
  const columns = args.columns ?? false;
  const where = `nf4Dequantize [${w.out}, ${w.in}] ${columns ? "columns" : "rows"} ${first}..${
    first + count - 1
  }`;
  const extent = columns ? w.in : w.out;
  if (
    !Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 1 || first + count > extent
  ) {
    throw new RangeError(`${where}: the slice must lie within the ${extent} ${columns ? "columns" : "rows"}`);
  }
  if (w.in % 8 !== 0 || w.out % 8 !== 0) throw new RangeError(`${where}: in and out must be multiples of 8`);
  if (columns && (first % 8 !== 0 || count % 8 !== 0)) {
    throw new RangeError(`${where}: a column slice starts and ends on multiples of 8`);
  }
  const elements = count * (columns ? w.out : w.in);
  if (bindingBytes(args.d) < elements * 2) {
    throw new RangeError(`${where}: d has ${bindingBytes(args.d)} bytes, needs ${elements * 2}`);
  }
  const pipeline = await enc.gpu.pipelines.get({
    shader: DEQUANTIZE,
    constants: { COLUMNS: columns ? 1 : 0 },
  });
  const g = workgroupGrid(enc.gpu.caps, Math.ceil(elements / 8 / 256));
  enc.dispatch(
    pipeline,
    Uint32Array.of(w.out, w.in, first, count, g[0]),
    [w.codes, w.absmaxCodes, w.nested, w.dynmap, args.d],
    g,
  );
}

/** A weight that takes several slices is sliced only when each slice's product has at least this
 * many 128 x 128 tiles (H100, 8B shapes, T = 256..4096: at 224 or more the slices won, at 128 they
 * tied and below they lost, each slice's long reduction running on too few workgroups). */
export const NF4_SLICE_MIN_TILES = 192;
/** Tiles of 128 x 128 that the f16 tensor-core matmul runs at once on an H100 (132 SMs, two
 * workgroups each: bench/NOTES.md). Each slice is a dispatch of its own, so a slice whose last wave
 * of tiles is mostly empty costs a whole wave: at T = 4096, slices of 3584 columns (896 tiles, 3.4
 * waves) took 2.48 ms for 4096 -> 14336 where slices of 4096 (1024 tiles, 3.9 waves) took 2.18. */
export const NF4_SLICE_WAVE_TILES = 264;
/** Bytes of each device's f16 slice workspace: slices are sized to fit it. */
export const NF4_SLICE_WORKSPACE_BYTES = 32 * 2 ** 20;

/** The output columns per slice of the sliced path for a product of T rows, N columns and reduction
 * K: whole tiles of 128 that fit the workspace; one slice where the weight fits, else the width
 * whose slices take the fewest waves of NF4_SLICE_WAVE_TILES tiles (then the fewest slices).
 * Undefined (decode in the product) when not even one tile fits, or when several slices would each
 * have fewer than NF4_SLICE_MIN_TILES tiles. */
export function nf4SliceColumns(T: number, N: number, K: number): number | undefined {
  const most = Math.floor(NF4_SLICE_WORKSPACE_BYTES / (K * 2) / 128) * 128;
  if (most < 128) return undefined;
  const slices = Math.ceil(N / most);
  if (slices === 1) return Math.ceil(N / 128) * 128;
  const rowTiles = Math.ceil(T / 128);
  const even = Math.ceil(N / slices / 128) * 128;
  if (rowTiles * (even / 128) < NF4_SLICE_MIN_TILES) return undefined;
  const waves = (columns: number) => Math.ceil(rowTiles * Math.ceil(columns / 128) / NF4_SLICE_WAVE_TILES);
  let best = { columns: even, waves: Infinity, slices: Infinity };
  for (
    let columns = most;
    rowTiles * (columns / 128) >= NF4_SLICE_MIN_TILES && columns >= 128;
    columns -= 128
  ) {
    const full = Math.floor(N / columns);
    const rest = N - full * columns;
    const w = full * waves(columns) + (rest > 0 ? waves(rest) : 0);
    const n = full + (rest > 0 ? 1 : 0);
    if (w < best.waves || (w === best.waves && n < best.slices)) best = { columns, waves: w, slices: n };
  }
  return best.columns;
}

/** A sub-range of a binding. */
function subBinding(b: Binding, offset: number, size: number): Binding {
  return "buffer" in b ? { buffer: b.buffer, offset: b.offset + offset, size } : { buffer: b, offset, size };
}

/** Encodes the NF4 dequant-matmul (f16 activations, f32 accumulation). */
export async function nf4Matmul(enc: Encoder, args: Nf4MatmulArgs): Promise<void> {
  const { w, T, mode, lowRank } = args;
  const R = lowRank?.R ?? 0;
  const shape = { out: w.out, in: w.in, R };
  const variant = args.variant ?? pickNf4MatmulVariant(enc.gpu.caps, shape);
  const where = `nf4Matmul ${mode} T=${T} [${w.out}, ${w.in}]${R ? ` + rank ${R}` : ""} on ${variant}`;
  const why = nf4MatmulUnsupported(enc.gpu.caps, shape, variant);
  if (why) throw new Error(`${where}: ${why}`);
  const N = mode === "fwd" ? w.out : w.in;
  const K = mode === "fwd" ? w.in : w.out;
  if (lowRank) {
    if (bindingBytes(lowRank.u) < T * R * 2) throw new RangeError(`${where}: U needs ${T * R * 2} bytes`);
    if (bindingBytes(lowRank.f) < N * R * 2) throw new RangeError(`${where}: F needs ${N * R * 2} bytes`);
  }
  const outBytes = args.out === "f32" ? 4 : 2;
  if (bindingBytes(args.y) < T * N * outBytes) {
    throw new RangeError(`${where}: y needs ${T * N * outBytes} bytes`);
  }
  let sliceColumns = variant === "subgroup_matrix" ? nf4SliceColumns(T, N, K) : undefined;
  if (args.sliceColumns !== undefined) {
    const c = args.sliceColumns;
    const fits = Number.isInteger(c) && c > 0 && c % 128 === 0 && c * K * 2 <= NF4_SLICE_WORKSPACE_BYTES;
    if (c !== 0 && !fits) {
      throw new RangeError(
        `${where}: sliceColumns = ${c} must be 0 or a multiple of 128 whose slice fits the ` +
          `${NF4_SLICE_WORKSPACE_BYTES}-byte workspace`,
      );
    }
    sliceColumns = c === 0 ? undefined : c;
  }
  if (sliceColumns === undefined) {
    const params = new ArrayBuffer(32);
    new Uint32Array(params, 0, 3).set([T, N, K]);
    new Float32Array(params, 12, 2).set([args.alpha ?? 1, args.beta ?? 0]);
    new Uint32Array(params, 20, 2).set([w.in, R]);
    new Float32Array(params, 28, 1)[0] = lowRank?.scale ?? 0;
    // Output tile per workgroup: 64x64 (tiled), 256 rows x 128 columns (subgroup matrices).
    const [tileT, tileN] = variant === "tiled" ? [64, 64] : [256, 128];
    // Without a low-rank term U and F take x (read-only, never read).
    const u = lowRank?.u ?? args.x;
    const f = lowRank?.f ?? args.x;
    const pipeline = await enc.gpu.pipelines.get({
      shader: variant === "tiled" ? TILED : SUBGROUP_MATRIX,
      constants: { W_TRANS: mode === "fwd" ? 1 : 0 },
      substitutions: { OUT: args.out },
    });
    enc.dispatch(
      pipeline,
      new Uint8Array(params),
      [args.x, w.codes, w.absmaxCodes, w.nested, w.dynmap, u, f, args.y],
      [Math.ceil(N / tileN), Math.ceil(T / tileT)],
    );
    return;
  }
  // Sliced: per slice of the output's columns, the weight's matching slice (rows of W for "fwd",
  // columns for "dx") dequantized into the workspace as f16, then the matmul of the same variant
  // ("nt" against W's rows, "nn" against its columns), writing its columns of y in place, the
  // low-rank term with F's matching slice as more steps of the same reduction.
  const ws = deviceWorkspace(enc.gpu, "nf4 f16 slices", NF4_SLICE_WORKSPACE_BYTES);
  for (let c0 = 0; c0 < N; c0 += sliceColumns) {
    const cols = Math.min(sliceColumns, N - c0);
    const slice = { buffer: ws, offset: 0, size: cols * K * 2 };
    await nf4Dequantize(enc, { w, d: slice, first: c0, count: cols, columns: mode === "dx" });
    // F: B16 [out, R] rows c0.. ("fwd"), or A16 [R, in] columns c0.. with rows `in` apart ("dx").
    const low = lowRank && {
      u: lowRank.u,
      f: mode === "fwd"
        ? subBinding(lowRank.f, c0 * R * 2, cols * R * 2)
        : subBinding(lowRank.f, c0 * 2, ((R - 1) * N + cols) * 2),
      R,
      scale: lowRank.scale,
      ldf: N,
    };
    await matmul(enc, {
      a: args.x,
      b: slice,
      c: subBinding(args.y, c0 * outBytes, ((T - 1) * N + cols) * outBytes),
      M: T,
      N: cols,
      K,
      layout: mode === "fwd" ? "nt" : "nn",
      out: args.out,
      alpha: args.alpha,
      beta: args.beta,
      variant,
      ldc: N,
      lowRank: low,
    });
  }
}
