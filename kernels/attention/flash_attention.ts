// The one launcher of the attention family: causal (or full) flash attention with grouped-query
// heads, forward and backward, f16 storage with f32 softmax statistics and sums, on a portable
// tiled kernel or on subgroup matrices (tensor cores) where the adapter has them.
// No [T, T] buffer ever exists: scores live one tile at a time in workgroup memory.
//
// Dimension letters: B sequences (each attends only within itself), T tokens per sequence,
// H query heads, KVH kv heads (H a multiple of KVH), D head dim.
//   q, o, dO, dq      f16 [B,T,H,D]   (token-major, heads contiguous: the projections' X·W^T)
//   k, v, dk, dv      f16 [B,T,KVH,D]
//   lse               f32 [B,H,T]     natural-log row log-sum-exp of the scaled scores
//   delta             f32 [B,H,T]     backward workspace, rowsum(dO * o)
// Query head h uses kv head floor(h / (H / KVH)); scores are scale * q·k (1/sqrt(D) by default).

import type { Binding, Encoder } from "../../engine/encoder.ts";
import type { Capabilities } from "../../engine/gpu.ts";
import type { Shader } from "../../engine/pipeline.ts";
import { hasTensorCores } from "../matmul/matmul.ts";
import fwdCode from "./flash_attention_fwd.wgsl" with { type: "text" };
import fwdSubgroupMatrixCode from "./flash_attention_fwd_subgroup_matrix.wgsl" with { type: "text" };
import bwdDqCode from "./flash_attention_bwd_dq.wgsl" with { type: "text" };
import bwdDkvCode from "./flash_attention_bwd_dkv.wgsl" with { type: "text" };
import bwdSubgroupMatrixCode from "./flash_attention_bwd_subgroup_matrix.wgsl" with { type: "text" };

const FWD = { file: "kernels/attention/flash_attention_fwd.wgsl", code: fwdCode };
const FWD_SUBGROUP_MATRIX = {
  file: "kernels/attention/flash_attention_fwd_subgroup_matrix.wgsl",
  code: fwdSubgroupMatrixCode,
};
const BWD_DQ = { file: "kernels/attention/flash_attention_bwd_dq.wgsl", code: bwdDqCode };
const BWD_DKV = { file: "kernels/attention/flash_attention_bwd_dkv.wgsl", code: bwdDkvCode };
/** Both backward passes on subgroup matrices, entry points `dq` and `dkv`. */
const BWD_SUBGROUP_MATRIX = {
  file: "kernels/attention/flash_attention_bwd_subgroup_matrix.wgsl",
  code: bwdSubgroupMatrixCode,
};

/** "portable": workgroup tiles, f32 math, no subgroups (runs everywhere); "subgroup_matrix":
 * the products on f16 x f16 -> f32 16x16x16 tensor-core fragments (P and dS rounded to f16 for
 * them), softmax and sums in f32; needs subgroups of exactly 32. */
export type FlashAttentionVariant = "portable" | "subgroup_matrix";
export type FlashAttentionPass = "forward" | "backward";

export interface FlashAttentionShape {
  /** Independent sequences of T tokens each; 1 when absent. */
  B?: number;
  T: number;
  H: number;
  KVH: number;
  D: number;
  /** Token t sees tokens 0..t only (the default); false lets every token see all T. */
  causal?: boolean;
  /** Multiplies q·k before the softmax; 1/sqrt(D) when absent. */
  scale?: number;
}

export interface FlashAttentionForwardArgs extends FlashAttentionShape {
  q: Binding;
  k: Binding;
  v: Binding;
  /** Written: f16 [B,T,H,D]. */
  o: Binding;
  /** Written: f32 [B,H,T], kept for the backward. */
  lse: Binding;
  variant?: FlashAttentionVariant;
}

export interface FlashAttentionBackwardArgs extends FlashAttentionShape {
  q: Binding;
  k: Binding;
  v: Binding;
  /** The forward's output and lse. */
  o: Binding;
  lse: Binding;
  /** Gradient of the loss with respect to o, f16 [B,T,H,D]. */
  dO: Binding;
  /** Written: f16 [B,T,H,D]. */
  dq: Binding;
  /** Written: f16 [B,T,KVH,D], summed over the query heads of each kv head. */
  dk: Binding;
  dv: Binding;
  /** Workspace f32 [B,H,T] (flashAttentionDeltaBytes), written then read by the backward. */
  delta: Binding;
  variant?: FlashAttentionVariant;
}

/** Largest head dim of the kernels (registers and workgroup tiles are sized for it). */
export const FLASH_ATTENTION_MAX_D = 128;

/** Workgroup memory each kernel declares, in bytes. */
const WORKGROUP_BYTES = {
  forward: {
    portable: 3 * 16 * 128 * 2 + 16 * 16 * 4,
    subgroup_matrix: 64 * 136 * 2 + 128 * 36 * 4 + 128 * 40 * 2 + 128 * 4 + 8 * 4,
  },
  backward: {
    portable: 4 * 16 * 128 * 2 + 2 * 16 * 16 * 4 + 2 * 16 * 4,
    // The dk/dv pass's, the larger of the two.
    subgroup_matrix: 64 * 136 * 2 + 2 * 64 * 32 * 4 + 2 * 64 * 40 * 2 + 2 * 64 * 4,
  },
};

/** Bytes of the backward's delta workspace, f32 [B,H,T]. */
export function flashAttentionDeltaBytes(shape: FlashAttentionShape): number {
  return (shape.B ?? 1) * shape.H * shape.T * 4;
}

/** Why `variant` cannot run this shape and pass on this adapter, or undefined when it can. */
export function flashAttentionUnsupported(
  caps: Capabilities,
  shape: FlashAttentionShape,
  variant: FlashAttentionVariant,
  pass: FlashAttentionPass,
): string | undefined {
  const { T, H, KVH, D } = shape;
  const B = shape.B ?? 1;
  if (!caps.f16) return `${caps.adapter} has no shader-f16`;
  for (const [name, value] of Object.entries({ B, T, H, KVH, D })) {
    if (!Number.isInteger(value) || value < 1) return `${name} = ${value} must be a positive integer`;
  }
  if (H % KVH !== 0) return `H = ${H} must be a multiple of KVH = ${KVH}`;
  if (D % 8 !== 0 || D > FLASH_ATTENTION_MAX_D) {
    return `head dim D = ${D} must be a multiple of 8 and at most ${FLASH_ATTENTION_MAX_D}`;
  }
  if (B * T * H * D >= 2 ** 32) return `B*T*H*D = ${B * T * H * D} overflows the kernels' 32-bit indices`;
  if (variant === "subgroup_matrix") {
    if (!hasTensorCores(caps)) {
      return `${caps.adapter} has no f16 16x16x16 subgroup matrices with subgroups of 32`;
    }
    if (D % 16 !== 0) return `head dim D = ${D} must be a multiple of 16 on subgroup matrices`;
    // The backward's subgroup pairs each take half of D in 16-column fragments, two at a time.
    if (pass === "backward" && D % 64 !== 0) {
      return `head dim D = ${D} must be a multiple of 64 for the backward on subgroup matrices`;
    }
  }
  const need = WORKGROUP_BYTES[pass][variant];
  if (need > caps.limits.maxComputeWorkgroupStorageSize) {
    return `the ${variant} ${pass} kernel needs ${need} bytes of workgroup memory; ${caps.adapter} allows ` +
      `${caps.limits.maxComputeWorkgroupStorageSize}`;
  }
  return undefined;
}

/** The fastest variant the adapter and shape allow for the pass. */
export function pickFlashAttentionVariant(
  caps: Capabilities,
  shape: FlashAttentionShape,
  pass: FlashAttentionPass,
): FlashAttentionVariant {
  return flashAttentionUnsupported(caps, shape, "subgroup_matrix", pass) === undefined
    ? "subgroup_matrix"
    : "portable";
}

function params(shape: FlashAttentionShape): Uint8Array {
  const buf = new ArrayBuffer(24);
  new Uint32Array(buf, 0, 5).set([shape.B ?? 1, shape.T, shape.H, shape.KVH, shape.causal === false ? 0 : 1]);
  new Float32Array(buf, 20, 1)[0] = shape.scale ?? 1 / Math.sqrt(shape.D);
  return new Uint8Array(buf);
}

function check(
  enc: Encoder,
  shape: FlashAttentionShape,
  variant: FlashAttentionVariant,
  pass: FlashAttentionPass,
) {
  const why = flashAttentionUnsupported(enc.gpu.caps, shape, variant, pass);
  if (why) {
    const { B = 1, T, H, KVH, D } = shape;
    throw new Error(`flash attention ${pass} B=${B} T=${T} H=${H} KVH=${KVH} D=${D} on ${variant}: ${why}`);
  }
}

/** Encodes o = softmax(scale q k^T, causal) v and its lse. */
export async function flashAttentionForward(enc: Encoder, args: FlashAttentionForwardArgs): Promise<void> {
  const variant = args.variant ?? pickFlashAttentionVariant(enc.gpu.caps, args, "forward");
  check(enc, args, variant, "forward");
  const pipeline = await enc.gpu.pipelines.get({
    shader: variant === "portable" ? FWD : FWD_SUBGROUP_MATRIX,
    constants: { D: args.D },
  });
  const rows = variant === "portable" ? 16 : 128;
  enc.dispatch(pipeline, params(args), [args.q, args.k, args.v, args.o, args.lse], [
    Math.ceil(args.T / rows),
    args.H,
    args.B ?? 1,
  ]);
}

/** Encodes the backward: delta and dq in one pass over query blocks, then dk and dv in one pass
 * over kv blocks (each summing its group's query heads); both recompute P from lse. */
export async function flashAttentionBackward(enc: Encoder, args: FlashAttentionBackwardArgs): Promise<void> {
  const variant = args.variant ?? pickFlashAttentionVariant(enc.gpu.caps, args, "backward");
  check(enc, args, variant, "backward");
  const B = args.B ?? 1;
  const p = params(args);
  const portable = variant === "portable";
  const rows = portable ? 16 : 64;
  // Both variants bind q, k, v, dO, lse, delta first, then the pass's own two buffers.
  const shared = [args.q, args.k, args.v, args.dO, args.lse, args.delta];
  // The pass's pipeline: the portable shader, or the subgroup-matrix module's entry of that name.
  const pipeline = (portableShader: Shader, entry: "dq" | "dkv") =>
    enc.gpu.pipelines.get(
      portable
        ? { shader: portableShader, constants: { D: args.D } }
        : { shader: BWD_SUBGROUP_MATRIX, entry, constants: { D: args.D } },
    );
  enc.dispatch(await pipeline(BWD_DQ, "dq"), p, [...shared, args.o, args.dq], [
    Math.ceil(args.T / rows),
    args.H,
    B,
  ]);
  enc.dispatch(await pipeline(BWD_DKV, "dkv"), p, [...shared, args.dk, args.dv], [
    Math.ceil(args.T / rows),
    args.KVH,
    B,
  ]);
}
