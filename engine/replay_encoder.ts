// Encoders for work repeated with the same dispatches on the same buffers (a decode step, an
// optimizer step): bind groups and parameter slots kept across repetitions.

import { bindGroupEntries, type Binding, Encoder } from "./encoder.ts";
import type { Gpu } from "./gpu.ts";

/** Bytes of one dispatch's parameter slot. */
const PARAM_SLOT_BYTES = 256;
const UNIFORM_COPY_DST = 0x40 | 0x08;

interface CachedDispatch {
  pipeline: GPUComputePipeline;
  buffers: Binding[];
  bindGroup: GPUBindGroup;
}

/** One command of a recorded repetition: a dispatch with its slot, bind group, parameters and grid,
 * or a copy between buffers. */
export type RecordedCommand =
  | { dispatch: CachedDispatch; slot: number; params: Uint8Array; groups: [number, number, number] }
  | { copy: [src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number] };

function sameBindings(a: Binding[], b: Binding[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    const y = b[i];
    if (x === y) continue;
    if (!("buffer" in x) || !("buffer" in y)) return false;
    if (x.buffer !== y.buffer || x.offset !== y.offset || x.size !== y.size) return false;
  }
  return true;
}

/** Parameter slots per uniform buffer (64 KiB each). */
const SLOTS_PER_CHUNK = 256;

/** The bind groups and parameter slots of one device's repeated work, kept across repetitions. Slot
 * i lives in uniform buffer floor(i / SLOTS_PER_CHUNK); more slots add buffers and never replace one,
 * so a bind group made in any repetition (or earlier in the same one, already recorded in its pass)
 * stays valid until destroy(). */
export class ReplayBindings {
  readonly dispatches: (CachedDispatch | undefined)[] = [];
  readonly chunks: GPUBuffer[] = [];
  /** Host copy of the slots, written to the chunks at submit. */
  data = new Uint8Array(0);
  #destroyed = false;

  constructor(readonly gpu: Gpu, readonly label: string) {}

  /** Makes room for slot `i`; returns the uniform buffer and byte offset that hold it. */
  slot(i: number): { buffer: GPUBuffer; offset: number } {
    if (this.#destroyed) throw new Error("replay bindings used after destroy()");
    const chunk = Math.floor(i / SLOTS_PER_CHUNK);
    while (this.chunks.length <= chunk) {
      this.chunks.push(this.gpu.device.createBuffer({
        size: SLOTS_PER_CHUNK * PARAM_SLOT_BYTES,
        usage: UNIFORM_COPY_DST,
        label: `${this.label}.params${this.chunks.length}`,
      }));
    }
    const need = this.chunks.length * SLOTS_PER_CHUNK * PARAM_SLOT_BYTES;
    if (this.data.byteLength < need) {
      const data = new Uint8Array(need);
      data.set(this.data);
      this.data = data;
    }
    return { buffer: this.chunks[chunk], offset: (i % SLOTS_PER_CHUNK) * PARAM_SLOT_BYTES };
  }

  /** Writes slots first..end-1 to their buffers. */
  write(first: number, end: number): void {
    const queue = this.gpu.device.queue;
    for (let i = first; i < end;) {
      const c = Math.floor(i / SLOTS_PER_CHUNK);
      const stop = Math.min(end, (c + 1) * SLOTS_PER_CHUNK);
      const offset = (i - c * SLOTS_PER_CHUNK) * PARAM_SLOT_BYTES;
      queue.writeBuffer(
        this.chunks[c],
        offset,
        this.data,
        i * PARAM_SLOT_BYTES,
        (stop - i) * PARAM_SLOT_BYTES,
      );
      i = stop;
    }
  }

  destroy(): void {
    this.#destroyed = true;
    for (const b of this.chunks) b.destroy();
    this.chunks.length = 0;
    this.dispatches.length = 0;
  }
}

/** An Encoder for work that encodes the same dispatches on the same buffers every time, only their
 * parameters changing (a decode step: the cache length; an optimizer step: the learning rate):
 * dispatch i keeps parameter slot i of persistent uniform buffers, and its bind group from the
 * previous repetition while the pipeline and buffers match. Creating the bind groups was the largest
 * CPU cost of such work. The parameters go to the GPU in one write per uniform buffer at submit. */
export class ReplayEncoder extends Encoder {
  readonly #cache: ReplayBindings;
  readonly #first: number;
  /** When set, every dispatch and copy encoded from here on is appended to it, for replay(). */
  recording: RecordedCommand[] | undefined;

  /** Dispatches take the slots first, first + 1, ... (work split over several submits continues the
   * numbering of the previous encoder). */
  constructor(cache: ReplayBindings, label: string, first = 0) {
    super(cache.gpu, { label });
    this.#cache = cache;
    this.#first = first;
  }

  /** The slot of the next dispatch. */
  get nextSlot(): number {
    return this.#first + this.dispatches;
  }

  protected override bindGroup(
    pipeline: GPUComputePipeline,
    params: ArrayBufferView,
    buffers: Binding[],
  ): GPUBindGroup {
    if (params.byteLength > PARAM_SLOT_BYTES) {
      throw new RangeError(
        `${pipeline.label}: ${params.byteLength} bytes of parameters; slots hold ${PARAM_SLOT_BYTES}`,
      );
    }
    const cache = this.#cache;
    const i = this.nextSlot;
    const slot = cache.slot(i);
    cache.data.set(new Uint8Array(params.buffer, params.byteOffset, params.byteLength), i * PARAM_SLOT_BYTES);
    let hit = cache.dispatches[i];
    if (!hit || hit.pipeline !== pipeline || !sameBindings(hit.buffers, buffers)) {
      const size = Math.max(16, Math.ceil(params.byteLength / 16) * 16);
      const bindGroup = this.gpu.device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: bindGroupEntries({ ...slot, size }, buffers),
      });
      hit = { pipeline, buffers: buffers.slice(), bindGroup };
      cache.dispatches[i] = hit;
    }
    return hit.bindGroup;
  }

  protected override issue(
    pipeline: GPUComputePipeline,
    bindGroup: GPUBindGroup,
    x: number,
    y: number,
    z: number,
  ): void {
    if (this.recording) {
      // The slot's bind group and parameters, as bindGroup() or replay() just left them.
      const i = this.nextSlot;
      const cache = this.#cache;
      this.recording.push({
        dispatch: cache.dispatches[i]!,
        slot: i,
        params: cache.data.slice(i * PARAM_SLOT_BYTES, (i + 1) * PARAM_SLOT_BYTES),
        groups: [x, y, z],
      });
    }
    super.issue(pipeline, bindGroup, x, y, z);
  }

  override copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    this.recording?.push({ copy: [src, srcOffset, dst, dstOffset, bytes] });
    super.copy(src, srcOffset, dst, dstOffset, bytes);
  }

  /** Encodes recorded commands again, without their launchers: each dispatch with its recorded bind
   * group and parameters, into the slot it was recorded in (so this encoder must start where the
   * recording's encoder started). Work whose parameters do not change between repetitions only: a
   * decode step whose kernels read the position from a buffer. */
  replay(commands: readonly RecordedCommand[]): void {
    const cache = this.#cache;
    for (const c of commands) {
      if ("copy" in c) {
        this.copy(...c.copy);
        continue;
      }
      const i = this.nextSlot;
      if (c.slot !== i) throw new Error(`replay: a dispatch recorded in slot ${c.slot} comes at slot ${i}`);
      cache.slot(i);
      cache.data.set(c.params, i * PARAM_SLOT_BYTES);
      cache.dispatches[i] = c.dispatch;
      this.issue(c.dispatch.pipeline, c.dispatch.bindGroup, ...c.groups);
    }
  }

  /** The parameters of this encoder's dispatches go to their slots in one write per uniform buffer. */
  protected override beforeSubmit(): void {
    this.#cache.write(this.#first, this.nextSlot);
  }
}
