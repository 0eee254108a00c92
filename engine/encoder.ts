// Many dispatches encoded into one command buffer and one submit.
//
// Binding convention for every kernel: `@group(0) @binding(0)` is a uniform struct of parameters,
// storage buffers follow at bindings 1, 2, ... in the order the launcher passes them.
// Parameters of all dispatches of an encoder share uniform chunks written once at submit.

import { encoderOpened, encoderSubmitted } from "./buffers.ts";
import type { Capabilities, Gpu } from "./gpu.ts";
import { dispatchLabel } from "./profile.ts";

const UNIFORM_CHUNK_BYTES = 64 * 1024;
const UNIFORM_USAGE = 0x40 | 0x08; // UNIFORM | COPY_DST
const QUERY_RESOLVE_COPY_SRC = 0x200 | 0x04;
const MAP_READ_COPY_DST = 0x01 | 0x08;

const freeChunks = new WeakMap<Gpu, GPUBuffer[]>();

interface UniformChunk {
  buffer: GPUBuffer;
  data: Uint8Array;
  used: number;
}

export type Binding = GPUBuffer | { buffer: GPUBuffer; offset: number; size: number };

const bufferSizes = new WeakMap<GPUBuffer, number>();

/** Bytes of a buffer, read from the GPU object once: Dawn's `size` getter costs about half a
 * microsecond in a launcher's checks, several of which run for every dispatch. */
export function bufferBytes(b: GPUBuffer): number {
  let size = bufferSizes.get(b);
  if (size === undefined) {
    size = b.size;
    bufferSizes.set(b, size);
  }
  return size;
}

/** Bytes a binding covers: its range, or the whole buffer. */
export function bindingBytes(b: Binding): number {
  return "buffer" in b ? b.size : bufferBytes(b);
}

/** `groups` workgroups as a grid [x, y] under the per-dimension limit, spread over y only where x
 * alone is too small. Kernels number them wg.y * x + wg.x (x from num_workgroups or a parameter);
 * the last ones may lie wholly past the end. */
export function workgroupGrid(caps: Capabilities, groups: number): [number, number] {
  const max = caps.limits.maxComputeWorkgroupsPerDimension;
  if (groups <= max) return [groups, 1];
  const y = Math.ceil(groups / max);
  if (y > max) throw new RangeError(`${groups} workgroups exceed the ${max}x${max} workgroup grid`);
  return [Math.ceil(groups / y), y];
}

/** Bind group entries of a dispatch: `params` at binding 0, `buffers` at bindings 1.. . */
export function bindGroupEntries(params: GPUBufferBinding, buffers: Binding[]): GPUBindGroupEntry[] {
  const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: params }];
  buffers.forEach((b, i) => entries.push({ binding: i + 1, resource: "buffer" in b ? b : { buffer: b } }));
  return entries;
}

export class Encoder {
  readonly #commands: GPUCommandEncoder;
  #pass: GPUComputePassEncoder | undefined;
  #chunks: UniformChunk[] = [];
  #submitted = false;
  readonly #querySet: GPUQuerySet | undefined;
  #dispatches = 0;

  /** A timed encoder records GPU timestamps around its one compute pass (adapters with
   * timestamp-query only). */
  constructor(readonly gpu: Gpu, readonly options: { timed?: boolean; label?: string } = {}) {
    this.#commands = gpu.device.createCommandEncoder({ label: options.label });
    if (options.timed) {
      if (gpu.profile) throw new Error("A timed encoder cannot run while the GPU is being profiled");
      if (!gpu.caps.timestamps) throw new Error(`${gpu.name} has no timestamp-query`);
      this.#querySet = gpu.device.createQuerySet({ type: "timestamp", count: 2 });
    }
    encoderOpened(gpu);
  }

  get dispatches(): number {
    return this.#dispatches;
  }

  #uniform(params: ArrayBufferView): GPUBufferBinding {
    const align = this.gpu.caps.limits.minUniformBufferOffsetAlignment;
    const bytes = new Uint8Array(params.buffer, params.byteOffset, params.byteLength);
    const size = Math.max(16, Math.ceil(bytes.byteLength / 16) * 16);
    let chunk = this.#chunks.at(-1);
    if (!chunk || chunk.used + size > UNIFORM_CHUNK_BYTES) {
      const buffer = freeChunks.get(this.gpu)?.pop() ??
        this.gpu.device.createBuffer({ size: UNIFORM_CHUNK_BYTES, usage: UNIFORM_USAGE, label: "params" });
      chunk = { buffer, data: new Uint8Array(UNIFORM_CHUNK_BYTES), used: 0 };
      this.#chunks.push(chunk);
    }
    const offset = chunk.used;
    chunk.data.set(bytes, offset);
    chunk.used = Math.ceil((offset + size) / align) * align;
    return { buffer: chunk.buffer, offset, size };
  }

  #computePass(): GPUComputePassEncoder {
    if (!this.#pass) {
      this.#pass = this.#commands.beginComputePass(
        this.#querySet
          ? {
            timestampWrites: {
              querySet: this.#querySet,
              beginningOfPassWriteIndex: 0,
              endOfPassWriteIndex: 1,
            },
          }
          : {},
      );
    }
    return this.#pass;
  }

  /** Encodes one dispatch: params at binding 0, buffers at bindings 1.. */
  dispatch(
    pipeline: GPUComputePipeline,
    params: ArrayBufferView,
    buffers: Binding[],
    groups: readonly [number, number?, number?],
  ): void {
    if (this.#submitted) throw new Error("Encoder already submitted");
    const [x, y = 1, z = 1] = groups;
    const max = this.gpu.caps.limits.maxComputeWorkgroupsPerDimension;
    if (x > max || y > max || z > max) {
      throw new RangeError(
        `Dispatch of ${x}x${y}x${z} workgroups exceeds ${max} per dimension (${pipeline.label})`,
      );
    }
    if (x === 0 || y === 0 || z === 0) return;
    this.issue(pipeline, this.bindGroup(pipeline, params, buffers), x, y, z);
  }

  /** Encodes a dispatch whose bind group is made: into this encoder's pass, or under a profile into
   * a pass of its own. */
  protected issue(
    pipeline: GPUComputePipeline,
    bindGroup: GPUBindGroup,
    x: number,
    y: number,
    z: number,
  ): void {
    if (this.#submitted) throw new Error("Encoder already submitted");
    const profile = this.gpu.profile;
    if (profile) {
      this.#pass?.end();
      this.#pass = this.#commands.beginComputePass(profile.nextPass(dispatchLabel(pipeline, x, y, z)));
    }
    const pass = this.#computePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(x, y, z);
    if (profile) {
      pass.end();
      this.#pass = undefined;
    }
    this.#dispatches++;
  }

  /** The bind group of the next dispatch: params in a slice of this encoder's uniform chunks at
   * binding 0, buffers at bindings 1.. . Encoders that replay the same dispatches (the decode
   * step) override it to keep bind groups across submits. */
  protected bindGroup(
    pipeline: GPUComputePipeline,
    params: ArrayBufferView,
    buffers: Binding[],
  ): GPUBindGroup {
    return this.gpu.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: bindGroupEntries(this.#uniform(params), buffers),
    });
  }

  /** Runs in submit() before the queue writes and the submit (after the last pass ended). */
  protected beforeSubmit(): void {}

  /** Copies bytes between buffers (ends the current compute pass). */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    if (this.#querySet) throw new Error("A timed encoder holds dispatches only");
    this.#pass?.end();
    this.#pass = undefined;
    this.#commands.copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /** Submits everything encoded. Resolves after the submit; for a timed encoder, after the GPU
   * finished, with the GPU milliseconds of the pass. */
  async submit(): Promise<number | undefined> {
    if (this.#submitted) throw new Error("Encoder already submitted");
    this.#submitted = true;
    if (this.#querySet && !this.#pass) this.#computePass();
    this.#pass?.end();
    this.beforeSubmit();
    let readback: GPUBuffer | undefined;
    let resolve: GPUBuffer | undefined;
    if (this.#querySet) {
      resolve = this.gpu.device.createBuffer({ size: 16, usage: QUERY_RESOLVE_COPY_SRC });
      readback = this.gpu.device.createBuffer({ size: 16, usage: MAP_READ_COPY_DST });
      this.#commands.resolveQuerySet(this.#querySet, 0, 2, resolve, 0);
      this.#commands.copyBufferToBuffer(resolve, 0, readback, 0, 16);
    }
    const queue = this.gpu.device.queue;
    for (const c of this.#chunks) queue.writeBuffer(c.buffer, 0, c.data, 0, c.used);
    queue.submit([this.#commands.finish()]);
    encoderSubmitted(this.gpu);
    // Queue order makes the chunks safe to rewrite by the next encoder right away.
    const pool = freeChunks.get(this.gpu) ?? [];
    freeChunks.set(this.gpu, pool);
    pool.push(...this.#chunks.map((c) => c.buffer));
    this.#chunks = [];
    if (!readback) return undefined;
    try {
      await readback.mapAsync(1);
      const t = new BigUint64Array(readback.getMappedRange());
      const ms = Number(t[1] - t[0]) / 1e6;
      this.gpu.throwIfFailed();
      return ms;
    } finally {
      readback.destroy();
      resolve!.destroy();
      this.#querySet?.destroy();
    }
  }
}
