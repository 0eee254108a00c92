// Differentiable ops on the tape: thin wrappers over the kernel launchers. Each runs its forward
// into the encoder and records its backward. Activations are f16; LoRA gradients f32.
//
// Dimension letters: T tokens, C hidden, H heads, KVH kv heads, D head dim, R LoRA rank.

import type { Binding, Encoder } from "./encoder.ts";
import type { Tape } from "./tape.ts";
import type { Tensor } from "./tensor.ts";
import { loraBackward, type LoraBase, loraForward } from "../kernels/lora/lora.ts";
import { matmul } from "../kernels/matmul/matmul.ts";
import { nf4Matmul } from "../kernels/nf4/nf4.ts";
import { rmsnormBackward, rmsnormForward } from "../kernels/norm/rmsnorm.ts";
import { ropeBackward, ropeForward } from "../kernels/rope/rope.ts";
import {
  flashAttentionBackward,
  flashAttentionDeltaBytes,
  flashAttentionForward,
} from "../kernels/attention/flash_attention.ts";
import { swigluBackward, swigluForward } from "../kernels/swiglu/swiglu.ts";
import { residualAdd } from "../kernels/elementwise/elementwise.ts";

/** A LoRA adapter of one linear layer: f32 masters and gradients, f16 copies for the kernels. */
export interface LoraAdapter {
  R: number;
  scale: number;
  /** Dropout probability; 0 for none. */
  dropout: number;
  a: GPUBuffer;
  b: GPUBuffer;
  a16: GPUBuffer;
  b16: GPUBuffer;
  dA: GPUBuffer;
  dB: GPUBuffer;
}

/** A frozen linear layer W [out, in] with an optional LoRA adapter. */
export interface Linear {
  in: number;
  out: number;
  base: LoraBase;
  lora?: LoraAdapter;
}

/** y[T, out] = x W^T (+ s · dropout(x) A^T B^T); the backward adds into dA, dB and x.grad. */
export async function linear(
  tape: Tape,
  enc: Encoder,
  x: Tensor,
  layer: Linear,
  label: string,
  dropoutSeed = 0,
): Promise<Tensor> {
  const T = x.shape[0];
  const y = tape.tensor([T, layer.out], "f16", label);
  const lora = layer.lora;
  if (!lora) {
    await baseProduct(enc, layer, "fwd", x.buffer, y.buffer, T, 0);
    tape.record(label, async (enc) => {
      if (!y.grad) return;
      await tape.accumulateGrad(
        enc,
        x,
        true,
        (dst, acc) => baseProduct(enc, layer, "dx", y.grad!.buffer, dst.buffer, T, acc ? 1 : 0),
      );
    });
    return y;
  }
  const shape = {
    T,
    in: layer.in,
    out: layer.out,
    R: lora.R,
    scale: lora.scale,
    dropout: lora.dropout > 0 ? { p: lora.dropout, seed: dropoutSeed } : undefined,
  };
  const u = tape.recording
    ? tape.tensor([T, lora.R], "f16", `${label}.u`)
    : tape.scratch([T, lora.R], "f16", "u");
  const xd = lora.dropout > 0 ? tape.scratch([T, layer.in], "f16", `${label}.xd`).buffer : undefined;
  await loraForward(enc, {
    ...shape,
    x: x.buffer,
    base: layer.base,
    a16: lora.a16,
    b16: lora.b16,
    u: u.buffer,
    xd,
    y: y.buffer,
    yType: "f16",
  });
  tape.record(label, async (enc) => {
    if (!y.grad) return;
    const du = tape.scratch([T, lora.R], "f16", `${label}.du`);
    const drop = lora.dropout > 0;
    const xd = drop ? tape.scratch([T, layer.in], "f16", `${label}.xd`).buffer : undefined;
    const g = drop ? tape.scratch([T, layer.in], "f32", `${label}.g`).buffer : undefined;
    await tape.accumulateGrad(enc, x, true, (dst, acc) =>
      loraBackward(enc, {
        ...shape,
        x: x.buffer,
        dy: y.grad!.buffer,
        base: layer.base,
        a16: lora.a16,
        b16: lora.b16,
        u: u.buffer,
        du: du.buffer,
        xd,
        g,
        dA: lora.dA,
        dB: lora.dB,
        accumulate: true,
        dx: dst.buffer,
        dxType: "f16",
        accumulateDx: acc,
      }));
  });
  return y;
}

async function baseProduct(
  enc: Encoder,
  layer: Linear,
  mode: "fwd" | "dx",
  x: Binding,
  y: Binding,
  T: number,
  beta: number,
): Promise<void> {
  if (layer.base.kind === "nf4") {
    await nf4Matmul(enc, { x, w: layer.base.w, y, T, mode, out: "f16", beta });
  } else if (mode === "fwd") {
    await matmul(enc, {
      a: x,
      b: layer.base.w,
      c: y,
      M: T,
      N: layer.out,
      K: layer.in,
      layout: "nt",
      out: "f16",
      beta,
    });
  } else {
    await matmul(enc, {
      a: x,
      b: layer.base.w,
      c: y,
      M: T,
      N: layer.in,
      K: layer.out,
      layout: "nn",
      out: "f16",
      beta,
    });
  }
}

/** RMSNorm with a frozen f16 weight [C]: y = x * rstd * w. */
export async function rmsnorm(
  tape: Tape,
  enc: Encoder,
  x: Tensor,
  w: GPUBuffer,
  eps: number,
  label: string,
): Promise<Tensor> {
  const [T, C] = x.shape;
  const y = tape.tensor([T, C], "f16", label);
  const rstd = tape.recording ? tape.tensor([T], "f32", `${label}.rstd`) : tape.scratch([T], "f32", "rstd");
  await rmsnormForward(enc, { x: x.buffer, w, y: y.buffer, rstd: rstd.buffer, T, C, eps });
  tape.record(label, async (enc) => {
    if (!y.grad) return;
    await tape.accumulateGrad(enc, x, true, (dst, acc) =>
      rmsnormBackward(enc, {
        dy: y.grad!.buffer,
        x: x.buffer,
        w,
        rstd: rstd.buffer,
        dx: dst.buffer,
        T,
        C,
        accumulate: acc,
      }));
  });
  return y;
}

/** Rotary embedding of x [T, heads, D] (given as [T, heads * D]) at the positions u32 [T]. */
export async function rope(
  tape: Tape,
  enc: Encoder,
  x: Tensor,
  heads: number,
  D: number,
  positions: GPUBuffer,
  invFreq: GPUBuffer,
  label: string,
): Promise<Tensor> {
  const T = x.shape[0];
  const y = tape.tensor(x.shape, "f16", label);
  await ropeForward(enc, { x: x.buffer, out: y.buffer, positions, invFreq, T, heads, D });
  tape.record(label, async (enc) => {
    if (!y.grad) return;
    await tape.accumulateGrad(
      enc,
      x,
      false,
      (dst) => ropeBackward(enc, { x: y.grad!.buffer, out: dst.buffer, positions, invFreq, T, heads, D }),
    );
  });
  return y;
}

/** Causal GQA flash attention: q [T, H*D], k, v [T, KVH*D] -> o [T, H*D]. */
export async function attention(
  tape: Tape,
  enc: Encoder,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  H: number,
  KVH: number,
  D: number,
  label: string,
): Promise<Tensor> {
  const T = q.shape[0];
  const o = tape.tensor([T, H * D], "f16", label);
  const lse = tape.recording
    ? tape.tensor([H, T], "f32", `${label}.lse`)
    : tape.scratch([H, T], "f32", "lse");
  const shape = { T, H, KVH, D, causal: true };
  await flashAttentionForward(enc, {
    ...shape,
    q: q.buffer,
    k: k.buffer,
    v: v.buffer,
    o: o.buffer,
    lse: lse.buffer,
  });
  tape.record(label, async (enc) => {
    if (!o.grad) return;
    const delta = tape.scratch([flashAttentionDeltaBytes(shape) / 4], "f32", `${label}.delta`);
    // dq, dk, dv are written whole; q, k, v take no other gradient, so they are written directly.
    const dq = q.grad ? tape.scratch(q.shape, "f16", "dq") : undefined;
    const dk = k.grad ? tape.scratch(k.shape, "f16", "dk") : undefined;
    const dv = v.grad ? tape.scratch(v.shape, "f16", "dv") : undefined;
    for (const [t, part] of [[q, dq], [k, dk], [v, dv]] as const) {
      if (!part) t.grad = tape.tensor(t.shape, "f16", `${t.label}.grad`);
    }
    await flashAttentionBackward(enc, {
      ...shape,
      q: q.buffer,
      k: k.buffer,
      v: v.buffer,
      o: o.buffer,
      lse: lse.buffer,
      dO: o.grad.buffer,
      dq: (dq ?? q.grad!).buffer,
      dk: (dk ?? k.grad!).buffer,
      dv: (dv ?? v.grad!).buffer,
      delta: delta.buffer,
    });
    for (const [t, part] of [[q, dq], [k, dk], [v, dv]] as const) {
      if (part) await residualAdd(enc, { a: t.grad!.buffer, b: part.buffer, n: t.numel });
    }
  });
  return o;
}

/** h = silu(g) * u, all [T, I]. */
export async function swiglu(tape: Tape, enc: Encoder, g: Tensor, u: Tensor, label: string): Promise<Tensor> {
  const h = tape.tensor(g.shape, "f16", label);
  const n = g.numel;
  await swigluForward(enc, { g: g.buffer, u: u.buffer, h: h.buffer, n });
  tape.record(label, async (enc) => {
    if (!h.grad) return;
    if (!g.grad && !u.grad) {
      g.grad = tape.tensor(g.shape, "f16", `${g.label}.grad`);
      u.grad = tape.tensor(u.shape, "f16", `${u.label}.grad`);
      await swigluBackward(enc, {
        dh: h.grad.buffer,
        g: g.buffer,
        u: u.buffer,
        dg: g.grad.buffer,
        du: u.grad.buffer,
        n,
      });
      return;
    }
    const dg = tape.scratch(g.shape, "f16", "dg");
    const du = tape.scratch(u.shape, "f16", "du");
    await swigluBackward(enc, {
      dh: h.grad.buffer,
      g: g.buffer,
      u: u.buffer,
      dg: dg.buffer,
      du: du.buffer,
      n,
    });
    for (const [t, part] of [[g, dg], [u, du]] as const) {
      await tape.accumulateGrad(enc, t, false, (dst) => {
        enc.copy(part.buffer, 0, dst.buffer, 0, part.bytes);
        return Promise.resolve();
      });
    }
  });
  return h;
}

/** out = a + b (the residual stream); both inputs receive the output's gradient. */
export async function add(tape: Tape, enc: Encoder, a: Tensor, b: Tensor, label: string): Promise<Tensor> {
  const out = tape.tensor(a.shape, "f16", label);
  await residualAdd(enc, { a: a.buffer, b: b.buffer, out: out.buffer, n: a.numel });
  tape.record(label, async (enc) => {
    if (!out.grad) return;
    for (const t of [a, b]) {
      await tape.accumulateGrad(enc, t, false, (dst) => {
        enc.copy(out.grad!.buffer, 0, dst.buffer, 0, out.grad!.bytes);
        return Promise.resolve();
      });
    }
  });
  return out;
}
