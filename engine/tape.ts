// The autograd tape: each op runs its forward into an Encoder and records its backward beside it,
// as a closure over the tensors it needs. `backward` replays the closures in reverse order into one
// Encoder; gradients accumulate into `Tensor.grad` (the first contribution writes, later ones add).
//
// Lifetimes: tensors an op creates are owned by the tape and freed by `release()`, which must come
// after the encoder that used them was submitted (WebGPU refuses destroyed buffers at submit).
// Scratch buffers of one pass go to `scratch()` and are freed by the same `release()`, or earlier by
// `releaseScratch()` once the pass is submitted.

import type { Encoder } from "./encoder.ts";
import type { Gpu } from "./gpu.ts";
import { Tensor, type TensorDType } from "./tensor.ts";
import { residualAdd } from "../kernels/elementwise/elementwise.ts";

export type BackwardFn = (enc: Encoder) => Promise<void>;

export class Tape {
  #ops: { name: string; backward: BackwardFn }[] = [];
  #owned: Tensor[] = [];
  #scratch: Tensor[] = [];

  /** `recording` false runs forwards only (no closures kept): for the forward pass of a checkpointed
   * block, whose backward is recomputed later. */
  constructor(readonly gpu: Gpu, readonly recording = true) {}

  get length(): number {
    return this.#ops.length;
  }

  /** A new activation tensor owned by the tape. */
  tensor(shape: readonly number[], dtype: TensorDType, label: string): Tensor {
    const t = Tensor.empty(this.gpu, shape, dtype, "activations", label);
    this.#owned.push(t);
    return t;
  }

  /** A workspace tensor freed with the next releaseScratch() or release(). */
  scratch(shape: readonly number[], dtype: TensorDType, label: string): Tensor {
    const t = Tensor.empty(this.gpu, shape, dtype, "workspace", label);
    this.#scratch.push(t);
    return t;
  }

  /** Gives up ownership of a tensor (e.g. a block's output that outlives the tape). */
  disown(t: Tensor): Tensor {
    const i = this.#owned.indexOf(t);
    if (i >= 0) this.#owned.splice(i, 1);
    return t;
  }

  record(name: string, backward: BackwardFn): void {
    if (this.recording) this.#ops.push({ name, backward });
  }

  /** Encodes every recorded backward, newest first. The outputs' gradients must be set. */
  async backward(enc: Encoder): Promise<void> {
    if (!this.recording) throw new Error("Tape.backward: this tape ran forwards only (recording = false)");
    for (let i = this.#ops.length - 1; i >= 0; i--) await this.#ops[i].backward(enc);
    this.#ops = [];
  }

  /** Encodes `write` so that its result lands in t.grad: written directly for the first
   * contribution, added in place when the kernel can accumulate, else through a scratch buffer. */
  async accumulateGrad(
    enc: Encoder,
    t: Tensor,
    canAccumulate: boolean,
    write: (dst: Tensor, accumulate: boolean) => Promise<void>,
  ): Promise<void> {
    if (!t.grad) {
      t.grad = Tensor.empty(this.gpu, t.shape, t.dtype, "activations", `${t.label}.grad`);
      await write(t.grad, false);
      return;
    }
    if (canAccumulate) {
      await write(t.grad, true);
      return;
    }
    if (t.dtype !== "f16") throw new Error(`Tape: cannot add gradients of ${t.dtype} tensor "${t.label}"`);
    const tmp = this.scratch(t.shape, t.dtype, `${t.label}.grad_part`);
    await write(tmp, false);
    await residualAdd(enc, { a: t.grad.buffer, b: tmp.buffer, n: t.numel });
  }

  releaseScratch(): void {
    for (const t of this.#scratch) t.release();
    this.#scratch = [];
  }

  /** Frees every tensor the tape owns (with their gradients) and its scratch. */
  release(): void {
    for (const t of this.#owned) t.release();
    this.#owned = [];
    this.releaseScratch();
    this.#ops = [];
  }
}
