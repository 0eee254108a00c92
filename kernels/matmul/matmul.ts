// The one launcher of the matmul family: the products a linear layer needs, on f16 operands with
// f32 (default) or f16 accumulation and f16 or f32 output, on a portable tiled kernel or on
// subgroup matrices (tensor cores) where the adapter has them.
//
// Dimension letters: M rows of C, N columns of C, K the reduced dimension.
//
// Split K: a product with few output tiles and a long K (LoRA's rank-R products, e.g. U[T,R] =
// X A^T or dB[out,R] = dY^T U, whose T or K runs to thousands) would leave most of the GPU idle, so
// its K is cut into S splits run as S times the workgroups, each writing an f32 partial C into a
// per-device workspace (SPLIT_K_WORKSPACE_BYTES, made on first use), and a second pass sums them
// in order into C with alpha and beta (matmul_split_k_reduce.wgsl).
//
// Two more forms serve the NF4 launcher's sliced products (kernels/nf4/nf4.ts): C may be a slice of
// a wider matrix's columns (`ldc`), and a low-rank term scale · U·F (LoRA's up-projection) may run as
// more steps of the same reduction (`lowRank`; on tensor cores its own pipeline). Both run unsplit.

import { deviceWorkspace } from "../../engine/buffers.ts";
import { type Binding, bindingBytes, type Encoder, workgroupGrid } from "../../engine/encoder.ts";
import type { Capabilities } from "../../engine/gpu.ts";
import tiledCode from "./matmul_tiled.wgsl" with { type: "text" };
import reduceCode from "./matmul_split_k_reduce.wgsl" with { type: "text" };
import subgroupMatrixCode from "./matmul_subgroup_matrix.wgsl" with { type: "text" };

const TILED = { file: "kernels/matmul/matmul_tiled.wgsl", code: tiledCode };
/** WGSL `slot32(v)`: the row and first column of vector v (8 halves) of a tile staged in workgroup
 * memory with rows of 32 halves (four vectors) 40 halves apart, as the tensor-core kernels keep
 * their K-innermost tiles. A 16-byte store is served eight lanes at a time: rows r and r + 1 (80
 * bytes apart) would share four banks, rows r and r + 4 (320 bytes apart) cover all 32, so each
 * group of eight consecutive vectors takes rows r and r + 4 (H100: nt 4096^3 0.60 -> 0.56 ms,
 * 4096 x 14336 x 4096 2.19 -> 2.03 ms). */
export const SLOT32_WGSL = `
fn slot32(v: u32) -> vec2<u32> {
  let g = v / 8u;
  let q = v % 8u;
  return vec2<u32>((g / 4u) * 8u + g % 4u + (q / 4u) * 4u, (q % 4u) * 8u);
}
`;
const SUBGROUP_MATRIX = {
  file: "kernels/matmul/matmul_subgroup_matrix.wgsl",
  code: subgroupMatrixCode + SLOT32_WGSL,
};
const REDUCE = { file: "kernels/matmul/matmul_split_k_reduce.wgsl", code: reduceCode };

/** Bytes of each device's workspace of split-K partials: S * M * N * 4 never exceeds it. */
export const SPLIT_K_WORKSPACE_BYTES = 8 * 2 ** 20;
/** A product splits only with K >= SPLIT_K_MIN_K (shorter ones take microseconds either way) and
 * below SPLIT_K_WORKGROUPS output tiles, into about as many splits as bring it there, each reducing
 * at least SPLIT_K_MIN elements of K. */
const SPLIT_K_MIN_K = 1024;
const SPLIT_K_MIN = 256;
const SPLIT_K_WORKGROUPS = 256;
/** K per split is a multiple of this (the K step of both kernels divides it). */
const SPLIT_K_ALIGN = 32;

/** Output tile edge of each variant. */
const TILE: Record<MatmulVariant, number> = { tiled: 64, subgroup_matrix: 128 };

/** K elements per split and the number of splits of an M x N x K product on `variant` (one split:
 * KS >= K). */
export function matmulSplitK(
  M: number,
  N: number,
  K: number,
  variant: MatmulVariant,
): { KS: number; S: number } {
  const tiles = Math.ceil(M / TILE[variant]) * Math.ceil(N / TILE[variant]);
  const want = Math.min(
    Math.ceil(SPLIT_K_WORKGROUPS / tiles),
    Math.floor(K / SPLIT_K_MIN),
    Math.floor(SPLIT_K_WORKSPACE_BYTES / (M * N * 4)),
  );
  if (K < SPLIT_K_MIN_K || tiles >= SPLIT_K_WORKGROUPS || want < 2) return { KS: Math.max(K, 1), S: 1 };
  const KS = Math.ceil(K / want / SPLIT_K_ALIGN) * SPLIT_K_ALIGN;
  return { KS, S: Math.ceil(K / KS) };
}

/** Which operand is stored transposed:
 * - "nt": C[M,N] = A[M,K] · B[N,K]^T, the forward Y = X W^T of a linear layer (W is [out, in]);
 * - "nn": C[M,N] = A[M,K] · B[K,N], the input gradient dX = dY W;
 * - "tn": C[M,N] = A[K,M]^T · B[K,N], the weight gradient dW = dY^T X. */
export type MatmulLayout = "nt" | "nn" | "tn";
export const MATMUL_LAYOUTS: readonly MatmulLayout[] = ["nt", "nn", "tn"];

export type MatmulVariant = "tiled" | "subgroup_matrix";

export interface MatmulArgs {
  /** f16, [M,K] ("nt", "nn") or [K,M] ("tn"). */
  a: Binding;
  /** f16, [N,K] ("nt") or [K,N] ("nn", "tn"). */
  b: Binding;
  /** [M,N] in `out` precision. */
  c: Binding;
  M: number;
  N: number;
  K: number;
  layout: MatmulLayout;
  out: "f16" | "f32";
  /** Accumulator precision; f16 overflows on long sums of large values, so f32 is the default. */
  acc?: "f32" | "f16";
  /** C = alpha * A·B + beta * C; beta 0 never reads C. */
  alpha?: number;
  beta?: number;
  /** Forces a variant; by default the fastest one the adapter and shape allow. */
  variant?: MatmulVariant;
  /** Elements between rows of C (default N): C is a slice of the columns of a wider matrix. */
  ldc?: number;
  /** C = alpha · (A·B + scale · U·F) + beta · C, the low-rank term as more steps of the same
   * reduction: U f16 [M, R], F f16 [N, R] ("nt") or [R, N] with rows `ldf` apart (default N; "nn").
   * R % 8 == 0. */
  lowRank?: { u: Binding; f: Binding; R: number; scale: number; ldf?: number };
}

const TRANSPOSED: Record<MatmulLayout, { a: boolean; b: boolean }> = {
  nt: { a: false, b: true },
  nn: { a: false, b: false },
  tn: { a: true, b: false },
};

/** Whether the adapter has 16x16x16 f16 subgroup matrices with the wanted result type, and
 * subgroups of exactly 32 (the kernel maps 4 subgroups onto 128 invocations). */
export function hasTensorCores(caps: Capabilities, acc: "f32" | "f16" = "f32"): boolean {
  return caps.f16 && caps.subgroupMinSize === 32 && caps.subgroupMaxSize === 32 &&
    caps.subgroupMatrix.some((c) =>
      c.componentType === "f16" && c.resultComponentType === acc && c.M === 16 && c.N === 16 && c.K === 16
    );
}

/** Why `variant` cannot run this product on this adapter, or undefined when it can. */
export function matmulUnsupported(
  caps: Capabilities,
  args: Pick<MatmulArgs, "M" | "N" | "K" | "layout" | "acc">,
  variant: MatmulVariant,
): string | undefined {
  if (!caps.f16) return `${caps.adapter} has no shader-f16`;
  if (variant === "tiled") return undefined;
  if (!hasTensorCores(caps, args.acc ?? "f32")) {
    return `${caps.adapter} has no f16 16x16x16 subgroup matrices`;
  }
  const t = TRANSPOSED[args.layout];
  const aInner = t.a ? args.M : args.K;
  const bInner = t.b ? args.K : args.N;
  if (aInner % 8 !== 0 || bInner % 8 !== 0) {
    return `the contiguous dimensions (${aInner} of A, ${bInner} of B) must be multiples of 8`;
  }
  return undefined;
}

export function pickMatmulVariant(caps: Capabilities, args: MatmulArgs): MatmulVariant {
  return matmulUnsupported(caps, args, "subgroup_matrix") === undefined ? "subgroup_matrix" : "tiled";
}

/** Encodes C = alpha * op(A) · op(B) + beta * C. */
export async function matmul(enc: Encoder, args: MatmulArgs): Promise<void> {
  const { M, N, K, layout } = args;
  const acc = args.acc ?? "f32";
  const variant = args.variant ?? pickMatmulVariant(enc.gpu.caps, args);
  const why = matmulUnsupported(enc.gpu.caps, args, variant);
  if (why) throw new Error(`matmul ${layout} ${M}x${N}x${K} on ${variant}: ${why}`);
  const t = TRANSPOSED[layout];
  const tile = TILE[variant];
  const groups = [Math.ceil(N / tile), Math.ceil(M / tile)] as const;
  const ldc = args.ldc ?? N;
  const low = args.lowRank;
  const R = low?.R ?? 0;
  if (args.ldc !== undefined || low) {
    const where = `matmul ${layout} ${M}x${N}x${K} on ${variant}`;
    if (!Number.isInteger(ldc) || ldc < N) {
      throw new RangeError(`${where}: ldc = ${ldc} must be a whole number >= N`);
    }
    const bytes = ((M - 1) * ldc + N) * (args.out === "f32" ? 4 : 2);
    if (bindingBytes(args.c) < bytes) {
      throw new RangeError(`${where}: c has ${bindingBytes(args.c)} bytes, needs ${bytes}`);
    }
    if (low) {
      if (layout === "tn") throw new Error(`${where}: the low-rank term runs with "nt" and "nn" only`);
      if (!Number.isInteger(R) || R < 8 || R % 8 !== 0) {
        throw new RangeError(`${where}: R = ${R} must be a multiple of 8`);
      }
      const ldf = low.ldf ?? N;
      const fBytes = (layout === "nt" ? N * R : (R - 1) * ldf + N) * 2;
      if (bindingBytes(low.u) < M * R * 2) {
        throw new RangeError(`${where}: lowRank.u needs ${M * R * 2} bytes`);
      }
      if (bindingBytes(low.f) < fBytes) throw new RangeError(`${where}: lowRank.f needs ${fBytes} bytes`);
    }
  }
  // A low-rank term or a strided C runs unsplit.
  const { KS, S } = args.ldc !== undefined || low ? { KS: K, S: 1 } : matmulSplitK(M, N, K, variant);
  const alpha = args.alpha ?? 1;
  const beta = args.beta ?? 0;
  const params = new ArrayBuffer(40);
  new Uint32Array(params, 0, 3).set([M, N, K]);
  new Uint32Array(params, 20, 3).set([KS, ldc, R]);
  new Float32Array(params, 32, 1)[0] = low?.scale ?? 0;
  new Uint32Array(params, 36, 1)[0] = low?.ldf ?? N;
  // Without a low-rank term U and F take A and B (never read).
  const operands = (c: Binding): Binding[] => [args.a, args.b, c, low?.u ?? args.a, low?.f ?? args.b];
  const product = (out: "f16" | "f32") =>
    enc.gpu.pipelines.get({
      shader: variant === "tiled" ? TILED : SUBGROUP_MATRIX,
      constants: variant === "tiled"
        ? { A_TRANS: t.a ? 1 : 0, B_TRANS: t.b ? 1 : 0 }
        : { A_TRANS: t.a ? 1 : 0, B_TRANS: t.b ? 1 : 0, LOW_RANK: low ? 1 : 0 },
      substitutions: variant === "tiled" ? { ACC: acc, OUT: out } : {
        ACC: acc,
        OUT: out,
        A_LAYOUT: t.a ? "col_major" : "row_major",
        B_LAYOUT: t.b ? "col_major" : "row_major",
      },
    });
  if (S === 1) {
    new Float32Array(params, 12, 2).set([alpha, beta]);
    enc.dispatch(await product(args.out), new Uint8Array(params), operands(args.c), groups);
    return;
  }
  // The splits write f32 partials (alpha 1, beta 0); the reduce pass applies alpha and beta.
  const partial = await product("f32");
  new Float32Array(params, 12, 2).set([1, 0]);
  const workspace = deviceWorkspace(enc.gpu, "matmul split-K partials", SPLIT_K_WORKSPACE_BYTES);
  const part = { buffer: workspace, offset: 0, size: S * M * N * 4 };
  enc.dispatch(partial, new Uint8Array(params), operands(part), [...groups, S]);
  const reduce = await enc.gpu.pipelines.get({ shader: REDUCE, substitutions: { OUT: args.out } });
  const g = workgroupGrid(enc.gpu.caps, Math.ceil((M * N) / 256));
  const reduceParams = new ArrayBuffer(20);
  new Uint32Array(reduceParams, 0, 2).set([M * N, S]);
  new Float32Array(reduceParams, 8, 2).set([alpha, beta]);
  new Uint32Array(reduceParams, 16, 1)[0] = g[0];
  enc.dispatch(reduce, new Uint8Array(reduceParams), [part, args.c], g);
}
