// A whole training run: input checks (before any GPU work), data preparation, the model through
// the chosen strategy, LLAMAFineTuner, and the run folder's outputs:
//   RUN/training_config.json     the config used (a valid --config file)
//   RUN/metrics.jsonl            one line per step (model/run_outputs.ts StepMetrics)
//   RUN/checkpoints/step-N/      resumable checkpoints (model/fine_tuner.ts)
//   RUN/adapter_model.safetensors + RUN/adapter_config.json   the PEFT adapter
//   RUN/loss_curve.svg           train loss per step and validation loss points
//   RUN/data_stats.json          what data preparation kept and dropped
//   ../LLAMAExperiments.json     the experiments log shared by the runs of RUN's parent folder
// Without a model folder the run uses the embedded default: a tiny Llama-3.1-shaped model with
// random weights over the bundled small tokenizer, trained on the bundled sample corpus.

import { basename, dirname, join, resolve } from "node:path";
import { type Gpu, openGpu } from "../engine/gpu.ts";
import { formatBytes } from "../engine/memory.ts";
import { ChatTemplate } from "../data/chat_template.ts";
import { readerFor } from "../data/corpus.ts";
import {
  DatasetProcessor,
  type PreparedExample,
  type PrepareStats,
  readPreparedJsonl,
} from "../data/dataset_processor.ts";
import { checkOutDir } from "../data/fs_util.ts";
import { LlamaTokenizer } from "../data/tokenizer.ts";
import { loadLlamaConfig } from "./config.ts";
import {
  checkResumable,
  type EvalResult,
  LLAMAFineTuner,
  readTrainerState,
  type TrainExample,
} from "./fine_tuner.ts";
import {
  appendExperiment,
  type ExperimentEntry,
  lossCurveSvg,
  readMetrics,
  type StepMetrics,
  writeFileAtomic,
} from "./run_outputs.ts";
import { createStrategy, llamaBuilder, type ModelBuilder, type ModelSource } from "./strategy.ts";
import { configJson, loraConfigOf, type TrainingConfig } from "./training_config.ts";
import type { LlamaConfig } from "./types.ts";

export const BUNDLED_TOKENIZER = new URL("../data/sample/tokenizer", import.meta.url).pathname;
export const BUNDLED_SAMPLE_CSV = new URL("../data/sample/bengali_empathetic_sample.csv", import.meta.url)
  .pathname;
export const EXPERIMENTS_FILE = "LLAMAExperiments.json";

/** The embedded model's shape: Llama-3.1 layout (GQA, llama3 RoPE scaling, SwiGLU, untied head)
 * at a size a CPU trains in minutes. */
export function embeddedModelConfig(tok: LlamaTokenizer): LlamaConfig {
  return {
    hiddenSize: 256,
    intermediateSize: 512,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 64,
    vocabSize: tok.vocabSize,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
    maxPositionEmbeddings: 131072,
    tieWordEmbeddings: false,
    bosTokenId: tok.bosId,
    eosTokenIds: [...tok.eosIds],
  };
}

/** Everything checked and loaded before the GPU is touched. */
export interface RunPlan {
  config: TrainingConfig;
  runDir: string;
  resume: string | null;
  source: ModelSource;
  modelConfig: LlamaConfig;
  modelName: string;
  tokenizerDir: string;
  dataPath: string;
  train: PreparedExample[];
  val: PreparedExample[];
  dataStats: PrepareStats | { source: string; train: number; val: number };
}

function timestamp(d = new Date()): string {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Checks the model folder, tokenizer, data and run folder, and prepares the data. Throws errors
 * for people; touches no GPU. */
export async function planRun(
  config: TrainingConfig,
  options: { resume?: string | null; overwrite?: boolean; log?: (m: string) => void } = {},
): Promise<RunPlan> {
  const log = options.log ?? (() => {});
  let modelConfig: LlamaConfig | null = null;
  let modelName = "tiny-llama-3.1-random (embedded)";
  if (config.model !== null) {
    const dir = config.model;
    if (!(await isDir(dir))) {
      throw new Error(
        `--model ${dir}: not a folder. Point it at a Hugging Face model folder (config.json, ` +
          `model*.safetensors, tokenizer.json), e.g. a download of meta-llama/Llama-3.1-8B-Instruct.`,
      );
    }
    modelConfig = await loadLlamaConfig(dir);
    const files: string[] = [];
    for await (const e of Deno.readDir(dir)) files.push(e.name);
    if (!files.some((f) => f.endsWith(".safetensors") || f === "model.safetensors.index.json")) {
      throw new Error(
        `--model ${dir}: no *.safetensors weights (found ${files.slice(0, 12).join(", ") || "nothing"}). ` +
          `Download the model's safetensors shards into the folder.`,
      );
    }
    modelName = basename(resolve(dir));
  }
  const tokenizerDir = config.tokenizer ?? config.model ?? BUNDLED_TOKENIZER;
  const tok = await LlamaTokenizer.fromDir(tokenizerDir);
  modelConfig ??= embeddedModelConfig(tok);
  if (tok.vocabSize > modelConfig.vocabSize) {
    throw new Error(
      `tokenizer ${tokenizerDir} has ${tok.vocabSize} ids but the model's vocab_size is ` +
        `${modelConfig.vocabSize}: they do not belong together. Use the model's own tokenizer (--tokenizer).`,
    );
  }
  const template = ChatTemplate.fromTokenizer(tok);

  const dataPath = config.data ?? BUNDLED_SAMPLE_CSV;
  let train: PreparedExample[];
  let val: PreparedExample[];
  let dataStats: RunPlan["dataStats"];
  if (await isDir(dataPath)) {
    const tp = join(dataPath, "train.jsonl");
    if (!(await exists(tp))) {
      throw new Error(
        `--data ${dataPath}: a folder without train.jsonl. Give a corpus CSV/JSONL file, or a folder ` +
          `written by \`deno task prepare\` (train.jsonl, val.jsonl).`,
      );
    }
    train = await readPreparedJsonl(tp);
    const vp = join(dataPath, "val.jsonl");
    val = (await exists(vp)) ? await readPreparedJsonl(vp) : [];
    dataStats = { source: dataPath, train: train.length, val: val.length };
    for (const e of [...train, ...val]) {
      if (e.num_tokens > config.maxSeqLength) {
        throw new Error(
          `${dataPath}: example ${e.id} has ${e.num_tokens} tokens, more than maxSeqLength ` +
            `${config.maxSeqLength}; examples are never cut. Raise --max-seq-length or prepare again.`,
        );
      }
      for (const id of e.input_ids) {
        if (!(id >= 0 && id < modelConfig.vocabSize)) {
          throw new Error(
            `${dataPath}: example ${e.id} holds token id ${id}, outside the model's vocabulary ` +
              `(${modelConfig.vocabSize}); it was prepared with another tokenizer. Prepare it again.`,
          );
        }
      }
    }
  } else {
    if (!(await exists(dataPath))) {
      throw new Error(
        `--data ${dataPath}: file not found. Give the corpus CSV (columns Topics, Question-Title, ` +
          `Questions, Answers), a chat JSONL, or a folder from \`deno task prepare\`.`,
      );
    }
    const processor = new DatasetProcessor(tok, template, {
      valFraction: config.valFraction,
      seed: config.seed,
      maxSeqLength: config.maxSeqLength,
      systemPrompt: config.systemPrompt,
    });
    const data = await processor.prepare(readerFor(dataPath));
    train = data.train;
    val = data.val;
    dataStats = data.stats;
    const d = data.stats.dropped;
    log(
      `data: ${dataPath}: ${data.stats.rows_read} rows, train ${train.length}, val ${val.length}; dropped ` +
        `empty ${d.empty}, too short ${d.too_short}, duplicate ${d.duplicate}, longer than ` +
        `${config.maxSeqLength} tokens ${d.too_long}; longest kept ${data.stats.token_length.max} tokens.`,
    );
  }
  if (train.length === 0) throw new Error(`${dataPath}: no training examples after preparation.`);

  let resume: string | null = null;
  let runDir: string;
  if (options.resume) {
    resume = options.resume;
    if (!(await exists(join(resume, "trainer_state.json")))) {
      throw new Error(
        `--resume ${resume}: no trainer_state.json there. Give a checkpoint folder RUN/checkpoints/step-N.`,
      );
    }
    runDir = config.out ?? dirname(dirname(resolve(resume)));
    checkResumable(await readTrainerState(resume), { ...config, out: runDir }, train, resume);
  } else {
    runDir = config.out ?? join("runs", timestamp());
    await checkOutDir(runDir, options.overwrite ?? false);
  }
  const source: ModelSource = config.model !== null
    ? { kind: "hf", dir: config.model }
    : { kind: "random", config: modelConfig, seed: config.seed };
  return {
    config: { ...config, out: runDir },
    runDir,
    resume,
    source,
    modelConfig,
    modelName,
    tokenizerDir,
    dataPath,
    train,
    val,
    dataStats,
  };
}

export interface RunSummary {
  runDir: string;
  stopped: boolean;
  steps: number;
  skippedSteps: number;
  trainableParameters: number;
  peakMemoryBytes: number;
  seconds: number;
  finalTrainLoss: number | null;
  finalEval: EvalResult | null;
  adapterDir: string | null;
  experimentsPath: string | null;
  hardware: string[];
}

export interface RunOptions {
  /** Makes the model; the real Llama by default. */
  builder?: ModelBuilder;
  /** Devices to train on; opened from config.backend / config.adapter when absent. */
  gpus?: Gpu[];
  overwrite?: boolean;
  log?: (message: string) => void;
  onStep?: (m: StepMetrics, tuner: LLAMAFineTuner) => void;
  /** Called once the model is built, before the first step. */
  onStart?: (tuner: LLAMAFineTuner) => void;
}

/** Runs a planned training job end to end and writes its outputs. */
export async function runTraining(plan: RunPlan, options: RunOptions = {}): Promise<RunSummary> {
  const log = options.log ?? (() => {});
  const { config, runDir } = plan;
  const startedAt = new Date();
  const t0 = performance.now();
  if (!plan.resume && options.overwrite) await Deno.remove(runDir, { recursive: true }).catch(() => {});
  await Deno.mkdir(runDir, { recursive: true });
  await writeFileAtomic(join(runDir, "training_config.json"), configJson(config));
  await writeFileAtomic(join(runDir, "data_stats.json"), JSON.stringify(plan.dataStats, null, 2) + "\n");
  const gpus = options.gpus ??
    [await openGpu({ backend: config.backend, adapter: config.adapter ?? undefined })];
  const strategy = createStrategy(config.strategy, options.builder ?? llamaBuilder);
  log(`strategy: ${strategy.describe()}`);
  log(`model: ${plan.modelName} on ${gpus.map((g) => g.name).join(", ")}`);
  const model = await strategy.createModel(gpus, plan.source, loraConfigOf(config), config.seed);
  let tuner: LLAMAFineTuner | null = null;
  try {
    tuner = new LLAMAFineTuner({
      config,
      strategy,
      model,
      train: plan.train as TrainExample[],
      val: plan.val as TrainExample[],
      runDir,
      baseModelName: config.model ?? plan.modelName,
      onStep: (m) => options.onStep?.(m, tuner!),
      log,
    });
    if (plan.resume) {
      const st = await tuner.resume(plan.resume);
      log(`resumed from ${plan.resume} at step ${st.step} of ${config.maxSteps}`);
    }
    options.onStart?.(tuner);
    const result = await tuner.train();
    const metrics = await readMetrics(join(runDir, "metrics.jsonl"));
    await writeFileAtomic(
      join(runDir, "loss_curve.svg"),
      lossCurveSvg(metrics, `${plan.modelName}: ${config.strategy} r=${config.loraR}`),
    );
    const lastTrain = metrics.filter((m) => !m.skipped).at(-1)?.loss ?? null;
    const summary: RunSummary = {
      runDir,
      stopped: result.stopped,
      steps: tuner.step,
      skippedSteps: tuner.skippedSteps,
      trainableParameters: tuner.trainableParameters,
      peakMemoryBytes: tuner.peakMemoryBytes(),
      seconds: (performance.now() - t0) / 1000,
      finalTrainLoss: lastTrain,
      finalEval: result.lastEval,
      adapterDir: null,
      experimentsPath: null,
      hardware: gpus.map((g) => g.caps.adapter),
    };
    if (result.stopped) return summary;
    await tuner.saveAdapter(runDir);
    summary.adapterDir = runDir;
    const experimentsPath = join(dirname(resolve(runDir)), EXPERIMENTS_FILE);
    const lora = loraConfigOf(config);
    const entry: ExperimentEntry = {
      id: basename(resolve(runDir)),
      model_name: plan.modelName,
      strategy: config.strategy,
      lora_config: {
        r: lora.r,
        lora_alpha: lora.alpha,
        lora_dropout: lora.dropout,
        target_modules: lora.targets,
        use_rslora: lora.useRslora,
        trainable_parameters: tuner.trainableParameters,
      },
      training_config: { ...config },
      dataset: {
        path: plan.dataPath,
        train_examples: plan.train.length,
        val_examples: plan.val.length,
        train_label_tokens: plan.train.reduce((s, e) => s + e.num_label_tokens, 0),
        tokenizer: plan.tokenizerDir,
      },
      hardware: { adapters: summary.hardware, backend: config.backend },
      metrics: {
        final_train_loss: lastTrain,
        final_val_loss: result.lastEval?.loss ?? null,
        val_perplexity: result.lastEval?.perplexity ?? null,
        val_tokens: result.lastEval?.tokens ?? 0,
        trainable_parameters: tuner.trainableParameters,
        peak_memory_bytes: summary.peakMemoryBytes,
        train_seconds: summary.seconds,
        steps: tuner.step,
        skipped_steps: tuner.skippedSteps,
      },
      run_dir: resolve(runDir),
      adapter_path: resolve(runDir),
      started_at: startedAt.toISOString(),
      finished_at: new Date().toISOString(),
    };
    await appendExperiment(experimentsPath, entry);
    summary.experimentsPath = experimentsPath;
    return summary;
  } finally {
    tuner?.destroy();
    model.destroy();
  }
}

/** The closing lines for people: what was trained, where the outputs are, what to run next. */
export function summaryText(s: RunSummary, config: TrainingConfig): string {
  const lines = [
    s.stopped
      ? `stopped at step ${s.steps} of ${config.maxSteps}; resume with: deno task train --resume ${
        join(s.runDir, "checkpoints", `step-${s.steps}`)
      }`
      : `finished ${s.steps} steps (${s.skippedSteps} skipped for non-finite gradients) in ${
        s.seconds.toFixed(1)
      } s`,
    `trainable parameters: ${s.trainableParameters.toLocaleString("en-US")} (LoRA r=${config.loraR}, ` +
    `alpha=${config.loraAlpha}, ${config.loraTargets.length} targets)`,
    `peak GPU memory: ${formatBytes(s.peakMemoryBytes)} on ${s.hardware.join(", ")}`,
  ];
  if (s.finalTrainLoss !== null) lines.push(`final train loss: ${s.finalTrainLoss.toFixed(4)}`);
  if (s.finalEval) {
    lines.push(
      `validation: loss ${s.finalEval.loss.toFixed(4)}, perplexity ${s.finalEval.perplexity.toFixed(2)} ` +
        `(${s.finalEval.tokens} tokens of ${s.finalEval.examples} examples)`,
    );
  }
  lines.push(
    `outputs: ${s.runDir}/ (training_config.json, metrics.jsonl, loss_curve.svg, checkpoints/` +
      (s.adapterDir ? ", adapter_model.safetensors, adapter_config.json)" : ")"),
  );
  if (s.experimentsPath) lines.push(`experiments log: ${s.experimentsPath}`);
  if (config.model === null) {
    lines.push(
      "this was the embedded demo (a tiny random model on the bundled sample). The real job:",
      "  deno task train --model /path/to/Llama-3.1-8B-Instruct --data /path/to/BengaliEmpatheticConversationsCorpus.csv",
    );
  }
  return lines.join("\n");
}
