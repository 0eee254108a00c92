// The one launcher of rotary position embedding (rotate-half form, Hugging Face Llama layout),
// forward and backward, in place or out of place, plus the llama3 frequency table.
//
// Dimension letters: T tokens, H query heads, KVH key/value heads, D head dim (a multiple of 4).
//   q: f16 [T, H, D]   k: f16 [T, KVH, D]   positions: u32 [T]   invFreq: f32 [D/2]
// One launch rotates one tensor; call it for q (heads = H) and for k (heads = KVH). Positions are
// per token, so packed and offset sequences work; the angle is exact for positions below 2^17.
//
// The frequencies are computed on the CPU in float64 (ropeInvFreq, llama3 scaling as in
// transformers' _compute_llama3_parameters) and uploaded once as f32; cos and sin are evaluated
// in f32 in the kernel from the exact angle position * invFreq[i].

import { type Binding, bindingBytes, type Encoder } from "../../engine/encoder.ts";
import { elementwiseGrid } from "../elementwise/elementwise.ts";
import ropeCode from "./rope.wgsl" with { type: "text" };

const SHADER = { file: "kernels/rope/rope.wgsl", code: ropeCode };
/** Heads one invocation rotates (HEADS_PER_THREAD in the shader). */
const HEADS_PER_THREAD = 4;

/** rope_scaling of type "llama3" from config.json. */
export interface Llama3RopeScaling {
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

/** Llama-3.1's rope_scaling (8B, 70B, 405B). */
export const LLAMA31_ROPE_SCALING: Llama3RopeScaling = {
  factor: 8,
  lowFreqFactor: 1,
  highFreqFactor: 4,
  originalMaxPositionEmbeddings: 8192,
};

/** inv_freq[i] = 1 / theta^(2i/D) for i < D/2, with llama3 scaling where given: wavelengths
 * 2*pi/inv_freq shorter than orig/high_freq_factor keep their frequency, longer than
 * orig/low_freq_factor are divided by factor, and those between are blended with
 * s = (orig/wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor). Float64, then f32. */
export function ropeInvFreq(D: number, theta: number, scaling?: Llama3RopeScaling): Float32Array {
  if (!Number.isInteger(D) || D <= 0 || D % 2 !== 0) {
    throw new RangeError(`ropeInvFreq: head dim D = ${D} must be a positive even number`);
  }
  if (!(theta > 1)) throw new RangeError(`ropeInvFreq: rope_theta = ${theta} must be > 1`);
  const out = new Float32Array(D / 2);
  for (let i = 0; i < D / 2; i++) {
    let f = 1 / theta ** ((2 * i) / D);
    if (scaling) {
      const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: orig } = scaling;
      const wavelen = (2 * Math.PI) / f;
      const lowWavelen = orig / lowFreqFactor;
      const highWavelen = orig / highFreqFactor;
      if (wavelen > lowWavelen) f = f / factor;
      else if (wavelen >= highWavelen) {
        const s = (orig / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
        f = (1 - s) * (f / factor) + s * f;
      }
    }
    out[i] = f;
  }
  return out;
}

export interface RopeArgs {
  /** f16 [T, heads, D]. */
  x: Binding;
  /** f16 [T, heads, D]; absent: x is rotated in place. Must not be x. */
  out?: Binding;
  /** Elements of `out` before the result (a multiple of 2): e.g. a KV-cache row. */
  outOffset?: number;
  /** u32 [T]: position of each token (below 2^17 for an exact angle). */
  positions: Binding;
  /** f32 [D/2]: from ropeInvFreq. */
  invFreq: Binding;
  T: number;
  /** H for q, KVH for k. */
  heads: number;
  D: number;
}

async function launch(enc: Encoder, args: RopeArgs, dir: number, what: string): Promise<void> {
  const { T, heads, D } = args;
  for (const [name, v] of [["T", T], ["heads", heads]] as const) {
    if (!Number.isInteger(v) || v < 0) {
      throw new RangeError(`${what}: ${name} = ${v} must be a whole number >= 0`);
    }
  }
  if (!Number.isInteger(D) || D <= 0 || D % 4 !== 0) {
    throw new RangeError(`${what}: head dim D = ${D} must be a positive multiple of 4`);
  }
  const outOffset = args.outOffset ?? 0;
  if (outOffset !== 0) {
    if (!args.out) throw new RangeError(`${what}: outOffset needs an out buffer`);
    if (!Number.isInteger(outOffset) || outOffset < 0 || outOffset % 2 !== 0) {
      throw new RangeError(`${what}: outOffset = ${outOffset} must be an even whole number`);
    }
  }
  if (args.out && bindingBytes(args.out) < (outOffset + T * heads * D) * 2) {
    throw new RangeError(
      `${what}: out has ${bindingBytes(args.out)} bytes; ${outOffset} + ${T}x${heads}x${D} f16 need ` +
        `${(outOffset + T * heads * D) * 2}`,
    );
  }
  const pipeline = await enc.gpu.pipelines.get({
    shader: SHADER,
    entry: args.out ? "out_of_place" : "inplace",
  });
  const params = new ArrayBuffer(32);
  new Uint32Array(params, 0, 3).set([T, heads, D]);
  new Float32Array(params, 12, 1)[0] = dir;
  new Uint32Array(params, 16, 1)[0] = outOffset / 2;
  const buffers = [args.x, args.positions, args.invFreq];
  if (args.out) buffers.push(args.out);
  enc.dispatch(
    pipeline,
    new Uint8Array(params),
    buffers,
    elementwiseGrid(enc.gpu.caps, T * Math.ceil(heads / HEADS_PER_THREAD) * (D / 4)),
  );
}

/** (cos, sin) of position * invFreq[i] for each frequency i, as f32 pairs [D/2][2]: the angles of one
 * position, taken exactly (the f32 frequency times an integer position in float64), for kernels
 * that rotate a single token (matvec's rope entry). */
export function ropeRotation(invFreq: Float32Array, position: number): Float32Array {
  if (!Number.isInteger(position) || position < 0) {
    throw new RangeError(`ropeRotation: position = ${position} must be a whole number >= 0`);
  }
  const out = new Float32Array(invFreq.length * 2);
  for (let i = 0; i < invFreq.length; i++) {
    const a = position * invFreq[i];
    out[2 * i] = Math.cos(a);
    out[2 * i + 1] = Math.sin(a);
  }
  return out;
}

/** y = x * cos + rotate_half(x) * sin for each token's position. */
export function ropeForward(enc: Encoder, args: RopeArgs): Promise<void> {
  return launch(enc, args, 1, "ropeForward");
}

/** The gradient of ropeForward: rotation of dy by the negative angle (x = dy, out = dx). */
export function ropeBackward(enc: Encoder, args: RopeArgs): Promise<void> {
  return launch(enc, args, -1, "ropeBackward");
}
