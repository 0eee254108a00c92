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
import {
  type Binding,
  bindingBytes,
  bufferBytes,
  type Encoder,
  workgroupGrid,
} from "../../engine/encoder.ts";
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
/** Blocks per workgroup of the 8-bit step (BLOCKS in adamw8bit.wgsl). */
const ADAMW8BIT_BLOCKS_PER_GROUP = 8;
/** Tensors with fewer elements keep f32 states (bitsandbytes' min_8bit_size). */
export const ADAMW8BIT_MIN_SIZE = 4096;
/** Bytes of the gradient statistics buffer: { norm: f32, nonfinite: u32 }. */
export const GRAD_STATS_BYTES = 8;
/** Most workgroups of the first statistics pass per tensor: many per multiprocessor, so the
 * grid-stride loop ends in step everywhere. */
const STATS_MAX_GROUPS = 4096;
/** Vectors of 4 elements each invocation loads per step of the statistics pass (UNROLL). */
const STATS_UNROLL = 4;

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

/** Biased f32 exponent of the lowest bucket of the rank tables (2^-22, below every nonzero entry of
 * either map). The launcher passes the table layout to adamw8bit.wgsl as override constants. */
const RANK_LOW_EXPONENT = 105;
/** Buckets of a rank table: 0 for a < 2^-22, then one per f32 exponent and top 7 mantissa bits
 * from 2^-22 up to 1.0 (the bucket that holds 1.0 and anything above it). */
export const RANK_BUCKETS = 2 + (127 - RANK_LOW_EXPONENT) * 128;

/** For each bucket of positive f32 values (see RANK_BUCKETS), how many entries of the map's
 * positive part (entries 0 .. 254 above 0) lie below the bucket's lowest value. Within a bucket
 * lies at most one entry of either map, so for any a in the bucket this count is the exact count
 * below a or one less. */
export function rankTable(map: Float32Array): Uint8Array {
  const table = new Uint8Array(RANK_BUCKETS);
  const bits = new Uint32Array(1);
  const value = new Float32Array(bits.buffer);
  for (let b = 1; b < RANK_BUCKETS; b++) {
    bits[0] = ((RANK_LOW_EXPONENT << 7) + b - 1) << 16;
    let count = 0;
    for (let i = 0; i < 255; i++) if (map[i] > 0 && map[i] < value[0]) count++;
    table[b] = count;
  }
  return table;
}

/** Words of the packed rank tables that follow the two maps in dynamicMapsBuffer. */
export const RANK_TABLE_WORDS = Math.ceil(RANK_BUCKETS / 4);
const RANK_CONSTANTS = { RANK_LOW: RANK_LOW_EXPONENT, RANK_BUCKETS, RANK_WORDS: RANK_TABLE_WORDS };

const mapBuffers = new WeakMap<Gpu, GPUBuffer>();

/** The signed then the unsigned dynamic map (f32 [512]), then their rank tables (u8 [RANK_BUCKETS]
 * each, 4 per u32, each table padded to RANK_TABLE_WORDS words); uploaded once per device. */
export function dynamicMapsBuffer(gpu: Gpu): GPUBuffer {
  let buf = mapBuffers.get(gpu);
  if (!buf) {
    const signed = createDynamicMap(true);
    const unsigned = createDynamicMap(false);
    const data = new Uint32Array(512 + 2 * RANK_TABLE_WORDS);
    const maps = new Float32Array(data.buffer, 0, 512);
    maps.set(signed, 0);
    maps.set(unsigned, 256);
    const tables = new Uint8Array(data.buffer, 512 * 4);
    tables.set(rankTable(signed), 0);
    tables.set(rankTable(unsigned), RANK_TABLE_WORDS * 4);
    buf = upload(gpu, data, "optimizer", "adamw8bit.maps");
    mapBuffers.set(gpu, buf);
  }
  return buf;
}

const noSkipBuffers = new WeakMap<Gpu, GPUBuffer>();

/** GRAD_STATS_BYTES of zeros: the `skipIfNonFinite` binding of an optimizer step that always runs. */
function noSkipBuffer(gpu: Gpu): GPUBuffer {
  let buf = noSkipBuffers.get(gpu);
  if (!buf) {
    buf = upload(gpu, new Uint32Array(4), "optimizer", "optimizer.no_skip");
    noSkipBuffers.set(gpu, buf);
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

function checkN(n: number, what: string): void {
  if (!Number.isInteger(n) || n <= 0) {
    throw new RangeError(`${what}: element count ${n} must be a positive integer`);
  }
}

interface Range {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

function wholeRange(b: Binding): Range {
  return "buffer" in b ? b : { buffer: b, offset: 0, size: bufferBytes(b) };
}

/** The binding as a range, checked to hold `bytes`. */
function checkRange(what: string, name: string, b: Binding, bytes: number): Range {
  const r = wholeRange(b);
  if (r.size < bytes) {
    throw new RangeError(
      `${what}: buffer "${name}" binds ${r.size} bytes but needs ${bytes}; pass a larger buffer or a smaller n`,
    );
  }
  return r;
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
  /** The stats of gradStats: the step changes nothing when they count a non-finite gradient (a
   * loss-scaled step that overflowed), decided on the GPU, so the step needs no read-back first. */
  skipIfNonFinite?: Binding;
}

/** Vectors of 4 elements per invocation of the AdamW f32 and gradient statistics kernels. */
const ADAMW_UNITS = 2;

/** Encodes one AdamW step on f32 states: 16-byte vectors over the first N rounded down to a
 * multiple of 4, and the last N % 4 elements in a second, tiny dispatch. Bindings may be ranges
 * (offsets as WebGPU requires) of at least N floats each. */
export async function adamw(enc: Encoder, args: AdamWArgs): Promise<void> {
  const n = args.n;
  checkN(n, "adamw");
  const h = args.hyper;
  checkHyper(h);
  const ranges = (["param", "grad", "m", "v"] as const).map((k) => checkRange("adamw", k, args[k], n * 4));
  const skip = args.skipIfNonFinite ?? noSkipBuffer(enc.gpu);
  const c1 = 1 - h.beta1 ** h.step;
  const c2 = Math.sqrt(1 - h.beta2 ** h.step);
  const params = (count: number, start: number) => {
    const buf = new ArrayBuffer(48);
    new Uint32Array(buf, 0, 2).set([count, args.order === "bitsandbytes" ? 1 : 0]);
    new Float32Array(buf, 8, 8).set([
      h.beta1,
      h.beta2,
      1 - h.beta1,
      1 - h.beta2,
      h.eps,
      h.lr / c1,
      c2,
      1 - h.lr * h.weightDecay,
    ]);
    new Uint32Array(buf, 40, 1)[0] = start;
    return new Uint8Array(buf);
  };
  const main = n - (n % 4);
  if (main > 0) {
    const pipeline = await enc.gpu.pipelines.get({ shader: ADAMW, entry: "main" });
    enc.dispatch(
      pipeline,
      params(main, 0),
      [...ranges.map((r) => ({ buffer: r.buffer, offset: r.offset, size: main * 4 })), skip],
      workgroupGrid(enc.gpu.caps, Math.ceil(main / 4 / ADAMW_UNITS / 256)),
    );
  }
  if (main < n) {
    const align = enc.gpu.device.limits.minStorageBufferOffsetAlignment;
    const before = Math.floor((main * 4) / align) * align;
    const pipeline = await enc.gpu.pipelines.get({ shader: ADAMW, entry: "tail" });
    enc.dispatch(
      pipeline,
      params(n - main, (main * 4 - before) / 4),
      [...ranges.map((r) => ({ buffer: r.buffer, offset: r.offset + before, size: r.size - before })), skip],
      [1],
    );
  }
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
  /** As AdamWArgs.skipIfNonFinite. */
  skipIfNonFinite?: Binding;
}

/** Encodes one bitsandbytes-style AdamW 8-bit step (weight decay after the update). The main
 * dispatch moves param and grad as 16-byte vectors over the first N rounded down to a multiple of 4
 * (all of N when N % 4 = 0); otherwise a second, one-workgroup dispatch updates the last block with
 * 4-byte loads. param and grad may be ranges (offsets as WebGPU requires) of at least N floats. */
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
      skipIfNonFinite: args.skipIfNonFinite,
    });
    return;
  }
  const skip = args.skipIfNonFinite ?? noSkipBuffer(enc.gpu);
  checkHyper(h);
  const n = s.n;
  const param = checkRange("adamw8bit", "param", args.param, n * 4);
  const grad = checkRange("adamw8bit", "grad", args.grad, n * 4);
  const c1 = 1 - h.beta1 ** h.step;
  const c2 = Math.sqrt(1 - h.beta2 ** h.step);
  const params = (count: number, firstBlock: number) => {
    const buf = new ArrayBuffer(32);
    new Uint32Array(buf, 0, 2).set([count, firstBlock]);
    new Float32Array(buf, 8, 5).set([
      h.beta1,
      h.beta2,
      (-h.lr * c2) / c1,
      c2 * h.eps,
      1 - h.lr * h.weightDecay,
    ]);
    return new Uint8Array(buf);
  };
  const blocks = Math.ceil(n / ADAMW8BIT_BLOCK);
  // Elements of the vector dispatch: all, or all blocks but the last when N % 4 != 0.
  const main = n % 4 === 0 ? n : (blocks - 1) * ADAMW8BIT_BLOCK;
  const maps = dynamicMapsBuffer(enc.gpu);
  const absmax = [s.absmaxM!, s.absmaxV!];
  if (main > 0) {
    const pipeline = await enc.gpu.pipelines.get({
      shader: ADAMW8BIT,
      entry: "main",
      constants: RANK_CONSTANTS,
    });
    enc.dispatch(
      pipeline,
      params(main, 0),
      [
        { buffer: param.buffer, offset: param.offset, size: main * 4 },
        { buffer: grad.buffer, offset: grad.offset, size: main * 4 },
        { buffer: s.m, offset: 0, size: main },
        { buffer: s.v, offset: 0, size: main },
        ...absmax,
        maps,
        skip,
      ],
      workgroupGrid(enc.gpu.caps, Math.ceil(main / ADAMW8BIT_BLOCK / ADAMW8BIT_BLOCKS_PER_GROUP)),
    );
  }
  if (main < n) {
    const pipeline = await enc.gpu.pipelines.get({
      shader: ADAMW8BIT,
      entry: "tail",
      constants: RANK_CONSTANTS,
    });
    const tail = (r: Range, bytes: number) => ({
      buffer: r.buffer,
      offset: r.offset + main * bytes,
      size: r.size - main * bytes,
    });
    enc.dispatch(
      pipeline,
      params(n - main, blocks - 1),
      [
        tail(param, 4),
        tail(grad, 4),
        tail(wholeRange(s.m), 1),
        tail(wholeRange(s.v), 1),
        ...absmax,
        maps,
        skip,
      ],
      [1],
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Gradient statistics, clipping, loss-scale removal

/** One f32 gradient tensor of N elements. */
export interface GradTensor {
  buffer: Binding;
  n: number;
}

/** Workgroups of the vector pass over the first N rounded down to a multiple of 4. */
function statsGroups(n: number): number {
  return Math.min(STATS_MAX_GROUPS, Math.ceil(Math.floor(n / 4) / (256 * STATS_UNROLL)));
}

/** Partial slots of one tensor: the vector pass's workgroups, plus one for the last N % 4. */
function statsSlots(n: number): number {
  return statsGroups(n) + (n % 4 === 0 ? 0 : 1);
}

/** Bytes of the partials workspace that gradStats needs for these tensors. */
export function gradStatsWorkspaceBytes(grads: readonly GradTensor[]): number {
  return Math.max(8, grads.reduce((s, g) => s + statsSlots(g.n), 0) * 8);
}

export interface GradStatsArgs {
  grads: readonly GradTensor[];
  /** Workspace of gradStatsWorkspaceBytes(grads) bytes. */
  partials: GPUBuffer;
  /** GRAD_STATS_BYTES: { global L2 norm f32, 1 if any gradient element is inf or NaN u32 }. */
  stats: Binding;
}

/** Encodes the global L2 norm of all gradients and the non-finite flag: two passes, f32 partial
 * sums per workgroup, a fixed summation order. Gradients are read as 16-byte vectors; the last
 * N % 4 elements of a tensor go to a one-invocation dispatch. */
export async function gradStats(enc: Encoder, args: GradStatsArgs): Promise<void> {
  if (args.grads.length === 0) throw new RangeError("gradStats: no gradient tensors given");
  const need = gradStatsWorkspaceBytes(args.grads);
  if (bindingBytes(args.partials) < need) {
    throw new RangeError(
      `gradStats: partials buffer has ${bindingBytes(args.partials)} bytes, needs ${need}`,
    );
  }
  const final = await enc.gpu.pipelines.get({ shader: STATS_FINAL });
  const align = enc.gpu.device.limits.minStorageBufferOffsetAlignment;
  let offset = 0;
  for (const g of args.grads) {
    checkN(g.n, "gradStats");
    const r = checkRange("gradStats", "grad", g.buffer, g.n * 4);
    const main = g.n - (g.n % 4);
    const groups = statsGroups(g.n);
    if (groups > 0) {
      const partial = await enc.gpu.pipelines.get({ shader: STATS_PARTIAL, entry: "main" });
      enc.dispatch(
        partial,
        new Uint32Array([main, offset, 0, 0]),
        [{ buffer: r.buffer, offset: r.offset, size: main * 4 }, args.partials],
        [groups],
      );
      offset += groups;
    }
    if (main < g.n) {
      const skip = Math.floor((main * 4) / align) * align;
      const tail = await enc.gpu.pipelines.get({ shader: STATS_PARTIAL, entry: "tail" });
      enc.dispatch(
        tail,
        new Uint32Array([g.n - main, offset, (main * 4 - skip) / 4, 0]),
        [{ buffer: r.buffer, offset: r.offset + skip, size: r.size - skip }, args.partials],
        [1],
      );
      offset += 1;
    }
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
      workgroupGrid(enc.gpu.caps, Math.ceil(g.n / 256)),
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
    enc.dispatch(
      pipeline,
      new Uint8Array(params),
      [g.buffer],
      workgroupGrid(enc.gpu.caps, Math.ceil(g.n / 256)),
    );
  }
}
