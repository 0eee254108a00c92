// A small stand-in LlamaModel for trainer tests: LoRA-shaped f32 parameters on the GPU and a
// quadratic "NLL" whose gradient is computed on the CPU in float64 and written to the gradient
// buffers, so the trainer's logic (accumulation, scaling, clipping, 8-bit AdamW, checkpoints) is
// tested apart from the real model's numerics.
//
// For every label token y (positions 1..T-1, label != -100): nll = 0.5 * mean_i (w_i - c_i(y))^2
// over all parameters concatenated, c_i(y) = 0.5 sin(0.37 y + 0.011 i). The gradient adds
// gradScale * (w_i - c_i(y)) / N per token, plus a dropout-like term gradScale * 1e-3 * u_i(seed)
// per sequence (u in [-0.5, 0.5) from the seed), so a wrong seed changes the result.
// A label token equal to `poisonToken` makes the gradient infinite (a non-finite step).

import { createBuffer, readF32, releaseBuffer, writeBuffer } from "../engine/buffers.ts";
import type { Gpu } from "../engine/gpu.ts";
import type { MemoryReport } from "../engine/memory.ts";
import { IGNORE_INDEX } from "../data/chat_template.ts";
import { mulberry32 } from "../data/rng.ts";
import type { ModelBuilder } from "./strategy.ts";
import type { BaseFormat, LlamaConfig, LlamaModel, LoraConfig, LoraParameter, LossSum } from "./types.ts";

export const FAKE_CONFIG: LlamaConfig = {
  hiddenSize: 512,
  intermediateSize: 64,
  numLayers: 1,
  numHeads: 8,
  numKvHeads: 8,
  headDim: 64,
  vocabSize: 2048,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  maxPositionEmbeddings: 4096,
  tieWordEmbeddings: false,
  bosTokenId: 0,
  eosTokenIds: [1],
};

export class FakeModel implements LlamaModel {
  readonly config = FAKE_CONFIG;
  readonly gpus: Gpu[];
  readonly #params: LoraParameter[];
  poisonToken = -1;

  constructor(gpu: Gpu, readonly lora: LoraConfig, readonly baseFormat: BaseFormat, seed: number) {
    this.gpus = [gpu];
    // One factor above the 8-bit threshold (4096 elements), one below it.
    const shapes: [string, [number, number]][] = [
      ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", [8, 512]],
      ["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", [64, 8]],
    ];
    const rand = mulberry32(seed);
    this.#params = shapes.map(([key, shape]) => {
      const numel = shape[0] * shape[1];
      const weight = createBuffer(gpu, numel * 4, "lora", key);
      const grad = createBuffer(gpu, numel * 4, "lora", key + ".grad");
      writeBuffer(gpu, weight, Float32Array.from({ length: numel }, () => 0.2 * (rand() - 0.5)));
      writeBuffer(gpu, grad, new Float32Array(numel));
      return { key, shape, numel, gpu, weight, grad };
    });
  }

  parameters(): LoraParameter[] {
    return this.#params;
  }

  async zeroGrads(): Promise<void> {
    for (const p of this.#params) writeBuffer(p.gpu, p.grad, new Float32Array(p.numel));
    await this.gpus[0].sync();
  }

  async #weights(): Promise<Float64Array> {
    const parts = await Promise.all(this.#params.map((p) => readF32(p.gpu, p.weight, p.numel)));
    const out = new Float64Array(parts.reduce((s, a) => s + a.length, 0));
    let o = 0;
    for (const a of parts) {
      out.set(a, o);
      o += a.length;
    }
    return out;
  }

  #tokens(labels: Int32Array): number[] {
    const ys: number[] = [];
    for (let t = 1; t < labels.length; t++) if (labels[t] !== IGNORE_INDEX) ys.push(labels[t]);
    return ys;
  }

  #nll(w: Float64Array, ys: number[]): { nll: number; sumDiff: Float64Array } {
    const N = w.length;
    const sumDiff = new Float64Array(N);
    let nll = 0;
    for (const y of ys) {
      let s = 0;
      for (let i = 0; i < N; i++) {
        const d = w[i] - 0.5 * Math.sin(0.37 * y + 0.011 * i);
        s += d * d;
        sumDiff[i] += d;
      }
      nll += (0.5 * s) / N;
    }
    return { nll, sumDiff };
  }

  async forwardBackward(
    ids: Int32Array,
    labels: Int32Array,
    gradScale: number,
    seed: number,
    afterBackward?: () => Promise<void>,
  ): Promise<LossSum> {
    if (ids.length !== labels.length) throw new Error("fake model: ids and labels differ in length");
    const w = await this.#weights();
    const ys = this.#tokens(labels);
    const { nll, sumDiff } = this.#nll(w, ys);
    const N = w.length;
    const u = mulberry32(seed >>> 0);
    const poisoned = ys.includes(this.poisonToken);
    let o = 0;
    for (const p of this.#params) {
      const g = await readF32(p.gpu, p.grad, p.numel);
      for (let i = 0; i < p.numel; i++) {
        g[i] = g[i] + gradScale * (sumDiff[o + i] / N + 1e-3 * (u() - 0.5));
      }
      if (poisoned) g[0] = Infinity;
      writeBuffer(p.gpu, p.grad, g);
      o += p.numel;
    }
    await afterBackward?.();
    await this.gpus[0].sync();
    return { nll, tokens: ys.length };
  }

  async loss(_ids: Int32Array, labels: Int32Array): Promise<LossSum> {
    const ys = this.#tokens(labels);
    return { nll: this.#nll(await this.#weights(), ys).nll, tokens: ys.length };
  }

  memory(): MemoryReport[] {
    return [this.gpus[0].memory.report()];
  }

  destroy(): void {
    for (const p of this.#params) [p.weight, p.grad].forEach(releaseBuffer);
  }
}

/** A ModelBuilder making FakeModels (the source is ignored; the seed initializes the weights). */
export const fakeBuilder: ModelBuilder = (r) =>
  Promise.resolve(new FakeModel(r.gpus[0], r.lora, r.baseFormat, r.seed));
