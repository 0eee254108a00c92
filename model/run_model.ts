// A model for inference (generation, evaluation): a training run's base with the run's PEFT adapter,
// or a Hugging Face folder with an optional adapter.
//
// A run folder (model/train_run.ts) holds training_config.json and, once finished,
// adapter_model.safetensors + adapter_config.json. Its base is the Hugging Face folder named by the
// config's "model", or, when that is null, the embedded tiny model: embeddedModelConfig over the
// bundled tokenizer with random weights from the config's seed, rebuilt here exactly as training
// built it. The base format follows the strategy (qlora: NF4, lora: f16) unless overridden.

import { basename, join, resolve } from "node:path";
import type { Gpu } from "../engine/gpu.ts";
import { ChatTemplate } from "../data/chat_template.ts";
import { LlamaTokenizer } from "../data/tokenizer.ts";
import { Llama, randomLlama } from "./llama.ts";
import { loadAdapter, loadAdapterConfig } from "./peft.ts";
import { BUNDLED_TOKENIZER, embeddedModelConfig } from "./train_run.ts";
import { configFileLayer, resolveConfig, type TrainingConfig } from "./training_config.ts";
import { type BaseFormat, NO_LORA } from "./types.ts";

/** Where runs go by default (model/train_run.ts: runs/<UTC timestamp>). */
export const DEFAULT_RUNS_DIR = "runs";

export interface InferenceModel {
  model: Llama;
  tokenizer: LlamaTokenizer;
  template: ChatTemplate;
  /** For people and reports: the base model's folder name or the embedded model's name. */
  modelName: string;
  /** The run folder, when the model came from one. */
  runDir: string | null;
  /** The adapter folder applied, or null for the bare base. */
  adapterDir: string | null;
  /** The run's training config, when the model came from a run. */
  trainingConfig: TrainingConfig | null;
  baseFormat: BaseFormat;
}

export interface InferenceModelOptions {
  /** A training run folder: its base and adapter. */
  run?: string | null;
  /** A Hugging Face model folder (overrides the run's base). */
  model?: string | null;
  /** A PEFT adapter folder (overrides the run's adapter). */
  adapter?: string | null;
  /** Tokenizer folder; by default the run's, else the model folder, else the bundled one. */
  tokenizer?: string | null;
  /** NF4 or f16 base; by default the run's strategy (qlora: nf4, lora: f16), else nf4. */
  baseFormat?: BaseFormat | null;
  gpus: Gpu[];
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** The training config a run used (RUN/training_config.json), validated. */
export async function readRunConfig(runDir: string): Promise<TrainingConfig> {
  const path = join(runDir, "training_config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(
      `${path}: cannot read (${(e as Error).message}). Give a run folder written by \`deno task train\`.`,
    );
  }
  return resolveConfig([configFileLayer(text, path)]).config;
}

/** The newest finished run of the embedded model (training_config.json with "model": null and an
 * adapter) among the folders of `root`. */
export async function findLatestEmbeddedRun(root = DEFAULT_RUNS_DIR): Promise<string> {
  const found: { dir: string; mtime: number }[] = [];
  try {
    for await (const e of Deno.readDir(root)) {
      if (!e.isDirectory) continue;
      const dir = join(root, e.name);
      const adapter = join(dir, "adapter_model.safetensors");
      if (!(await exists(adapter)) || !(await exists(join(dir, "adapter_config.json")))) continue;
      try {
        const cfg = JSON.parse(await Deno.readTextFile(join(dir, "training_config.json")));
        if (cfg?.model !== null && cfg?.model !== undefined) continue;
      } catch {
        continue;
      }
      found.push({ dir, mtime: (await Deno.stat(adapter)).mtime?.getTime() ?? 0 });
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (found.length === 0) {
    throw new Error(
      `no finished run of the embedded model under ${root}/ (a folder with training_config.json and ` +
        `adapter_model.safetensors). Run \`deno task train\` first, or give --model DIR [--adapter DIR] ` +
        `or --run DIR.`,
    );
  }
  found.sort((a, b) => b.mtime - a.mtime || b.dir.localeCompare(a.dir));
  return found[0].dir;
}

/** Builds the model for inference on `gpus` (see the file comment for what comes from where). */
export async function loadInferenceModel(options: InferenceModelOptions): Promise<InferenceModel> {
  const runDir = options.run ?? null;
  const trainingConfig = runDir ? await readRunConfig(runDir) : null;
  const modelDir = options.model ?? trainingConfig?.model ?? null;
  const adapterDir = options.adapter ?? runDir;
  if (adapterDir !== null && !(await exists(join(adapterDir, "adapter_config.json")))) {
    throw new Error(
      runDir && adapterDir === runDir
        ? `${runDir}: no adapter_config.json; the run did not finish. Resume it with \`deno task train ` +
          `--resume ${join(runDir, "checkpoints", "step-N")}\`, or generate with a finished run.`
        : `--adapter ${adapterDir}: no adapter_config.json. Give a PEFT adapter folder ` +
          `(adapter_config.json + adapter_model.safetensors), e.g. a finished run folder.`,
    );
  }
  if (modelDir !== null && !(await exists(join(modelDir, "config.json")))) {
    throw new Error(
      `${modelDir}: no config.json. Give a Hugging Face model folder (config.json, safetensors, tokenizer).`,
    );
  }
  const baseFormat = options.baseFormat ?? (trainingConfig?.strategy === "lora" ? "f16" : "nf4");
  const tokenizerDir = options.tokenizer ?? (options.model ? null : trainingConfig?.tokenizer) ?? modelDir ??
    BUNDLED_TOKENIZER;
  const tokenizer = await LlamaTokenizer.fromDir(tokenizerDir);
  const template = ChatTemplate.fromTokenizer(tokenizer);
  const lora = adapterDir !== null ? await loadAdapterConfig(adapterDir) : NO_LORA;
  const build = { gpus: options.gpus, lora: { ...lora, dropout: 0 }, baseFormat };
  let model: Llama;
  let modelName: string;
  if (modelDir !== null) {
    model = await Llama.fromPretrained(modelDir, build);
    modelName = basename(resolve(modelDir));
  } else {
    const seed = trainingConfig?.seed;
    if (seed === undefined) {
      throw new Error("the embedded model is rebuilt from a run's seed: give --run DIR (or --model DIR)");
    }
    model = await randomLlama(embeddedModelConfig(tokenizer), seed, build);
    modelName = "tiny-llama-3.1-random (embedded)";
  }
  try {
    if (tokenizer.vocabSize > model.config.vocabSize) {
      throw new Error(
        `tokenizer ${tokenizerDir} has ${tokenizer.vocabSize} ids but the model's vocab_size is ` +
          `${model.config.vocabSize}; use the model's own tokenizer (--tokenizer).`,
      );
    }
    if (adapterDir !== null) {
      try {
        await loadAdapter(model, adapterDir);
      } catch (e) {
        const hint = modelDir === null
          ? " The embedded model's shape differs from the one this run trained; train the run again " +
            "with `deno task train`."
          : " Is the adapter made for this base model?";
        throw new Error(`${(e as Error).message}.${hint}`);
      }
    }
  } catch (e) {
    model.destroy();
    throw e;
  }
  return { model, tokenizer, template, modelName, runDir, adapterDir, trainingConfig, baseFormat };
}
