// The one launcher of the matmul family: the products a linear layer needs, on f16 operands with
// f32 (default) or f16 accumulation and f16 or f32 output, on a portable tiled kernel or on
// subgroup matrices (tensor cores) where the adapter has them.
//
// Dimension letters: M rows of C, N columns of C, K the reduced dimension.

import type { Binding, Encoder } from "../../engine/encoder.ts";
import type { Capabilities } from "../../engine/gpu.ts";
import tiledCode from "./matmul_tiled.wgsl" with { type: "text" };
import subgroupMatrixCode from "./matmul_subgroup_matrix.wgsl" with { type: "text" };

const TILED = { file: "kernels/matmul/matmul_tiled.wgsl", code: tiledCode };
const SUBGROUP_MATRIX = { file: "kernels/matmul/matmul_subgroup_matrix.wgsl", code: subgroupMatrixCode };

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
  const pipeline = await enc.gpu.pipelines.get({
    shader: variant === "tiled" ? TILED : SUBGROUP_MATRIX,
    constants: { A_TRANS: t.a ? 1 : 0, B_TRANS: t.b ? 1 : 0 },
    substitutions: variant === "tiled" ? { ACC: acc, OUT: args.out } : {
      ACC: acc,
      OUT: args.out,
      A_LAYOUT: t.a ? "col_major" : "row_major",
      B_LAYOUT: t.b ? "col_major" : "row_major",
    },
  });
  const params = new ArrayBuffer(20);
  new Uint32Array(params, 0, 3).set([M, N, K]);
  new Float32Array(params, 12, 2).set([args.alpha ?? 1, args.beta ?? 0]);
  const tile = variant === "tiled" ? 64 : 128;
  enc.dispatch(pipeline, new Uint8Array(params), [args.a, args.b, args.c], [
    Math.ceil(N / tile),
    Math.ceil(M / tile),
  ]);
}
