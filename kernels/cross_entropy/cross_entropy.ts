// The one launcher of the cross_entropy family: lm_head and cross-entropy fused and chunked over
// the vocabulary, so the [T, V] logits never exist. Each chunk's logits come from the matmul
// launcher (f16 x f16 -> f32, tensor cores where the adapter has them) into a [T, chunk] f32
// workspace; a kernel folds them into a running per-row (max, sum of exp) in f32.
//
// Dimension letters: T tokens, C hidden, V vocabulary.
//   hidden  f16 [T, C]      weight f16 [V, C] (lm_head, the layout of a Linear's weight)
//   labels  i32 [T]         -100 marks an ignored token
//   loss    f32 [T]         lse - logit[label]; 0 for ignored tokens
//   lse     f32 [T]         log-sum-exp of each row's logits, kept for the backward
//   totals  8 bytes         { f32 sum of loss over valid tokens, u32 number of valid tokens }
//   dHidden f32 [T, C]      backward output (f32, so a chunked sum over V loses nothing to f16)
// A label outside [0, V) other than -100 gives a NaN loss for its token (and a NaN sum), so a
// broken batch cannot pass unnoticed.

import { createBuffer, destroyBuffer } from "../../engine/buffers.ts";
import { type Binding, bindingBytes, type Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { matmul } from "../matmul/matmul.ts";
import fwdCode from "./cross_entropy_fwd.wgsl" with { type: "text" };
import finalizeCode from "./cross_entropy_finalize.wgsl" with { type: "text" };
import bwdCode from "./cross_entropy_bwd.wgsl" with { type: "text" };

const FWD = { file: "kernels/cross_entropy/cross_entropy_fwd.wgsl", code: fwdCode };
const FINALIZE = { file: "kernels/cross_entropy/cross_entropy_finalize.wgsl", code: finalizeCode };
const BWD = { file: "kernels/cross_entropy/cross_entropy_bwd.wgsl", code: bwdCode };

/** Bytes of the totals buffer: { sum: f32, count: u32 }. */
export const CROSS_ENTROPY_TOTALS_BYTES = 8;
/** Label value of a token that takes no loss. */
export const CROSS_ENTROPY_IGNORE_INDEX = -100;
/** Vocabulary columns per chunk by default: [4096, 8192] f32 logits are 128 MiB. */
export const CROSS_ENTROPY_DEFAULT_CHUNK = 8192;

/** Scratch memory of the chunked loop, reusable across calls with the same T and chunk. */
export interface CrossEntropyWorkspace {
  T: number;
  chunk: number;
  /** f32 [T, chunk]: one chunk's logits. */
  logits: GPUBuffer;
  /** f16 [T, chunk]: one chunk's logit gradient (backward only). */
  dlogits: GPUBuffer;
  /** vec4<f32> [T]: running max, running sum of exp, label logit, label seen. */
  state: GPUBuffer;
  destroy(): void;
}

export function createCrossEntropyWorkspace(
  gpu: Gpu,
  T: number,
  chunk = CROSS_ENTROPY_DEFAULT_CHUNK,
): CrossEntropyWorkspace {
  if (!Number.isInteger(chunk) || chunk <= 0 || chunk % 128 !== 0) {
    throw new RangeError(
      `cross-entropy chunk ${chunk} must be a positive multiple of 128 (weight chunks are bound at offsets ` +
        `that storage-buffer alignment allows); try 8192.`,
    );
  }
  const logits = createBuffer(gpu, T * chunk * 4, "workspace", "cross_entropy.logits");
  const dlogits = createBuffer(gpu, T * chunk * 2, "workspace", "cross_entropy.dlogits");
  const state = createBuffer(gpu, T * 16, "workspace", "cross_entropy.state");
  return {
    T,
    chunk,
    logits,
    dlogits,
    state,
    destroy() {
      // Chunk-sized buffers no other kernel asks for: freed, not pooled.
      destroyBuffer(logits);
      destroyBuffer(dlogits);
      destroyBuffer(state);
    },
  };
}

export interface CrossEntropyForwardArgs {
  /** f16 [T, C]. */
  hidden: Binding;
  /** f16 [V, C]: a whole buffer, bound chunk by chunk. */
  weight: GPUBuffer;
  /** i32 [T]. */
  labels: Binding;
  /** f32 [T]. */
  loss: Binding;
  /** f32 [T]. */
  lse: Binding;
  /** { f32 sum, u32 count } (CROSS_ENTROPY_TOTALS_BYTES). */
  totals: Binding;
  T: number;
  C: number;
  V: number;
  workspace: CrossEntropyWorkspace;
}

export interface CrossEntropyBackwardArgs {
  /** f16 [T, C]. */
  hidden: Binding;
  /** f16 [V, C]. */
  weight: GPUBuffer;
  /** i32 [T]. */
  labels: Binding;
  /** f32 [T] from the forward. */
  lse: Binding;
  /** The forward's totals (its count is read when meanByCount is set). */
  totals: Binding;
  /** f32 [T, C]. */
  dHidden: Binding;
  T: number;
  C: number;
  V: number;
  workspace: CrossEntropyWorkspace;
  /** dLoss of each valid token: e.g. the loss scale (times 1/count, or set meanByCount). */
  scale: number;
  /** Divides scale by the forward's valid-token count on the GPU: the gradient of the mean loss. */
  meanByCount?: boolean;
  /** Adds to dHidden instead of overwriting it. */
  accumulate?: boolean;
}

function checkShapes(
  gpu: Gpu,
  T: number,
  C: number,
  V: number,
  ws: CrossEntropyWorkspace,
  weight: GPUBuffer,
) {
  for (const [name, v] of [["T", T], ["C", C], ["V", V]] as const) {
    if (!Number.isInteger(v) || v <= 0) {
      throw new RangeError(`cross-entropy ${name} = ${v} must be a positive integer`);
    }
  }
  if (ws.T !== T) {
    throw new RangeError(
      `cross-entropy workspace was made for T = ${ws.T}, called with T = ${T}; make one for ${T}`,
    );
  }
  const maxGroups = gpu.caps.limits.maxComputeWorkgroupsPerDimension;
  if (T > maxGroups) {
    throw new RangeError(
      `cross-entropy T = ${T} exceeds ${maxGroups} rows per call on ${gpu.name}; split the batch`,
    );
  }
  const align = gpu.device.limits.minStorageBufferOffsetAlignment;
  if ((ws.chunk * C * 2) % align !== 0) {
    throw new RangeError(
      `cross-entropy chunk ${ws.chunk} x C ${C} x 2 bytes is not a multiple of the ${align}-byte storage offset ` +
        `alignment of ${gpu.name}; use a chunk that is a multiple of ${align / 2}`,
    );
  }
  if (bindingBytes(weight) < V * C * 2) {
    throw new RangeError(
      `cross-entropy weight buffer holds ${bindingBytes(weight)} bytes; [V=${V}, C=${C}] f16 needs ${
        V * C * 2
      }`,
    );
  }
}

/** The rows [v0, v0 + n) of the [V, C] f16 weight as a binding. */
function weightChunk(weight: GPUBuffer, v0: number, n: number, C: number): Binding {
  return { buffer: weight, offset: v0 * C * 2, size: Math.ceil((n * C * 2) / 4) * 4 };
}

/** Encodes logits[T, n] = hidden · W[v0 : v0+n]^T into the workspace. */
async function chunkLogits(
  enc: Encoder,
  hidden: Binding,
  weight: GPUBuffer,
  ws: CrossEntropyWorkspace,
  T: number,
  C: number,
  v0: number,
  n: number,
): Promise<void> {
  await matmul(enc, {
    a: hidden,
    b: weightChunk(weight, v0, n, C),
    c: ws.logits,
    M: T,
    N: n,
    K: C,
    layout: "nt",
    out: "f32",
  });
}

/** Encodes the loss: per-token loss and lse, and the valid-token sum and count. */
export async function crossEntropyForward(enc: Encoder, args: CrossEntropyForwardArgs): Promise<void> {
  const { T, C, V, workspace: ws } = args;
  checkShapes(enc.gpu, T, C, V, ws, args.weight);
  const fwd = await enc.gpu.pipelines.get({ shader: FWD });
  const finalize = await enc.gpu.pipelines.get({ shader: FINALIZE });
  for (let v0 = 0; v0 < V; v0 += ws.chunk) {
    const n = Math.min(ws.chunk, V - v0);
    await chunkLogits(enc, args.hidden, args.weight, ws, T, C, v0, n);
    enc.dispatch(fwd, new Uint32Array([T, n, v0, v0 === 0 ? 1 : 0]), [ws.logits, args.labels, ws.state], [T]);
  }
  const params = new ArrayBuffer(8);
  new Uint32Array(params, 0, 1)[0] = T;
  new Float32Array(params, 4, 1)[0] = NaN;
  enc.dispatch(finalize, new Uint8Array(params), [args.labels, ws.state, args.loss, args.lse, args.totals], [
    1,
  ]);
}

/** Encodes dHidden (+)= sum over chunks of ((softmax - onehot) * scale) · W_chunk. */
export async function crossEntropyBackward(enc: Encoder, args: CrossEntropyBackwardArgs): Promise<void> {
  const { T, C, V, workspace: ws } = args;
  checkShapes(enc.gpu, T, C, V, ws, args.weight);
  if (!Number.isFinite(args.scale)) {
    throw new RangeError(`cross-entropy backward scale ${args.scale} must be finite`);
  }
  const bwd = await enc.gpu.pipelines.get({ shader: BWD });
  for (let v0 = 0; v0 < V; v0 += ws.chunk) {
    const n = Math.min(ws.chunk, V - v0);
    await chunkLogits(enc, args.hidden, args.weight, ws, T, C, v0, n);
    const params = new ArrayBuffer(20);
    new Uint32Array(params, 0, 4).set([T, n, v0, args.meanByCount ? 1 : 0]);
    new Float32Array(params, 16, 1)[0] = args.scale;
    enc.dispatch(
      bwd,
      new Uint8Array(params),
      [ws.logits, args.labels, args.lse, args.totals, ws.dlogits],
      [Math.ceil(n / 256), T],
    );
    await matmul(enc, {
      a: ws.dlogits,
      b: weightChunk(args.weight, v0, n, C),
      c: args.dHidden,
      M: T,
      N: C,
      K: n,
      layout: "nn",
      out: "f32",
      beta: v0 === 0 && !args.accumulate ? 0 : 1,
    });
  }
}
