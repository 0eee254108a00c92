// The one launcher of the optim family: AdamW with f32 states (torch order or bitsandbytes order
// of the weight decay), AdamW with 8-bit blockwise states (bitsandbytes), and the gradient
// bookkeeping of a mixed-precision step: loss-scale removal, global L2 norm with a non-finite
// flag, and clipping by that norm read on the GPU.
//
// Dimension letters: N elements of one parameter tensor (flat).
//   param, grad, m, v   f32 [N]
//   8-bit state          m, v codes u8 [N] (padded to 4 bytes), absmax f32 [ceil(N / 256)] each
//   stats                8 bytes { norm f32, nonfinite u32 } (GRAD_STATS_BYTES)

import { createBuffer, releaseBuffer, upload } from "../../engine/buffers.ts";
import type { Binding, Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import adamwCode from "./adamw.wgsl" with { type: "text" };
import adamw8bitCode from "./adamw8bit.wgsl" with { type: "text" };
import partialCode from "./grad_stats_partial.wgsl" with { type: "text" };
import finalCode from "./grad_stats_final.wgsl" with { type: "text" };
import clipCode from "./grad_clip.wgsl" with { type: "text" };
import unscaleCode from "./grad_unscale.wgsl" with { type: "text" };

const ADAMW = { file: "kernels/optim/adamw.wgsl", code: adamwCode };
const ADAMW8BIT = { file: "kernels/optim/adamw8bit.wgsl", code: adamw8bitCode };
const STATS_PARTIAL = { file: "kernels/optim/grad_stats_partial.wgsl", code: partialCode };
const STATS_FINAL = { file: "kernels/optim/grad_stats_final.wgsl", code: finalCode };
const CLIP = { file: "kernels/optim/grad_clip.wgsl", code: clipCode };
const UNSCALE = { file: "kernels/optim/grad_unscale.wgsl", code: unscaleCode };

/** Elements per 8-bit state block (one absmax each). */
export const ADAMW8BIT_BLOCK = 256;
/** Blocks per workgroup of the 8-bit step (BLOCKS_PER_WG in adamw8bit.wgsl). */
const ADAMW8BIT_BLOCKS_PER_GROUP = 16;
/** Tensors with fewer elements keep f32 states (bitsandbytes' min_8bit_size). */
export const ADAMW8BIT_MIN_SIZE = 4096;
/** Bytes of the gradient statistics buffer: { norm: f32, nonfinite: u32 }. */
export const GRAD_STATS_BYTES = 8;
/** Most workgroups of the first statistics pass per tensor. */
const STATS_MAX_GROUPS = 1024;

// ---------------------------------------------------------------------------------------------
// Dynamic quantization maps

/** bitsandbytes' create_dynamic_map(signed, max_exponent_bits = 7, total_bits = 8), in f32 as torch
 * computes it. Signed: for i = 0..6 the 2^i midpoints of linspace(0.1, 1, 2^i + 1) times 10^(i-6),
 * both signs; unsigned: the 2^(i+1) midpoints of linspace(0.1, 1, 2^(i+1) + 1), positive only;
 * then 0 and 1, sorted. `vectorWidth` follows torch.linspace's CPU kernel: 0 computes every
 * element as start + step * i (first half) or end - step * (steps - 1 - i) (second half); 8 or 16
 * (AVX2 or AVX-512 builds) compute runs of that many as base + k * step, which moves some
 * entries by one f32 ulp. */
export function createDynamicMap(signed: boolean, { vectorWidth = 0 }: { vectorWidth?: 0 | 8 | 16 } = {}) {
  const f = Math.fround;
  const linspace = (start: number, end: number, steps: number): number[] => {
    start = f(start);
    end = f(end);
    const step = f(f(end - start) / (steps - 1));
    const half = Math.floor(steps / 2);
    const at = (i: number) => i < half ? f(start + f(step * i)) : f(end - f(step * (steps - i - 1)));
    const out: number[] = [];
    let i = 0;
    if (vectorWidth > 0) {
      for (; i <= steps - 2 * vectorWidth; i += vectorWidth) {
        const base = at(i);
        for (let k = 0; k < vectorWidth; k++) out.push(f(base + f(k * step)));
      }
    }
    for (; i < steps; i++) out.push(at(i));
    return out;
  };
  const data: number[] = [];
  for (let i = 0; i < 7; i++) {
    const items = signed ? 2 ** i + 1 : 2 ** (i + 1) + 1;
    const b = linspace(0.1, 1, items);
    const scale = f(10 ** (i - 6));
    for (let k = 0; k + 1 < b.length; k++) {
      const mean = f(f(b[k] + b[k + 1]) / 2);
      data.push(f(scale * mean));
      if (signed) data.push(f(-scale * mean));
    }
  }
  data.push(0, 1);
  if (data.length !== 256) throw new Error(`dynamic map has ${data.length} entries, expected 256`);
  return Float32Array.from(data.sort((a, b) => a - b));
}

const mapBuffers = new WeakMap<Gpu, GPUBuffer>();

/** The signed then the unsigned dynamic map, f32 [512], uploaded once per device. */
export function dynamicMapsBuffer(gpu: Gpu): GPUBuffer {
  let buf = mapBuffers.get(gpu);
  if (!buf) {
    const maps = new Float32Array(512);
    maps.set(createDynamicMap(true), 0);
    maps.set(createDynamicMap(false), 256);
    buf = upload(gpu, maps, "optimizer", "adamw8bit.maps");
    mapBuffers.set(gpu, buf);
  }
  return buf;
}

// ---------------------------------------------------------------------------------------------
// AdamW

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step count, for the bias corrections. */
  step: number;
}

/** Trainer defaults: betas (0.9, 0.999), eps 1e-8. */
export const ADAMW_DEFAULTS = { beta1: 0.9, beta2: 0.999, eps: 1e-8 } as const;

function checkHyper(h: AdamWHyper): void {
  if (!Number.isInteger(h.step) || h.step < 1) {
    throw new RangeError(`AdamW step ${h.step} must be an integer >= 1 (the count of this update)`);
  }
  for (const [k, v] of Object.entries(h)) {
    if (!Number.isFinite(v)) throw new RangeError(`AdamW ${k} = ${v} must be finite`);
  }
  if (!(h.beta1 >= 0 && h.beta1 < 1 && h.beta2 >= 0 && h.beta2 < 1)) {
    throw new RangeError(`AdamW betas (${h.beta1}, ${h.beta2}) must lie in [0, 1)`);
  }
}

/** 2D grid of `groups` workgroups (x then y) within the per-dimension limit. */
function grid(gpu: Gpu, groups: number): [number, number] {
  const max = gpu.caps.limits.maxComputeWorkgroupsPerDimension;
  const x = Math.max(1, Math.min(groups, max));
  return [x, Math.ceil(groups / x)];
}

function checkN(n: number, what: string): void {
  if (!Number.isInteger(n) || n <= 0) {
    throw new RangeError(`${what}: element count ${n} must be a positive integer`);
  }
}

export interface AdamWArgs {
  /** f32 [N], updated in place. */
  param: Binding;
  /** f32 [N]. */
  grad: Binding;
  /** f32 [N] each, updated in place; zeros before the first step. */
  m: Binding;
  v: Binding;
  n: number;
  hyper: AdamWHyper;
  /** "torch": p *= 1 - lr wd before the Adam update (torch.optim.AdamW); "bitsandbytes": after it
   * (bitsandbytes' 32-bit state, used by adamw8bit for small tensors). */
  order?: "torch" | "bitsandbytes";
}

/** Encodes one AdamW step on f32 states. */
export async function adamw(enc: Encoder, args: AdamWArgs): Promise<void> {
  checkN(args.n, "adamw");
  const h = args.hyper;
  checkHyper(h);
  const c1 = 1 - h.beta1 ** h.step;
  const c2 = Math.sqrt(1 - h.beta2 ** h.step);
  const pipeline = await enc.gpu.pipelines.get({ shader: ADAMW });
  const params = new ArrayBuffer(40);
  new Uint32Array(params, 0, 2).set([args.n, args.order === "bitsandbytes" ? 1 : 0]);
  new Float32Array(params, 8, 8).set([
    h.beta1,
    h.beta2,
    1 - h.beta1,
    1 - h.beta2,
    h.eps,
    h.lr / c1,
    c2,
    1 - h.lr * h.weightDecay,
  ]);
  enc.dispatch(
    pipeline,
    new Uint8Array(params),
    [args.param, args.grad, args.m, args.v],
    grid(enc.gpu, Math.ceil(args.n / 256)),
  );
}

// ---------------------------------------------------------------------------------------------
// AdamW 8-bit

/** Optimizer state of one tensor: 8-bit blockwise codes, or f32 for tensors under 4096 elements. */
export interface AdamW8bitState {
  n: number;
  /** True: m and v are u8 codes with absmax per block; false: m and v are f32 [N]. */
  quantized: boolean;
  m: GPUBuffer;
  v: GPUBuffer;
  /** f32 [ceil(N / 256)] (quantized only). */
  absmaxM?: GPUBuffer;
  absmaxV?: GPUBuffer;
  destroy(): void;
}

/** A zero state (every code and absmax 0, as bitsandbytes initializes it). */
export function createAdamW8bitState(gpu: Gpu, n: number, label = "adamw8bit"): AdamW8bitState {
  checkN(n, "createAdamW8bitState");
  const zero = (bytes: number, name: string) => {
    const buf = createBuffer(gpu, bytes, "optimizer", `${label}.${name}`);
    writeZeros(gpu, buf);
    return buf;
  };
  if (n < ADAMW8BIT_MIN_SIZE) {
    const m = zero(n * 4, "m");
    const v = zero(n * 4, "v");
    return { n, quantized: false, m, v, destroy: () => [m, v].forEach(releaseBuffer) };
  }
  const blocks = Math.ceil(n / ADAMW8BIT_BLOCK);
  const m = zero(n, "m");
  const v = zero(n, "v");
  const absmaxM = zero(blocks * 4, "absmaxM");
  const absmaxV = zero(blocks * 4, "absmaxV");
  return {
    n,
    quantized: true,
    m,
    v,
    absmaxM,
    absmaxV,
    destroy: () => [m, v, absmaxM, absmaxV].forEach(releaseBuffer),
  };
}

function writeZeros(gpu: Gpu, buf: GPUBuffer): void {
  const chunk = new Uint8Array(Math.min(buf.size, 1 << 24));
  for (let off = 0; off < buf.size; off += chunk.byteLength) {
    gpu.device.queue.writeBuffer(buf, off, chunk, 0, Math.min(chunk.byteLength, buf.size - off));
  }
}

export interface AdamW8bitArgs {
  /** f32 [N], updated in place. */
  param: Binding;
  /** f32 [N]. */
  grad: Binding;
  state: AdamW8bitState;
  hyper: AdamWHyper;
}

/** Encodes one bitsandbytes-style AdamW 8-bit step (weight decay after the update). */
export async function adamw8bit(enc: Encoder, args: AdamW8bitArgs): Promise<void> {
  const { state: s, hyper: h } = args;
  if (!s.quantized) {
    await adamw(enc, {
      param: args.param,
      grad: args.grad,
      m: s.m,
      v: s.v,
      n: s.n,
      hyper: h,
      order: "bitsandbytes",
    });
    return;
  }
  checkHyper(h);
  const c1 = 1 - h.beta1 ** h.step;
  const c2 = Math.sqrt(1 - h.beta2 ** h.step);
  const pipeline = await enc.gpu.pipelines.get({ shader: ADAMW8BIT });
  const params = new ArrayBuffer(24);
  new Uint32Array(params, 0, 1)[0] = s.n;
  new Float32Array(params, 4, 5).set([
    h.beta1,
    h.beta2,
    (-h.lr * c2) / c1,
    c2 * h.eps,
    1 - h.lr * h.weightDecay,
  ]);
  enc.dispatch(
    pipeline,
    new Uint8Array(params),
    [args.param, args.grad, s.m, s.v, s.absmaxM!, s.absmaxV!, dynamicMapsBuffer(enc.gpu)],
    grid(enc.gpu, Math.ceil(s.n / ADAMW8BIT_BLOCK / ADAMW8BIT_BLOCKS_PER_GROUP)),
  );
}

// ---------------------------------------------------------------------------------------------
// Gradient statistics, clipping, loss-scale removal

/** One f32 gradient tensor of N elements. */
export interface GradTensor {
  buffer: Binding;
  n: number;
}

function statsGroups(n: number): number {
  return Math.min(STATS_MAX_GROUPS, Math.ceil(n / (256 * 4)));
}

/** Bytes of the partials workspace that gradStats needs for these tensors. */
export function gradStatsWorkspaceBytes(grads: readonly GradTensor[]): number {
  return Math.max(8, grads.reduce((s, g) => s + statsGroups(g.n), 0) * 8);
}

export interface GradStatsArgs {
  grads: readonly GradTensor[];
  /** Workspace of gradStatsWorkspaceBytes(grads) bytes. */
  partials: GPUBuffer;
  /** GRAD_STATS_BYTES: { global L2 norm f32, 1 if any gradient element is inf or NaN u32 }. */
  stats: Binding;
}

/** Encodes the global L2 norm of all gradients and the non-finite flag: two passes, f32 partial
 * sums per workgroup, a fixed summation order. */
export async function gradStats(enc: Encoder, args: GradStatsArgs): Promise<void> {
  if (args.grads.length === 0) throw new RangeError("gradStats: no gradient tensors given");
  const need = gradStatsWorkspaceBytes(args.grads);
  if (args.partials.size < need) {
    throw new RangeError(`gradStats: partials buffer has ${args.partials.size} bytes, needs ${need}`);
  }
  const partial = await enc.gpu.pipelines.get({ shader: STATS_PARTIAL });
  const final = await enc.gpu.pipelines.get({ shader: STATS_FINAL });
  let offset = 0;
  for (const g of args.grads) {
    checkN(g.n, "gradStats");
    const groups = statsGroups(g.n);
    enc.dispatch(partial, new Uint32Array([g.n, offset]), [g.buffer, args.partials], [groups]);
    offset += groups;
  }
  enc.dispatch(final, new Uint32Array([offset]), [args.partials, args.stats], [1]);
}

/** Encodes grad *= min(1, maxNorm / (norm + 1e-6)) for every tensor, the norm read from `stats`. */
export async function gradClip(
  enc: Encoder,
  args: { grads: readonly GradTensor[]; stats: Binding; maxNorm: number },
): Promise<void> {
  if (!(args.maxNorm > 0)) throw new RangeError(`gradClip: maxNorm ${args.maxNorm} must be positive`);
  const pipeline = await enc.gpu.pipelines.get({ shader: CLIP });
  for (const g of args.grads) {
    checkN(g.n, "gradClip");
    const params = new ArrayBuffer(8);
    new Uint32Array(params, 0, 1)[0] = g.n;
    new Float32Array(params, 4, 1)[0] = args.maxNorm;
    enc.dispatch(
      pipeline,
      new Uint8Array(params),
      [args.stats, g.buffer],
      grid(enc.gpu, Math.ceil(g.n / 256)),
    );
  }
}

/** Encodes grad *= 1 / lossScale for every tensor. */
export async function gradUnscale(
  enc: Encoder,
  args: { grads: readonly GradTensor[]; lossScale: number },
): Promise<void> {
  if (!(args.lossScale > 0) || !Number.isFinite(args.lossScale)) {
    throw new RangeError(`gradUnscale: lossScale ${args.lossScale} must be positive and finite`);
  }
  const pipeline = await enc.gpu.pipelines.get({ shader: UNSCALE });
  for (const g of args.grads) {
    checkN(g.n, "gradUnscale");
    const params = new ArrayBuffer(8);
    new Uint32Array(params, 0, 1)[0] = g.n;
    new Float32Array(params, 4, 1)[0] = 1 / args.lossScale;
    enc.dispatch(pipeline, new Uint8Array(params), [g.buffer], grid(enc.gpu, Math.ceil(g.n / 256)));
  }
}
