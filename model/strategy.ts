// Fine-tuning strategies: how the base model is loaded and stored on the GPU, which parameters
// train, and how one step's sequences run through the model. QLoRA (NF4 base + LoRA, the default)
// and LoRA (f16 base + LoRA) differ in the base format; both train every LoRA factor and nothing
// else, in f32 masters with f16 compute.

import type { Gpu } from "../engine/gpu.ts";
import { Llama, randomLlama } from "./llama.ts";
import type { StrategyName } from "./training_config.ts";
import type { BaseFormat, LlamaConfig, LlamaModel, LoraConfig, LoraParameter, LossSum } from "./types.ts";

/** Where the base weights come from. */
export type ModelSource =
  /** A Hugging Face folder: config.json + safetensors shards (16-bit or pre-quantized NF4). */
  | { kind: "hf"; dir: string }
  /** A randomly initialized model of this shape (the embedded demo and tests). */
  | { kind: "random"; config: LlamaConfig; seed: number };

export interface ModelRequest {
  gpus: Gpu[];
  source: ModelSource;
  lora: LoraConfig;
  baseFormat: BaseFormat;
  /** Seed of the LoRA A initialization (B starts at zero). */
  seed: number;
}

/** Makes a LlamaModel: loads or creates the base in `baseFormat`, then attaches LoRA. */
export type ModelBuilder = (request: ModelRequest) => Promise<LlamaModel>;

/** One sequence of a step: ids and labels [T] (labels -100 where no loss is taken). */
export interface StepSequence {
  ids: Int32Array;
  labels: Int32Array;
  /** Seed of this sequence's dropout masks. */
  seed: number;
}

export interface FineTuningStrategy {
  readonly name: StrategyName;
  /** How the frozen base linear weights are stored. */
  readonly baseFormat: BaseFormat;
  /** One line for logs and the experiments log. */
  describe(): string;
  /** Loads or creates the model on the devices, quantized as the strategy says, LoRA attached. */
  createModel(gpus: Gpu[], source: ModelSource, lora: LoraConfig, seed: number): Promise<LlamaModel>;
  /** The parameters the optimizer updates. */
  trainableParameters(model: LlamaModel): LoraParameter[];
  /** Forward and backward of one step's sequences, gradients accumulated into the parameters'
   * grad buffers (zeroed first) with `gradScale` on each sequence's NLL sum. Returns the summed
   * loss over all sequences. `afterBackward` runs after the last sequence's backward is submitted,
   * before its loss is read back (LlamaModel.forwardBackward). */
  accumulate(
    model: LlamaModel,
    sequences: readonly StepSequence[],
    gradScale: number,
    afterBackward?: () => Promise<void>,
  ): Promise<LossSum>;
}

abstract class LoraStrategyBase implements FineTuningStrategy {
  abstract readonly name: StrategyName;
  abstract readonly baseFormat: BaseFormat;

  constructor(readonly build: ModelBuilder = llamaBuilder) {}

  abstract describe(): string;

  createModel(gpus: Gpu[], source: ModelSource, lora: LoraConfig, seed: number): Promise<LlamaModel> {
    if (gpus.length === 0) throw new Error(`${this.name}: no GPU device to put the model on`);
    return this.build({ gpus, source, lora, baseFormat: this.baseFormat, seed });
  }

  trainableParameters(model: LlamaModel): LoraParameter[] {
    return model.parameters();
  }

  async accumulate(
    model: LlamaModel,
    sequences: readonly StepSequence[],
    gradScale: number,
    afterBackward?: () => Promise<void>,
  ): Promise<LossSum> {
    await model.zeroGrads();
    let nll = 0;
    let tokens = 0;
    for (const [i, s] of sequences.entries()) {
      const last = i === sequences.length - 1;
      const r = await model.forwardBackward(
        s.ids,
        s.labels,
        gradScale,
        s.seed,
        last ? afterBackward : undefined,
      );
      nll += r.nll;
      tokens += r.tokens;
    }
    return { nll, tokens };
  }
}

/** NF4 base (bitsandbytes layout, double-quantized absmax) + LoRA: the reference job. */
export class QLoRAStrategy extends LoraStrategyBase {
  readonly name = "qlora" as const;
  readonly baseFormat = "nf4" as const;
  describe(): string {
    return "QLoRA: frozen NF4 base (block 64, double-quantized absmax), f16 compute, f32 LoRA masters";
  }
}

/** f16 base + LoRA: twice the QLoRA weight memory, no dequantization error. */
export class LoRAStrategy extends LoraStrategyBase {
  readonly name = "lora" as const;
  readonly baseFormat = "f16" as const;
  describe(): string {
    return "LoRA: frozen f16 base, f16 compute, f32 LoRA masters";
  }
}

/** The strategy of a config's `strategy` field. */
export function createStrategy(name: StrategyName, build: ModelBuilder = llamaBuilder): FineTuningStrategy {
  switch (name) {
    case "qlora":
      return new QLoRAStrategy(build);
    case "lora":
      return new LoRAStrategy(build);
  }
}

/** The builder of the real model (model/llama.ts): a Hugging Face folder or random weights. */
export const llamaBuilder: ModelBuilder = (r) => {
  const options = { gpus: r.gpus, lora: r.lora, baseFormat: r.baseFormat, seed: r.seed };
  return r.source.kind === "hf"
    ? Llama.fromPretrained(r.source.dir, options)
    : randomLlama(r.source.config, r.source.seed, options);
};
