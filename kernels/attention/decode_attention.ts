// The launcher of decode attention: one new query position per head attends over a KV cache
// (generation with a KV cache), split over chunks of the cache as in flash-decoding so that a long
// cache keeps every streaming multiprocessor busy: pass 1 computes each chunk's softmax-weighted
// values and log-sum-exp for the query heads of one kv head (grouped-query heads share the read of
// the cache), pass 2 merges the chunks of each head. A cache of one chunk (n <= 128) needs no merge:
// pass 1 writes the output itself, one dispatch. f16 storage, f32 scores, softmax and sums.
//
// Dimension letters: H query heads, KVH kv heads (H a multiple of KVH, H / KVH at most 8),
// D head dim, Tmax cache capacity, n valid cache rows (the positions 0..n-1), C = ceil(n / 128).
//   q     f16 [H,D]         the new position's queries (after RoPE)
//   k, v  f16 [Tmax,KVH,D]  the cache; rows n.. are never read
//   out   f16 [H,D]         softmax(scale q·k[0..n)) v[0..n)
//   part  f32 workspace     decodeAttentionWorkspaceBytes(H, D, n) bytes: o [H,C,D] then lse [H,C]
//   position u32 [1]        n - 1 (the query's position), read when the GPU runs the dispatch: a
//                           recorded dispatch serves every n with the same C
// Query head h uses kv head floor(h / (H / KVH)); scale is 1/sqrt(D) by default.

import { type Binding, bindingBytes, type Encoder } from "../../engine/encoder.ts";
import type { Capabilities } from "../../engine/gpu.ts";
import partialCode from "./decode_attention_partial.wgsl" with { type: "text" };
import combineCode from "./decode_attention_combine.wgsl" with { type: "text" };

const PARTIAL = { file: "kernels/attention/decode_attention_partial.wgsl", code: partialCode };
const COMBINE = { file: "kernels/attention/decode_attention_combine.wgsl", code: combineCode };

/** Cached positions per pass-1 workgroup. */
export const DECODE_ATTENTION_CHUNK = 128;
/** Largest head dim and largest number of query heads per kv head of the kernels. */
export const DECODE_ATTENTION_MAX_D = 128;
export const DECODE_ATTENTION_MAX_GROUP = 8;
// Pass 1's workgroup memory: q rows, scores, partial sums, reductions (decode_attention_partial.wgsl).
const WORKGROUP_BYTES = 8 * 32 * 16 + 8 * 128 * 4 + 1024 * 16 + 8 * 16 * 4 + 16 * 4;
/** Invocations of a pass-1 workgroup and the vec4 slots of its partial sums. */
const PARTIAL_INVOCATIONS = 256;
const PARTIAL_SLOTS = 1024;

export interface DecodeAttentionShape {
  /** Valid cache rows, 1 <= n <= Tmax; the dispatch's grid is made for ceil(n / 128) chunks, and
   * `position` must hold n - 1, or another n - 1 with the same number of chunks, when it runs. */
  n: number;
  H: number;
  KVH: number;
  D: number;
  /** Multiplies q·k before the softmax; 1/sqrt(D) when absent. */
  scale?: number;
}

export interface DecodeAttentionArgs extends DecodeAttentionShape {
  q: Binding;
  k: Binding;
  v: Binding;
  /** Written: f16 [H,D]. */
  out: Binding;
  /** Workspace of at least decodeAttentionWorkspaceBytes(H, D, n) bytes. */
  part: Binding;
  /** u32 [1]: n - 1, read when the dispatch runs. */
  position: Binding;
}

/** Workspace bytes for a cache of n rows (size it once with n = Tmax). */
export function decodeAttentionWorkspaceBytes(H: number, D: number, n: number): number {
  const C = Math.ceil(n / DECODE_ATTENTION_CHUNK);
  return H * C * (D + 1) * 4;
}

/** Why the kernels cannot run this shape on this adapter, or undefined when they can. */
export function decodeAttentionUnsupported(
  caps: Capabilities,
  shape: DecodeAttentionShape,
): string | undefined {
  const { n, H, KVH, D } = shape;
  if (!caps.f16) return `${caps.adapter} has no shader-f16`;
  for (const [name, value] of Object.entries({ n, H, KVH, D })) {
    if (!Number.isInteger(value) || value < 1) return `${name} = ${value} must be a positive integer`;
  }
  if (H % KVH !== 0) return `H = ${H} must be a multiple of KVH = ${KVH}`;
  if (H / KVH > DECODE_ATTENTION_MAX_GROUP) {
    return `H / KVH = ${H / KVH} query heads per kv head; at most ${DECODE_ATTENTION_MAX_GROUP}`;
  }
  if (D % 16 !== 0 || D > DECODE_ATTENTION_MAX_D) {
    return `head dim D = ${D} must be a multiple of 16 and at most ${DECODE_ATTENTION_MAX_D}`;
  }
  if (n * KVH * D >= 2 ** 32) return `n*KVH*D = ${n * KVH * D} overflows the kernels' 32-bit indices`;
  if (WORKGROUP_BYTES > caps.limits.maxComputeWorkgroupStorageSize) {
    return `the kernel needs ${WORKGROUP_BYTES} bytes of workgroup memory; ${caps.adapter} allows ` +
      `${caps.limits.maxComputeWorkgroupStorageSize}`;
  }
  return undefined;
}

/** Query heads per pass-1 workgroup: all H / KVH heads of a kv head (each cached row read once
 * per chunk) when the cache has several chunks; one head for a cache of one chunk, whose KVH
 * workgroups would otherwise leave most of the GPU idle (a workgroup's time there is latency). The
 * outputs are the same bits either way. */
export function decodeAttentionHeadsPerWorkgroup(shape: DecodeAttentionShape): number {
  return Math.ceil(shape.n / DECODE_ATTENTION_CHUNK) === 1 ? 1 : shape.H / shape.KVH;
}

/** Encodes out = softmax(scale q k[0..n)^T) v[0..n) for every query head: one dispatch for a cache of
 * one chunk, two otherwise. */
export async function decodeAttention(enc: Encoder, args: DecodeAttentionArgs): Promise<void> {
  const why = decodeAttentionUnsupported(enc.gpu.caps, args);
  if (why) {
    throw new Error(`decode attention n=${args.n} H=${args.H} KVH=${args.KVH} D=${args.D}: ${why}`);
  }
  const C = Math.ceil(args.n / DECODE_ATTENTION_CHUNK);
  const need = decodeAttentionWorkspaceBytes(args.H, args.D, args.n);
  const have = bindingBytes(args.part);
  if (have < need) {
    throw new Error(
      `decode attention n=${args.n}: workspace has ${have} bytes, needs ${need} ` +
        `(allocate decodeAttentionWorkspaceBytes(H, D, Tmax))`,
    );
  }
  const heads = decodeAttentionHeadsPerWorkgroup(args);
  const positionBytes = bindingBytes(args.position);
  if (positionBytes < 4) {
    throw new Error(`decode attention: position has ${positionBytes} bytes; it must hold n - 1 as a u32`);
  }
  const buf = new ArrayBuffer(16);
  new Uint32Array(buf, 0, 3).set([args.H, args.KVH, C]);
  new Float32Array(buf, 12, 1)[0] = args.scale ?? 1 / Math.sqrt(args.D);
  const params = new Uint8Array(buf);
  // Position groups of the weighted sum of v: as many as the invocations allow, within the slots.
  const D4 = args.D / 4;
  const PG = Math.min(Math.floor(PARTIAL_INVOCATIONS / D4), Math.floor(PARTIAL_SLOTS / (heads * D4)));
  const partial = await enc.gpu.pipelines.get({ shader: PARTIAL, constants: { D: args.D, G: heads, PG } });
  enc.dispatch(partial, params, [args.q, args.k, args.v, args.part, args.out, args.position], [
    C,
    args.H / heads,
  ]);
  if (C === 1) return;
  const combine = await enc.gpu.pipelines.get({ shader: COMBINE, constants: { D: args.D } });
  enc.dispatch(combine, params, [args.part, args.out], [args.H]);
}
