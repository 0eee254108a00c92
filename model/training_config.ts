// The one typed training configuration: documented defaults (the reference job) <- a JSON config
// file (--config) <- command-line flags. Every field is validated with an error that names the
// field, the value and where it came from. A run writes the config it actually used to
// RUN/training_config.json, which is itself a valid --config file.
//
// JSON config files use the field names below (camelCase); flags are their kebab-case forms
// (loraR -> --lora-r, learningRate -> --learning-rate).

import { ALL_LORA_TARGETS, type LoraConfig, type LoraTarget } from "./types.ts";
import { warmupStepsFromRatio } from "./schedule.ts";

export type StrategyName = "qlora" | "lora";
export type OptimizerName = "adamw8bit" | "adamw";
export type SchedulerName = "cosine" | "linear" | "constant";

export interface TrainingConfig {
  /** "qlora": NF4 base + LoRA (default); "lora": f16 base + LoRA. */
  strategy: StrategyName;
  /** Hugging Face model folder (config.json, safetensors, tokenizer); null = the embedded tiny model. */
  model: string | null;
  /** Corpus CSV (Topics, Question-Title, Questions, Answers) or chat JSONL, or a prepared folder
   * (train.jsonl + val.jsonl from `deno task prepare`); null = the bundled sample CSV. */
  data: string | null;
  /** Tokenizer folder (tokenizer.json + tokenizer_config.json); null = the model folder, or the
   * bundled small tokenizer for the embedded model. */
  tokenizer: string | null;
  /** Run folder; null = runs/<UTC timestamp>. */
  out: string | null;
  /** LoRA rank r. Reference job: 64. */
  loraR: number;
  /** LoRA alpha; scaling = alpha / r (1.0 for the reference job). */
  loraAlpha: number;
  /** Dropout on the LoRA input. Reference job: 0. */
  loraDropout: number;
  /** Wrapped projections; all seven by default. */
  loraTargets: LoraTarget[];
  /** scaling = alpha / sqrt(r) instead of alpha / r. */
  useRslora: boolean;
  /** Longest example kept; longer ones are left out (reported), never truncated. Default 4096. */
  maxSeqLength: number;
  /** Optimizer steps of the run. Default 300. */
  maxSteps: number;
  /** Sequences whose gradients are accumulated into one optimizer step (gradient accumulation
   * with per-device batch 1). Default 8 (the effective batch of 2 GPUs x batch 1 x accumulation 4). */
  sequencesPerStep: number;
  /** Peak learning rate. Default 2e-4. */
  learningRate: number;
  /** Schedule after warmup; "cosine" by default (HF get_cosine_schedule_with_warmup). */
  lrScheduler: SchedulerName;
  /** Warmup as a fraction of maxSteps, rounded up as HF does. Default 0.03 (9 of 300 steps). */
  warmupRatio: number;
  /** Warmup in steps; when set it wins over warmupRatio (HF's warmup_steps). Default null. */
  warmupSteps: number | null;
  /** "adamw8bit" (bitsandbytes blockwise 8-bit states, default) or "adamw" (f32 states). */
  optimizer: OptimizerName;
  adamBeta1: number;
  adamBeta2: number;
  adamEpsilon: number;
  /** Decoupled weight decay. Default 0.0: the HF TrainingArguments default, which the reference
   * notebook-style QLoRA jobs keep; LoRA factors start at zero (B) so decay only slows them. */
  weightDecay: number;
  /** Clip of the global gradient L2 norm. Default 0.3, the QLoRA paper's value. */
  maxGradNorm: number;
  /** Initial loss scale of fp16 mixed precision (torch GradScaler's default 2^16). */
  initLossScale: number;
  /** Clean steps in a row before the scale doubles (torch: 2000); a non-finite gradient skips the
   * step and halves the scale (engine/loss_scaler.ts). */
  lossScaleGrowthInterval: number;
  /** Validation loss every N steps (and at the end); 0 = only at the end. Default 50. */
  evalEvery: number;
  /** Validation examples used (the first N of val); 0 = all. Default 0. */
  evalMaxExamples: number;
  /** Checkpoint every N steps (and at the end); 0 = only at the end. Default 50. */
  saveEvery: number;
  /** Seed of the data split, the data order, LoRA initialization and dropout. Default 3407. */
  seed: number;
  /** Share of the corpus held out for validation when `data` is a corpus file. Default 0.1. */
  valFraction: number;
  /** System prompt added to every chat ({topic} replaced); null = none. */
  systemPrompt: string | null;
  /** WebGPU implementation: "dawn" (npm:webgpu, default) or "deno" (Deno's built-in WebGPU). */
  backend: "dawn" | "deno";
  /** Case-insensitive substring of the adapter name; null = the first adapter. */
  adapter: string | null;
}

/** The reference job: Llama-3.1-8B-Instruct, QLoRA r 64 / alpha 64 on all seven projections. */
export const DEFAULT_TRAINING_CONFIG: Readonly<TrainingConfig> = Object.freeze(
  {
    strategy: "qlora",
    model: null,
    data: null,
    tokenizer: null,
    out: null,
    loraR: 64,
    loraAlpha: 64,
    loraDropout: 0,
    loraTargets: [...ALL_LORA_TARGETS],
    useRslora: false,
    maxSeqLength: 4096,
    maxSteps: 300,
    sequencesPerStep: 8,
    learningRate: 2e-4,
    lrScheduler: "cosine",
    warmupRatio: 0.03,
    warmupSteps: null,
    optimizer: "adamw8bit",
    adamBeta1: 0.9,
    adamBeta2: 0.999,
    adamEpsilon: 1e-8,
    weightDecay: 0.0,
    maxGradNorm: 0.3,
    initLossScale: 65536,
    lossScaleGrowthInterval: 2000,
    evalEvery: 50,
    evalMaxExamples: 0,
    saveEvery: 50,
    seed: 3407,
    valFraction: 0.1,
    systemPrompt: null,
    backend: "dawn",
    adapter: null,
  } satisfies TrainingConfig,
) as Readonly<TrainingConfig>;

/** What the embedded demo (no --model) changes: a short run that a CPU finishes in minutes with a
 * clearly falling loss (a tiny random base learns fast only at a larger learning rate). */
export const EMBEDDED_DEMO_OVERRIDES: Readonly<Partial<TrainingConfig>> = Object.freeze({
  loraR: 16,
  loraAlpha: 32,
  maxSeqLength: 512,
  maxSteps: 24,
  sequencesPerStep: 2,
  learningRate: 1e-2,
  warmupRatio: 0.05,
  evalEvery: 8,
  evalMaxExamples: 4,
  saveEvery: 12,
});

type Kind = "string" | "string?" | "number" | "int" | "int?" | "boolean" | "targets" | `enum:${string}`;

/** Field name -> kind, the validator table (and the list of known fields). */
const FIELDS: Record<keyof TrainingConfig, Kind> = {
  strategy: "enum:qlora|lora",
  model: "string?",
  data: "string?",
  tokenizer: "string?",
  out: "string?",
  loraR: "int",
  loraAlpha: "number",
  loraDropout: "number",
  loraTargets: "targets",
  useRslora: "boolean",
  maxSeqLength: "int",
  maxSteps: "int",
  sequencesPerStep: "int",
  learningRate: "number",
  lrScheduler: "enum:cosine|linear|constant",
  warmupRatio: "number",
  warmupSteps: "int?",
  optimizer: "enum:adamw8bit|adamw",
  adamBeta1: "number",
  adamBeta2: "number",
  adamEpsilon: "number",
  weightDecay: "number",
  maxGradNorm: "number",
  initLossScale: "number",
  lossScaleGrowthInterval: "int",
  evalEvery: "int",
  evalMaxExamples: "int",
  saveEvery: "int",
  seed: "int",
  valFraction: "number",
  systemPrompt: "string?",
  backend: "enum:dawn|deno",
  adapter: "string?",
};

export const CONFIG_FIELDS = Object.keys(FIELDS) as (keyof TrainingConfig)[];

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** loraR -> lora-r */
export function flagName(field: string): string {
  return field.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
}

/** lora-r -> loraR */
export function fieldOfFlag(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** Converts one raw value (JSON value, or a flag's string) to the field's type, or throws. */
function coerce(field: keyof TrainingConfig, raw: unknown, where: string): unknown {
  const kind = FIELDS[field];
  const bad = (what: string) =>
    new ConfigError(`training config field "${field}" = ${JSON.stringify(raw)} (${where}): ${what}.`);
  const fromString = typeof raw === "string" && where.startsWith("flag");
  if (kind === "string" || kind === "string?") {
    if (raw === null && kind === "string?") return null;
    if (typeof raw !== "string" || raw === "") throw bad("expected a non-empty string");
    return raw;
  }
  if (kind === "number" || kind === "int" || kind === "int?") {
    if (raw === null && kind === "int?") return null;
    if (fromString && (raw === "null" || raw === "none") && kind === "int?") return null;
    const n = fromString ? Number(raw) : raw;
    if (typeof n !== "number" || !Number.isFinite(n) || (fromString && (raw as string).trim() === "")) {
      throw bad("expected a finite number");
    }
    if (kind !== "number" && !Number.isInteger(n)) throw bad("expected an integer");
    return n;
  }
  if (kind === "boolean") {
    if (typeof raw === "boolean") return raw;
    if (fromString && (raw === "true" || raw === "false")) return raw === "true";
    throw bad("expected true or false");
  }
  if (kind === "targets") {
    const list = fromString ? (raw as string).split(",").map((s) => s.trim()).filter(Boolean) : raw;
    if (!Array.isArray(list) || list.length === 0) {
      throw bad(`expected a non-empty list of ${ALL_LORA_TARGETS.join(", ")}`);
    }
    if (fromString && list.length === 1 && list[0] === "all") return [...ALL_LORA_TARGETS];
    for (const t of list) {
      if (!ALL_LORA_TARGETS.includes(t)) {
        throw bad(`${JSON.stringify(t)} is not a LoRA target; use any of ${ALL_LORA_TARGETS.join(", ")}`);
      }
    }
    if (new Set(list).size !== list.length) throw bad("a target is listed twice");
    return [...list];
  }
  const choices = kind.slice(5).split("|");
  if (typeof raw !== "string" || !choices.includes(raw)) throw bad(`expected one of ${choices.join(", ")}`);
  return raw;
}

/** Where each field's value came from, for error messages: "default", "config FILE", "flag --x". */
export type ConfigSources = Partial<Record<keyof TrainingConfig, string>>;

export interface ConfigLayer {
  /** Raw values (JSON-typed, or strings from flags). */
  values: Record<string, unknown>;
  /** "config FILE" or "flag" (flags are named per field), or "embedded demo". */
  origin: string;
}

/** Merges layers over the defaults, validating every value and the whole. Unknown fields are
 * errors that list the known ones. */
export function resolveConfig(
  layers: readonly ConfigLayer[],
  base: Readonly<TrainingConfig> = DEFAULT_TRAINING_CONFIG,
): { config: TrainingConfig; sources: ConfigSources } {
  const config = structuredClone(base) as TrainingConfig;
  const sources: ConfigSources = {};
  for (const layer of layers) {
    for (const [key, raw] of Object.entries(layer.values)) {
      if (raw === undefined) continue;
      const isFlag = layer.origin === "flag";
      const field = (isFlag ? fieldOfFlag(key) : key) as keyof TrainingConfig;
      const where = isFlag ? `flag --${flagName(field)}` : layer.origin;
      if (!(field in FIELDS)) {
        throw new ConfigError(
          `unknown training config field ${JSON.stringify(key)} (${where}). Known fields: ` +
            CONFIG_FIELDS.join(", ") + ".",
        );
      }
      (config as unknown as Record<string, unknown>)[field] = coerce(field, raw, where);
      sources[field] = where;
    }
  }
  validateConfig(config, sources);
  return { config, sources };
}

/** Range and consistency checks; errors name the field, its value and its source. */
export function validateConfig(c: TrainingConfig, sources: ConfigSources = {}): void {
  const fail = (field: keyof TrainingConfig, what: string): never => {
    throw new ConfigError(
      `training config field "${field}" = ${JSON.stringify(c[field])} (${sources[field] ?? "default"}): ` +
        `${what}.`,
    );
  };
  for (const [field, kind] of Object.entries(FIELDS) as [keyof TrainingConfig, Kind][]) {
    const v = c[field];
    if (kind.endsWith("?") && v === null) continue;
    if ((kind === "int" || kind === "number" || kind === "int?") && (typeof v !== "number" || !isFinite(v))) {
      fail(field, "expected a finite number");
    }
  }
  if (c.loraR < 1) fail("loraR", "must be an integer >= 1 (reference job: 64)");
  if (!(c.loraAlpha > 0)) fail("loraAlpha", "must be positive (reference job: 64)");
  if (!(c.loraDropout >= 0 && c.loraDropout < 1)) fail("loraDropout", "must lie in [0, 1)");
  if (c.maxSeqLength < 8) fail("maxSeqLength", "must be an integer >= 8 (reference job: 4096)");
  if (c.maxSteps < 1) fail("maxSteps", "must be an integer >= 1");
  if (c.sequencesPerStep < 1) fail("sequencesPerStep", "must be an integer >= 1");
  if (!(c.learningRate > 0 && c.learningRate < 1)) fail("learningRate", "must lie in (0, 1), e.g. 2e-4");
  if (!(c.warmupRatio >= 0 && c.warmupRatio < 1)) fail("warmupRatio", "must lie in [0, 1)");
  if (c.warmupSteps !== null && !(c.warmupSteps >= 0 && c.warmupSteps < c.maxSteps)) {
    fail("warmupSteps", `must lie in [0, maxSteps = ${c.maxSteps})`);
  }
  if (!(c.adamBeta1 >= 0 && c.adamBeta1 < 1)) fail("adamBeta1", "must lie in [0, 1)");
  if (!(c.adamBeta2 >= 0 && c.adamBeta2 < 1)) fail("adamBeta2", "must lie in [0, 1)");
  if (!(c.adamEpsilon > 0)) fail("adamEpsilon", "must be positive");
  if (!(c.weightDecay >= 0 && c.weightDecay * c.learningRate < 1)) {
    fail("weightDecay", "must be >= 0 with weightDecay * learningRate < 1");
  }
  if (!(c.maxGradNorm > 0)) fail("maxGradNorm", "must be positive (e.g. 0.3 or 1.0)");
  if (!(c.initLossScale >= 1 && c.initLossScale <= 2 ** 24)) fail("initLossScale", "must lie in [1, 2^24]");
  if (c.lossScaleGrowthInterval < 1) fail("lossScaleGrowthInterval", "must be an integer >= 1");
  if (c.evalEvery < 0) fail("evalEvery", "must be >= 0 (0 = only at the end)");
  if (c.evalMaxExamples < 0) fail("evalMaxExamples", "must be >= 0 (0 = all)");
  if (c.saveEvery < 0) fail("saveEvery", "must be >= 0 (0 = only at the end)");
  if (c.seed < 0 || c.seed > 0xffffffff) fail("seed", "must be an integer in [0, 2^32)");
  if (!(c.valFraction > 0 && c.valFraction < 1)) fail("valFraction", "must lie in (0, 1), e.g. 0.1");
}

/** Parses a JSON config file's text into a layer; errors name the file. */
export function configFileLayer(text: string, path: string): ConfigLayer {
  let values: unknown;
  try {
    values = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${path}: not valid JSON (${(e as Error).message}).`);
  }
  if (typeof values !== "object" || values === null || Array.isArray(values)) {
    throw new ConfigError(
      `${path}: expected a JSON object of training config fields, e.g. {"maxSteps": 300}.`,
    );
  }
  return { values: values as Record<string, unknown>, origin: `config ${path}` };
}

/** The LoRA part of the config in the model contract's terms. */
export function loraConfigOf(c: TrainingConfig): LoraConfig {
  return {
    r: c.loraR,
    alpha: c.loraAlpha,
    dropout: c.loraDropout,
    targets: [...c.loraTargets],
    useRslora: c.useRslora,
  };
}

/** The warmup length in steps: warmupSteps when set, else ceil(warmupRatio * maxSteps). */
export function warmupStepsOf(c: TrainingConfig): number {
  return c.warmupSteps ?? warmupStepsFromRatio(c.warmupRatio, c.maxSteps);
}

/** JSON text of the config as used (a valid --config file). */
export function configJson(c: TrainingConfig): string {
  return JSON.stringify(c, null, 2) + "\n";
}
