// A tensor: a GPU buffer on one device with a shape, an element type and a memory category
// (for the byte ledger), plus the gradient the tape accumulates into it.

import { createBuffer, readAs, releaseBuffer, upload } from "./buffers.ts";
import type { Gpu } from "./gpu.ts";
import type { MemoryCategory } from "./memory.ts";

export type TensorDType = "f16" | "f32" | "i32" | "u8";
export const TENSOR_DTYPE_BYTES: Record<TensorDType, number> = { f16: 2, f32: 4, i32: 4, u8: 1 };

export class Tensor {
  /** Gradient of the loss with respect to this tensor (same shape; f16 for f16 activations). */
  grad: Tensor | undefined;
  #released = false;

  constructor(
    readonly gpu: Gpu,
    readonly buffer: GPUBuffer,
    readonly shape: readonly number[],
    readonly dtype: TensorDType,
    readonly category: MemoryCategory,
    readonly label = "tensor",
    /** False for a view of a buffer owned elsewhere: release() then leaves the buffer alone. */
    readonly owned = true,
  ) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new RangeError(`Tensor "${label}": bad shape [${shape}]`);
    }
  }

  /** A new tensor with undefined contents. */
  static empty(
    gpu: Gpu,
    shape: readonly number[],
    dtype: TensorDType,
    category: MemoryCategory,
    label = "tensor",
  ): Tensor {
    const bytes = shape.reduce((a, b) => a * b, 1) * TENSOR_DTYPE_BYTES[dtype];
    return new Tensor(gpu, createBuffer(gpu, bytes, category, label), shape, dtype, category, label);
  }

  /** A new tensor holding `data` (f16 as Uint16Array bit patterns). */
  static from(
    gpu: Gpu,
    data: Float32Array | Uint16Array | Int32Array | Uint8Array,
    shape: readonly number[],
    dtype: TensorDType,
    category: MemoryCategory,
    label = "tensor",
  ): Tensor {
    const numel = shape.reduce((a, b) => a * b, 1);
    if (data.byteLength !== numel * TENSOR_DTYPE_BYTES[dtype]) {
      throw new RangeError(
        `Tensor "${label}": ${data.byteLength} bytes of data for [${shape}] ${dtype} (${
          numel * TENSOR_DTYPE_BYTES[dtype]
        } bytes)`,
      );
    }
    return new Tensor(gpu, upload(gpu, data, category, label), shape, dtype, category, label);
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get bytes(): number {
    return this.numel * TENSOR_DTYPE_BYTES[this.dtype];
  }

  get released(): boolean {
    return this.#released;
  }

  /** The values as numbers (f16 widened to f32). */
  async read(): Promise<Float32Array | Int32Array | Uint8Array> {
    if (this.#released) throw new Error(`Tensor "${this.label}" was released`);
    const v = await readAs(this.gpu, this.buffer, this.dtype, this.numel);
    return v as Float32Array | Int32Array | Uint8Array;
  }

  /** Frees the buffer (and the gradient's); safe to call twice. Only after the work that uses it
   * was submitted. */
  release(): void {
    this.grad?.release();
    this.grad = undefined;
    if (this.#released) return;
    this.#released = true;
    if (this.owned) releaseBuffer(this.buffer);
  }
}
