// The one launcher of the LoRA family: a linear layer with a low-rank adapter,
//   Y = base(X) + s · (dropout(X) A^T) B^T,
// where base is the NF4 dequant-matmul (QLoRA, kernels/nf4) or a plain f16 matmul (16-bit LoRA),
// with its backward. Every plain f16 product goes through the matmul launcher (kernels/matmul).
//
// Dimension letters: T tokens, in and out the base weight's [out, in] shape, R the LoRA rank.
//
// Buffers (f16 unless said):
//   X  [T, in]   input                    Y  [T, out]  output (f16 or f32)
//   A  [R, in]   f32 master, A16 its f16 copy   B [out, R] f32 master, B16 its f16 copy
//   Xd [T, in]   dropout(X) (workspace, only when p > 0; regenerated in the backward, never stored)
//   U  [T, R]    Xd A^T (kept from the forward for the backward)
//   dY [T, out]  output gradient          dX [T, in]  input gradient (f16 or f32)
//   dU [T, R]    workspace                G  [T, in] f32 workspace (only when p > 0)
//   dA [R, in], dB [out, R]  f32 gradients of the masters
//
// Factors: the kernels read f16 copies of A and B, made by `loraCastFactors` once per optimizer step
// (the masters stay f32 for the optimizer); all products then run on tensor cores where present.
//
// Forward (`loraForward`):
//   1. Xd = dropout(X)                          lora_dropout.wgsl             (p > 0 only; else Xd = X)
//   2. U[T,R] = Xd · A16^T                      matmul nt, f16 out
//   3. Y[T,out] = X · deq(W)^T + s · U · B16^T  nf4Matmul fwd with U, B16 as its low-rank term
//      (f16 base, or an R the tensor-core NF4 kernel does not take: the base product, then
//      Y += s · U · B16^T as matmul nt, alpha s, beta 1)
// Backward (`loraBackward`, U from the forward):
//   1. dB[out,R] = s · dY^T · U                 matmul tn, f32 out (beta 1 with accumulate)
//   2. dU[T,R] = s · dY · B16                   matmul nn, f16 out
//   3. Xd = dropout(X) again                    lora_dropout.wgsl             (p > 0 only)
//   4. dA[R,in] = dU^T · Xd                     matmul tn, f32 out (beta 1 with accumulate)
//   5. p = 0: dX = dY · deq(W) + dU · A16       nf4Matmul dx with dU, A16 as its low-rank term
//      (beta 1 with accumulateDx; unfused as in the forward: dY · deq(W) or dY · W16, then
//      dX += dU · A16 as matmul nn, beta 1)
//      p > 0: dX = dY · deq(W) or dY · W16; G = dU · A16; dX += mask · G / (1 - p)
//      nf4Matmul dx / matmul nn, matmul nn f32 out, lora_dropout_backward.wgsl

import { type Binding, type Encoder, workgroupGrid } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { matmul } from "../matmul/matmul.ts";
import {
  type Nf4LowRank,
  nf4Matmul,
  nf4MatmulUnsupported,
  type Nf4Weight,
  pickNf4MatmulVariant,
} from "../nf4/nf4.ts";
import castCode from "./lora_cast.wgsl" with { type: "text" };
import dropoutCode from "./lora_dropout.wgsl" with { type: "text" };
import dropoutBackwardCode from "./lora_dropout_backward.wgsl" with { type: "text" };

const CAST = { file: "kernels/lora/lora_cast.wgsl", code: castCode };
const DROPOUT = { file: "kernels/lora/lora_dropout.wgsl", code: dropoutCode };
const DROPOUT_BACKWARD = { file: "kernels/lora/lora_dropout_backward.wgsl", code: dropoutBackwardCode };

/** The frozen base weight: NF4 (QLoRA) or f16 W [out, in] (16-bit LoRA). */
export type LoraBase = { kind: "nf4"; w: Nf4Weight } | { kind: "f16"; w: Binding };

export interface LoraDropout {
  /** Probability of dropping an element, in [0, 1); 0 takes the path without dropout. */
  p: number;
  /** Seed of the mask; the backward of a step must use the forward's seed. */
  seed: number;
}

export interface LoraShape {
  T: number;
  in: number;
  out: number;
  R: number;
  /** LoRA scaling s = alpha / R (alpha / sqrt(R) with rsLoRA). */
  scale: number;
  dropout?: LoraDropout;
}

export interface LoraForwardArgs extends LoraShape {
  x: Binding;
  base: LoraBase;
  a16: Binding;
  b16: Binding;
  /** f16 [T, R], written; keep it for the backward. */
  u: Binding;
  /** f16 [T, in] workspace, needed when dropout p > 0. */
  xd?: Binding;
  y: Binding;
  yType: "f16" | "f32";
}

export interface LoraBackwardArgs extends LoraShape {
  x: Binding;
  dy: Binding;
  base: LoraBase;
  a16: Binding;
  b16: Binding;
  /** f16 [T, R] from the forward. */
  u: Binding;
  /** f16 [T, R] workspace. */
  du: Binding;
  /** f16 [T, in] and f32 [T, in] workspaces, needed when dropout p > 0. */
  xd?: Binding;
  g?: Binding;
  /** f32 [R, in] and [out, R]. */
  dA: Binding;
  dB: Binding;
  /** Add into dA, dB (gradient accumulation) instead of overwriting them. */
  accumulate?: boolean;
  dx: Binding;
  dxType: "f16" | "f32";
  /** Add dY · W into dX instead of overwriting it. */
  accumulateDx?: boolean;
}

function checkShape(what: string, s: LoraShape): void {
  for (const [k, v] of [["T", s.T], ["in", s.in], ["out", s.out], ["R", s.R]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`${what}: ${k} = ${v} must be a positive integer`);
    }
  }
  if (s.R > 64) throw new RangeError(`${what}: rank R = ${s.R}; the LoRA kernels support R up to 64`);
  const p = s.dropout?.p ?? 0;
  if (!(p >= 0 && p < 1)) throw new RangeError(`${what}: dropout p = ${p} must be in [0, 1)`);
}

/** Dropout parameters: threshold on the 32-bit hash and the f32 scale 1 / (1 - p). */
export function loraDropoutParams(p: number): { threshold: number; scale: number } {
  return { threshold: Math.min(0xffffffff, Math.round(p * 2 ** 32)), scale: Math.fround(1 / (1 - p)) };
}

function dropoutParams(n: number, gx: number, d: LoraDropout): Uint8Array {
  const buf = new ArrayBuffer(20);
  const { threshold, scale } = loraDropoutParams(d.p);
  new Uint32Array(buf, 0, 4).set([n, gx, d.seed >>> 0, threshold]);
  new Float32Array(buf, 16, 1)[0] = scale;
  return new Uint8Array(buf);
}

/** Encodes f16 copies of the f32 masters: a16 [R, in] from a [R, in], b16 [out, R] from b. */
export async function loraCastFactors(
  enc: Encoder,
  args: { a: Binding; b: Binding; a16: Binding; b16: Binding; in: number; out: number; R: number },
): Promise<void> {
  const pipeline = await enc.gpu.pipelines.get({ shader: CAST });
  for (
    const [src, dst, n] of [[args.a, args.a16, args.R * args.in], [
      args.b,
      args.b16,
      args.out * args.R,
    ]] as const
  ) {
    const g = workgroupGrid(enc.gpu.caps, Math.ceil(n / 256));
    enc.dispatch(pipeline, new Uint32Array([n, g[0]]), [src, dst], g);
  }
}

/** Encodes Xd = dropout(X) over n elements. */
export async function loraDropout(
  enc: Encoder,
  x: Binding,
  xd: Binding,
  n: number,
  d: LoraDropout,
): Promise<void> {
  const pipeline = await enc.gpu.pipelines.get({ shader: DROPOUT });
  const g = workgroupGrid(enc.gpu.caps, Math.ceil(n / 256));
  enc.dispatch(pipeline, dropoutParams(n, g[0], d), [x, xd], g);
}

function needsDropout(s: LoraShape): boolean {
  return (s.dropout?.p ?? 0) > 0;
}

/** Whether the NF4 kernel takes the low-rank term on the variant it would run the plain product on
 * (an R the tensor-core kernel cannot take keeps the base on tensor cores, unfused). */
function fusesLowRank(gpu: Gpu, w: Nf4Weight, R: number): boolean {
  const variant = pickNf4MatmulVariant(gpu.caps, w);
  return nf4MatmulUnsupported(gpu.caps, { out: w.out, in: w.in, R }, variant) === undefined;
}

/** The base product; with `lowRank` (the NF4 base only, where fusesLowRank) the low-rank term in
 * the same pass. Returns whether it took the low-rank term. */
async function baseProduct(
  enc: Encoder,
  base: LoraBase,
  mode: "fwd" | "dx",
  x: Binding,
  y: Binding,
  s: LoraShape,
  out: "f16" | "f32",
  beta: number,
  lowRank?: Nf4LowRank,
): Promise<boolean> {
  if (base.kind === "nf4") {
    if (base.w.in !== s.in || base.w.out !== s.out) {
      throw new RangeError(
        `LoRA base NF4 weight is [${base.w.out}, ${base.w.in}], the layer [${s.out}, ${s.in}]`,
      );
    }
    const fused = lowRank !== undefined && fusesLowRank(enc.gpu, base.w, lowRank.R);
    await nf4Matmul(enc, { x, w: base.w, y, T: s.T, mode, out, beta, lowRank: fused ? lowRank : undefined });
    return fused;
  } else if (mode === "fwd") {
    await matmul(enc, { a: x, b: base.w, c: y, M: s.T, N: s.out, K: s.in, layout: "nt", out, beta });
  } else {
    await matmul(enc, { a: x, b: base.w, c: y, M: s.T, N: s.in, K: s.out, layout: "nn", out, beta });
  }
  return false;
}

/** Encodes the forward (see the launch sequence above). */
export async function loraForward(enc: Encoder, args: LoraForwardArgs): Promise<void> {
  checkShape("loraForward", args);
  const { T, R } = args;
  let xd = args.x;
  if (needsDropout(args)) {
    if (!args.xd) throw new Error("loraForward: dropout p > 0 needs the xd workspace (f16 [T, in])");
    await loraDropout(enc, args.x, args.xd, T * args.in, args.dropout!);
    xd = args.xd;
  }
  await matmul(enc, { a: xd, b: args.a16, c: args.u, M: T, N: R, K: args.in, layout: "nt", out: "f16" });
  const lowRank = { u: args.u, f: args.b16, R, scale: args.scale };
  if (await baseProduct(enc, args.base, "fwd", args.x, args.y, args, args.yType, 0, lowRank)) return;
  await matmul(enc, {
    a: args.u,
    b: args.b16,
    c: args.y,
    M: T,
    N: args.out,
    K: R,
    layout: "nt",
    out: args.yType,
    alpha: args.scale,
    beta: 1,
  });
}

/** Encodes the backward (see the launch sequence above). */
export async function loraBackward(enc: Encoder, args: LoraBackwardArgs): Promise<void> {
  checkShape("loraBackward", args);
  const { T, R, scale } = args;
  const gradBeta = args.accumulate ? 1 : 0;
  const dropout = needsDropout(args);
  if (dropout && (!args.xd || !args.g)) {
    throw new Error("loraBackward: dropout p > 0 needs the xd (f16 [T, in]) and g (f32 [T, in]) workspaces");
  }
  await matmul(enc, {
    a: args.dy,
    b: args.u,
    c: args.dB,
    M: args.out,
    N: R,
    K: T,
    layout: "tn",
    out: "f32",
    alpha: scale,
    beta: gradBeta,
  });
  await matmul(enc, {
    a: args.dy,
    b: args.b16,
    c: args.du,
    M: T,
    N: R,
    K: args.out,
    layout: "nn",
    out: "f16",
    alpha: scale,
  });
  let xd = args.x;
  if (dropout) {
    await loraDropout(enc, args.x, args.xd!, T * args.in, args.dropout!);
    xd = args.xd!;
  }
  await matmul(enc, {
    a: args.du,
    b: xd,
    c: args.dA,
    M: R,
    N: args.in,
    K: T,
    layout: "tn",
    out: "f32",
    beta: gradBeta,
  });
  const dxBeta = args.accumulateDx ? 1 : 0;
  if (!dropout) {
    const lowRank = { u: args.du, f: args.a16, R, scale: 1 };
    if (await baseProduct(enc, args.base, "dx", args.dy, args.dx, args, args.dxType, dxBeta, lowRank)) return;
    await matmul(enc, {
      a: args.du,
      b: args.a16,
      c: args.dx,
      M: T,
      N: args.in,
      K: R,
      layout: "nn",
      out: args.dxType,
      beta: 1,
    });
    return;
  }
  await baseProduct(enc, args.base, "dx", args.dy, args.dx, args, args.dxType, dxBeta);
  await matmul(enc, {
    a: args.du,
    b: args.a16,
    c: args.g!,
    M: T,
    N: args.in,
    K: R,
    layout: "nn",
    out: "f32",
  });
  const pipeline = await enc.gpu.pipelines.get({
    shader: DROPOUT_BACKWARD,
    substitutions: { OUT: args.dxType },
  });
  const n = T * args.in;
  const g = workgroupGrid(enc.gpu.caps, Math.ceil(n / 256));
  enc.dispatch(pipeline, dropoutParams(n, g[0], args.dropout!), [args.g!, args.dx], g);
}
