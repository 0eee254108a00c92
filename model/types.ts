// The contract between the Llama model (model/llama.ts), the fine-tuning strategies and
// LLAMAFineTuner (model/strategy.ts, model/fine_tuner.ts) and the Evaluator / generation.
//
// Dimension letters: T tokens, C hidden, H heads, KVH kv heads, D head dim, I intermediate,
// V vocabulary, R LoRA rank, L layers.

import type { Gpu } from "../engine/gpu.ts";
import type { MemoryReport } from "../engine/memory.ts";

/** Llama-3.1 config.json, in our names (parsed by model/config.ts). */
export interface LlamaConfig {
  hiddenSize: number; // C
  intermediateSize: number; // I
  numLayers: number; // L
  numHeads: number; // H
  numKvHeads: number; // KVH
  headDim: number; // D
  vocabSize: number; // V
  rmsNormEps: number;
  ropeTheta: number;
  /** llama3 frequency scaling, or null for plain RoPE. */
  ropeScaling: {
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositionEmbeddings: number;
  } | null;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number;
  eosTokenIds: number[];
}

export type LoraTarget = "q_proj" | "k_proj" | "v_proj" | "o_proj" | "gate_proj" | "up_proj" | "down_proj";
export const ALL_LORA_TARGETS: readonly LoraTarget[] = [
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "gate_proj",
  "up_proj",
  "down_proj",
];

export interface LoraConfig {
  r: number;
  alpha: number;
  dropout: number;
  targets: LoraTarget[];
  /** scaling = alpha / sqrt(r) instead of alpha / r. */
  useRslora: boolean;
}

/** No adapter: the base model alone (no module gets LoRA factors). */
export const NO_LORA: LoraConfig = { r: 1, alpha: 1, dropout: 0, targets: [], useRslora: false };

/** How the frozen base linear weights live on the GPU: NF4 (QLoRA) or f16 (LoRA). */
export type BaseFormat = "nf4" | "f16";

/** One trainable LoRA factor: an f32 master weight and its f32 gradient on one device. */
export interface LoraParameter {
  /** PEFT key, e.g. "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight". */
  key: string;
  /** [R, in] for lora_A, [out, R] for lora_B. */
  shape: [number, number];
  numel: number;
  gpu: Gpu;
  weight: GPUBuffer;
  grad: GPUBuffer;
}

/** Sums over the label tokens of one sequence (labels != -100). */
export interface LossSum {
  /** Sum of the token negative log-likelihoods (natural log). */
  nll: number;
  tokens: number;
}

export interface LlamaModel {
  readonly config: LlamaConfig;
  readonly lora: LoraConfig;
  readonly baseFormat: BaseFormat;
  /** The devices the layers are spread over (one, or several for pipeline sharding). */
  readonly gpus: Gpu[];
  /** Every LoRA factor, in a fixed order (layer, module, A before B). */
  parameters(): LoraParameter[];
  /** Sets every LoRA gradient to zero. */
  zeroGrads(): Promise<void>;
  /** Forward and backward of one sequence (B = 1, T = ids.length) with per-block recomputation:
   * adds d(gradScale * sum of label-token NLL)/d(theta) into the gradients. gradScale carries the
   * loss scale and the 1/tokens normalization. The dropout mask derives from `seed`.
   * `afterBackward` runs once the backward is submitted and before the loss is read back: what it
   * submits (the optimizer step) queues behind the backward, the GPU not waiting for the read-back. */
  forwardBackward(
    ids: Int32Array,
    labels: Int32Array,
    gradScale: number,
    seed: number,
    afterBackward?: () => Promise<void>,
  ): Promise<LossSum>;
  /** Forward only (no dropout): the NLL sum of the label tokens. */
  loss(ids: Int32Array, labels: Int32Array): Promise<LossSum>;
  /** Peak and live bytes per device. */
  memory(): MemoryReport[];
  destroy(): void;
}
