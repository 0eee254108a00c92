// The one launcher of the SwiGLU gate of the Llama MLP: h = silu(g) * u and its backward, with
// silu recomputed from g in the backward.
//
// Dimension letters: T tokens, I intermediate size; the kernels see the flat n = T * I (any n).
//   g, u, h, dh, dg, du: f16 [T, I], separate buffers.

import type { Binding, Encoder } from "../../engine/encoder.ts";
import { elementwiseGrid } from "../elementwise/elementwise.ts";
import swigluCode from "./swiglu.wgsl" with { type: "text" };

const SHADER = { file: "kernels/swiglu/swiglu.wgsl", code: swigluCode };

function checkCount(what: string, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`${what}: n = ${n} must be a whole number >= 0`);
}

export interface SwigluForwardArgs {
  /** f16 [T, I]: gate projection. */
  g: Binding;
  /** f16 [T, I]: up projection. */
  u: Binding;
  /** f16 [T, I]. */
  h: Binding;
  /** T * I. */
  n: number;
}

/** h = silu(g) * u, in f32, rounded once to f16. */
export async function swigluForward(enc: Encoder, args: SwigluForwardArgs): Promise<void> {
  checkCount("swigluForward", args.n);
  const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry: "forward" });
  enc.dispatch(
    pipeline,
    new Uint32Array([args.n, 0, 0, 0]),
    [args.g, args.u, args.h],
    elementwiseGrid(enc.gpu.caps, Math.ceil(args.n / 2)),
  );
}

export interface SwigluBackwardArgs {
  /** f16 [T, I]: gradient of h. */
  dh: Binding;
  /** f16 [T, I]: the forward's g and u. */
  g: Binding;
  u: Binding;
  /** f16 [T, I]: gradients of g and u. */
  dg: Binding;
  du: Binding;
  n: number;
}

/** du = dh * silu(g), dg = dh * u * s * (1 + g * (1 - s)) with s = sigmoid(g); f32 inside. */
export async function swigluBackward(enc: Encoder, args: SwigluBackwardArgs): Promise<void> {
  checkCount("swigluBackward", args.n);
  const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry: "backward" });
  enc.dispatch(
    pipeline,
    new Uint32Array([args.n, 0, 0, 0]),
    [args.dh, args.g, args.u, args.dg, args.du],
    elementwiseGrid(enc.gpu.caps, Math.ceil(args.n / 2)),
  );
}
