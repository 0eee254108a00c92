// GPU buffers with byte accounting, uploads and readbacks of f32 / f16 / u8 / u32 / i32 data.
// f16 data travels as Uint16Array bit patterns: Dawn crashes on a Float16Array in writeBuffer.

import type { Gpu } from "./gpu.ts";
import type { MemoryCategory } from "./memory.ts";

export type DType = "f32" | "f16" | "u8" | "u32" | "i32";

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, u8: 1, u32: 4, i32: 4 };

const STORAGE = 0x80 | 0x04 | 0x08; // STORAGE | COPY_SRC | COPY_DST
const MAP_READ_COPY_DST = 0x01 | 0x08;

const accounted = new WeakMap<
  GPUBuffer,
  { gpu: Gpu; category: MemoryCategory; bytes: number; usage: number }
>();

/** Rounds a byte size up to the 4-byte granularity that storage buffers and copies need. */
export function paddedBytes(bytes: number): number {
  return Math.max(4, Math.ceil(bytes / 4) * 4);
}

/** Released storage buffers kept for reuse, by byte size, per Gpu. Creating a large buffer costs the
 * driver a fresh allocation and Dawn a zero fill on first use; a training step creates and frees the
 * same activation sizes in every layer, so reuse keeps that off the critical path. Contents of a
 * reused buffer are undefined, as for any new buffer: kernels write every output element (the
 * kernel tests poison outputs to check). Queue order makes reuse safe once the commands that used a
 * buffer were submitted: its next owner's commands and writes come after them (a buffer released
 * while an encoder is open is held back until then, below). */
const pools = new WeakMap<Gpu, Map<number, GPUBuffer[]>>();

/** Pooled bytes per Gpu above which released buffers are destroyed instead. */
export const BUFFER_POOL_MAX_BYTES = 4 * 2 ** 30;

/** A storage buffer (also copy source and destination) counted in the gpu's memory ledger; storage
 * buffers come from the pool of released ones of the same size when it holds one. */
export function createBuffer(
  gpu: Gpu,
  bytes: number,
  category: MemoryCategory,
  label: string = category,
  usage = STORAGE,
): GPUBuffer {
  const size = paddedBytes(bytes);
  if (size > gpu.caps.limits.maxBufferSize) {
    throw new RangeError(
      `Buffer "${label}" needs ${size} bytes; ${gpu.name} allows at most ${gpu.caps.limits.maxBufferSize}.`,
    );
  }
  const reused = usage === STORAGE ? pools.get(gpu)?.get(size)?.pop() : undefined;
  if (reused) gpu.memory.unpool(size);
  const buffer = reused ?? gpu.device.createBuffer({ size, usage, label });
  accounted.set(buffer, { gpu, category, bytes: size, usage });
  gpu.memory.add(category, size);
  const census = censuses.get(gpu);
  if (census && usage === STORAGE) {
    census.members.add(buffer);
    const now = (census.now.get(size) ?? 0) + 1;
    census.now.set(size, now);
    if (now > (census.most.get(size) ?? 0)) census.most.set(size, now);
  }
  return buffer;
}

/** Per Gpu, while a census is open: the storage buffers made since, how many of each size are in
 * use, and the most of each size in use at once. */
interface Census {
  members: WeakSet<GPUBuffer>;
  now: Map<number, number>;
  most: Map<number, number>;
}
const censuses = new WeakMap<Gpu, Census>();

/** Starts counting the storage buffers `gpu` hands out (closeBufferCensus says how many were in use
 * at once): a pass that will run again learns which pooled buffers its next run takes. */
export function openBufferCensus(gpu: Gpu): void {
  censuses.set(gpu, { members: new WeakSet(), now: new Map(), most: new Map() });
}

/** Ends the census of `gpu`: per size in bytes, the most storage buffers made since it opened that
 * were in use at once. */
export function closeBufferCensus(gpu: Gpu): Map<number, number> {
  const census = censuses.get(gpu);
  censuses.delete(gpu);
  return census?.most ?? new Map();
}

/** Per Gpu: encoders made and not yet submitted (engine/encoder.ts reports them), and the storage
 * buffers released while one was open. Such a buffer may still be named by an unsubmitted
 * encoder, whose commands would run after those of the buffer's next owner (or after its next
 * owner's upload, which the queue runs at once): it joins the pool only once no encoder is open. */
const openEncoders = new WeakMap<Gpu, number>();
const held = new WeakMap<Gpu, GPUBuffer[]>();

/** An encoder of `gpu` was made. */
export function encoderOpened(gpu: Gpu): void {
  openEncoders.set(gpu, (openEncoders.get(gpu) ?? 0) + 1);
}

/** An encoder of `gpu` was submitted: with none open, the held buffers join the pool. */
export function encoderSubmitted(gpu: Gpu): void {
  const open = Math.max(0, (openEncoders.get(gpu) ?? 0) - 1);
  openEncoders.set(gpu, open);
  const list = held.get(gpu);
  if (open === 0 && list?.length) {
    for (const b of list) poolList(gpu, b.size).push(b);
    list.length = 0;
  }
}

function poolList(gpu: Gpu, bytes: number): GPUBuffer[] {
  let pool = pools.get(gpu);
  if (!pool) pools.set(gpu, pool = new Map());
  let list = pool.get(bytes);
  if (!list) pool.set(bytes, list = []);
  return list;
}

/** Takes a buffer made by createBuffer off the ledger and frees it: a storage buffer goes to the
 * pool for reuse (while the pool holds less than BUFFER_POOL_MAX_BYTES; after the submit of the
 * encoders open at the time), any other is destroyed. */
export function releaseBuffer(buffer: GPUBuffer): void {
  release(buffer, true);
}

/** Takes a buffer made by createBuffer off the ledger and destroys it, never pooled: for sizes no
 * later work asks for. */
export function destroyBuffer(buffer: GPUBuffer): void {
  release(buffer, false);
}

function release(buffer: GPUBuffer, reuse: boolean): void {
  const entry = accounted.get(buffer);
  if (!entry) {
    buffer.destroy();
    return;
  }
  accounted.delete(buffer);
  const { gpu, category, bytes, usage } = entry;
  gpu.memory.remove(category, bytes);
  const census = censuses.get(gpu);
  if (census?.members.delete(buffer)) census.now.set(bytes, census.now.get(bytes)! - 1);
  if (reuse && usage === STORAGE && gpu.memory.pooledBytes + bytes <= BUFFER_POOL_MAX_BYTES) {
    if ((openEncoders.get(gpu) ?? 0) > 0) {
      let list = held.get(gpu);
      if (!list) held.set(gpu, list = []);
      list.push(buffer);
    } else {
      poolList(gpu, bytes).push(buffer);
    }
    gpu.memory.pool(bytes);
    return;
  }
  buffer.destroy();
}

/** Destroys the pooled buffers of `gpu` (e.g. between phases whose buffer sizes differ), and the
 * held ones too when no encoder is open; with `keep`, all but up to keep.get(size) pooled buffers of
 * each size (what a census says the next pass takes at once). */
export function trimBufferPool(gpu: Gpu, keep?: ReadonlyMap<number, number>): void {
  const lists = [...(pools.get(gpu)?.entries() ?? [])];
  if ((openEncoders.get(gpu) ?? 0) === 0) lists.push([-1, held.get(gpu) ?? []]);
  for (const [size, list] of lists) {
    const kept = size < 0 ? 0 : Math.min(list.length, keep?.get(size) ?? 0);
    for (const b of list.splice(kept)) {
      gpu.memory.unpool(b.size);
      b.destroy();
    }
  }
}

const workspaces = new WeakMap<Gpu, Map<string, GPUBuffer>>();

/** A launcher's workspace of `bytes` on `gpu`, made on first use and kept for the device's life
 * (one per label: e.g. the matmul's split-K partials, the NF4 products' f16 slices). Queue order
 * makes it safe to reuse from one dispatch to the next. */
export function deviceWorkspace(gpu: Gpu, label: string, bytes: number): GPUBuffer {
  let byLabel = workspaces.get(gpu);
  if (!byLabel) workspaces.set(gpu, byLabel = new Map());
  let w = byLabel.get(label);
  if (!w) {
    w = createBuffer(gpu, bytes, "workspace", label);
    byLabel.set(label, w);
  }
  return w;
}

type Uploadable = Float32Array | Uint16Array | Uint8Array | Uint32Array | Int32Array;

function bytesOf(data: Uploadable): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** Writes data at a byte offset; odd sizes are padded to 4 bytes with zeros. */
export function writeBuffer(gpu: Gpu, buffer: GPUBuffer, data: Uploadable, byteOffset = 0): void {
  const bytes = bytesOf(data);
  if (bytes.byteLength % 4 === 0) {
    gpu.device.queue.writeBuffer(buffer, byteOffset, bytes);
  } else {
    const padded = new Uint8Array(paddedBytes(bytes.byteLength));
    padded.set(bytes);
    gpu.device.queue.writeBuffer(buffer, byteOffset, padded);
  }
}

/** A new storage buffer holding `data`. */
export function upload(
  gpu: Gpu,
  data: Uploadable,
  category: MemoryCategory = "workspace",
  label?: string,
): GPUBuffer {
  const buffer = createBuffer(gpu, data.byteLength, category, label);
  writeBuffer(gpu, buffer, data);
  return buffer;
}

/** Copies `bytes` from the start of a buffer back to the CPU. */
export async function readBytes(gpu: Gpu, buffer: GPUBuffer, bytes = buffer.size): Promise<ArrayBuffer> {
  const size = paddedBytes(bytes);
  const staging = gpu.device.createBuffer({ size, usage: MAP_READ_COPY_DST, label: "readback" });
  try {
    const enc = gpu.device.createCommandEncoder();
    enc.copyBufferToBuffer(buffer, 0, staging, 0, size);
    gpu.device.queue.submit([enc.finish()]);
    await staging.mapAsync(1 /* GPUMapMode.READ */);
    gpu.throwIfFailed();
    return staging.getMappedRange(0, size).slice(0, bytes);
  } finally {
    staging.destroy();
  }
}

export async function readF32(gpu: Gpu, buffer: GPUBuffer, count: number): Promise<Float32Array> {
  return new Float32Array(await readBytes(gpu, buffer, count * 4));
}

/** Reads f16 data and widens it to f32. */
export async function readF16(gpu: Gpu, buffer: GPUBuffer, count: number): Promise<Float32Array> {
  return Float32Array.from(new Float16Array(await readBytes(gpu, buffer, count * 2)));
}

export async function readU32(gpu: Gpu, buffer: GPUBuffer, count: number): Promise<Uint32Array> {
  return new Uint32Array(await readBytes(gpu, buffer, count * 4));
}

export async function readI32(gpu: Gpu, buffer: GPUBuffer, count: number): Promise<Int32Array> {
  return new Int32Array(await readBytes(gpu, buffer, count * 4));
}

export async function readU8(gpu: Gpu, buffer: GPUBuffer, count: number): Promise<Uint8Array> {
  return new Uint8Array(await readBytes(gpu, buffer, count));
}

/** f16 bit patterns (round to nearest even) of the given numbers. */
export function toF16Bits(values: ArrayLike<number>): Uint16Array {
  const h = Float16Array.from(values as ArrayLike<number>);
  return new Uint16Array(h.buffer);
}

/** The numbers that f16 storage actually holds for the given values. */
export function roundToF16(values: ArrayLike<number>): Float64Array {
  return Float64Array.from(Float16Array.from(values as ArrayLike<number>));
}

/** Uploads numbers as f16. */
export function uploadF16(
  gpu: Gpu,
  values: ArrayLike<number>,
  category: MemoryCategory = "workspace",
  label?: string,
): GPUBuffer {
  return upload(gpu, toF16Bits(values), category, label);
}

/** Uploads numbers as f32. */
export function uploadF32(
  gpu: Gpu,
  values: ArrayLike<number>,
  category: MemoryCategory = "workspace",
  label?: string,
): GPUBuffer {
  return upload(gpu, Float32Array.from(values as ArrayLike<number>), category, label);
}

/** Reads `count` elements of a buffer of the given dtype as numbers. */
export function readAs(gpu: Gpu, buffer: GPUBuffer, dtype: DType, count: number): Promise<ArrayLike<number>> {
  switch (dtype) {
    case "f32":
      return readF32(gpu, buffer, count);
    case "f16":
      return readF16(gpu, buffer, count);
    case "u8":
      return readU8(gpu, buffer, count);
    case "u32":
      return readU32(gpu, buffer, count);
    case "i32":
      return readI32(gpu, buffer, count);
  }
}

/** Fills a buffer with NaN bit patterns (f32 0x7fc00000 or f16 0x7e00), so an element that a
 * kernel forgets to write shows up in the test. */
export function poison(gpu: Gpu, buffer: GPUBuffer, dtype: "f32" | "f16"): void {
  const words = new Uint32Array(buffer.size / 4);
  words.fill(dtype === "f32" ? 0x7fc00000 : 0x7e007e00);
  gpu.device.queue.writeBuffer(buffer, 0, words);
}
