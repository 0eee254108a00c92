// Evaluation of a fine-tuned model on the validation set:
//   - perplexity = exp(sum of assistant-token NLL / number of those tokens) over the whole set
//     (token-weighted; FACTS.md), with the mean NLL as val_loss;
//   - responses generated with the KV cache for the first N validation prompts (greedy by default),
//     scored against the reference answers with corpus BLEU (sacreBLEU's intl and 13a tokenizers,
//     with their signatures) and ROUGE-L F1 on Unicode word tokens (data/metrics.ts).
// Outputs in the run folder RUN (each written whole, temporary file then rename):
//   RUN/GeneratedResponses.json   [{experiment_id, input_text, reference, response, settings,
//                                   prompt_tokens, new_tokens, stop_reason, latency_ms}]
//   RUN/evaluation_results.md     numbers, BLEU signatures, examples, the loss curve, and the human
//                                 evaluation section when RUN/human_ratings.json exists
//   LLAMAExperiments.json         the run's entry (RUN's own file, else the one in RUN's parent):
//                                 metrics.perplexity, val_loss, bleu, bleu_13a, bleu_signature,
//                                 bleu_13a_signature, rouge_l, evaluation {...}
// Nothing earlier is lost: when new responses differ from those already in the folder, the earlier
// GeneratedResponses.json (and human_ratings.json, which rated them) are kept under a timestamped
// name, and the entry's earlier evaluation metrics move to metrics.previous_evaluations.

import { basename, join, resolve } from "node:path";
import { type ChatMessage, type ChatTemplate, encodePrompt } from "../data/chat_template.ts";
import { readerFor } from "../data/corpus.ts";
import { DatasetProcessor, type PreparedExample, readPreparedJsonl } from "../data/dataset_processor.ts";
import { type BleuResult, corpusBleu, corpusRougeL } from "../data/metrics.ts";
import type { LlamaTokenizer } from "../data/tokenizer.ts";
import { type GenerationSettings, Generator, KvCacheModel, resolvedSettings } from "./generate.ts";
import { experimentsPath, type HumanAggregates, humanEvalMarkdown } from "./human_eval.ts";
import type { Gpu } from "../engine/gpu.ts";
import type { Llama } from "./llama.ts";
import { loadInferenceModel } from "./run_model.ts";
import { writeFileAtomic } from "./run_outputs.ts";
import { BUNDLED_SAMPLE_CSV } from "./train_run.ts";
import type { TrainingConfig } from "./training_config.ts";

export const RESPONSES_FILE = "GeneratedResponses.json";
export const REPORT_FILE = "evaluation_results.md";
export const RATINGS_FILE = "human_ratings.json";

export interface EvaluationOptions {
  /** Responses generated for the first N validation examples; default 16; 0 = none. */
  samples?: number;
  /** Perplexity over the first N validation examples; 0 (default) = all. */
  perplexityExamples?: number;
  /** Sampling and length of the responses: greedy and 256 new tokens by default. */
  generation?: GenerationSettings;
  /** Examples shown in evaluation_results.md; default 5. */
  reportExamples?: number;
  /** Progress messages for people. */
  log?: (message: string) => void;
}

/** One entry of GeneratedResponses.json. */
export interface GeneratedResponseEntry {
  experiment_id: string;
  example_id: string;
  input_text: string;
  reference: string;
  response: string;
  settings: Required<GenerationSettings>;
  prompt_tokens: number;
  new_tokens: number;
  stop_reason: string;
  latency_ms: number;
}

export interface EvaluationResult {
  experimentId: string;
  perplexity: number;
  valLoss: number;
  valTokens: number;
  valExamples: number;
  bleu: BleuResult | null;
  bleu13a: BleuResult | null;
  rougeL: number | null;
  responses: GeneratedResponseEntry[];
  experiments: { path: string; updated: boolean; note?: string };
  /** Files kept aside because the new responses replaced them. */
  keptAside: string[];
}

/** What the evaluator works on. */
export interface EvaluationInputs {
  model: Llama;
  tokenizer: LlamaTokenizer;
  template: ChatTemplate;
  val: readonly PreparedExample[];
  runDir: string;
  /** For the report. */
  modelName: string;
  /** The entry id in LLAMAExperiments.json; the run folder's name by default. */
  experimentId?: string;
}

/** The validation examples of a run's data, prepared as training prepared them (same tokenizer,
 * template, seed, split and length limit), or read from a prepared folder's val.jsonl. */
export async function loadValidationSet(
  config: TrainingConfig,
  tokenizer: LlamaTokenizer,
  template: ChatTemplate,
  dataOverride?: string | null,
): Promise<PreparedExample[]> {
  const dataPath = dataOverride ?? config.data ?? BUNDLED_SAMPLE_CSV;
  let isDir = false;
  try {
    isDir = (await Deno.stat(dataPath)).isDirectory;
  } catch {
    throw new Error(
      `${dataPath}: not found. The run's data must be where training read it; give --data PATH ` +
        `(the corpus file, or a \`deno task prepare\` folder with val.jsonl).`,
    );
  }
  if (isDir) {
    const vp = join(dataPath, "val.jsonl");
    try {
      return await readPreparedJsonl(vp);
    } catch (e) {
      throw new Error(`${vp}: cannot read the validation set (${(e as Error).message}).`);
    }
  }
  const processor = new DatasetProcessor(tokenizer, template, {
    valFraction: config.valFraction,
    seed: config.seed,
    maxSeqLength: config.maxSeqLength,
    systemPrompt: config.systemPrompt,
  });
  return (await processor.prepare(readerFor(dataPath))).val;
}

/** The prompt (every message before the last assistant turn), the user text and the reference. */
export function splitExample(
  e: PreparedExample,
): { prompt: ChatMessage[]; input: string; reference: string } {
  const last = e.messages.findLastIndex((m) => m.role === "assistant");
  if (last < 1) {
    throw new Error(
      `validation example ${e.id} has no assistant answer after a prompt; prepare the data again`,
    );
  }
  const prompt = e.messages.slice(0, last);
  const user = prompt.findLast((m) => m.role === "user");
  return { prompt, input: user?.content ?? "", reference: e.messages[last].content };
}

async function readJsonIfExists(path: string, what: string): Promise<unknown | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: ${what} is not valid JSON (${(e as Error).message}); fix it or move it aside.`);
  }
}

function stamp(d = new Date()): string {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
}

function fmt(x: number | null, digits = 2): string {
  return x === null || !Number.isFinite(x) ? "-" : x.toFixed(digits);
}

function quote(text: string): string {
  return text.split("\n").map((l) => `> ${l}`).join("\n");
}

export class Evaluator {
  readonly experimentId: string;
  readonly options: Required<Omit<EvaluationOptions, "generation" | "log">> & {
    generation: Required<GenerationSettings>;
  };
  #log: (m: string) => void;

  constructor(readonly inputs: EvaluationInputs, options: EvaluationOptions = {}) {
    this.experimentId = inputs.experimentId ?? basename(resolve(inputs.runDir));
    this.options = {
      samples: options.samples ?? 16,
      perplexityExamples: options.perplexityExamples ?? 0,
      reportExamples: options.reportExamples ?? 5,
      generation: resolvedSettings(options.generation),
    };
    for (const f of ["samples", "perplexityExamples", "reportExamples"] as const) {
      const v = this.options[f];
      if (!Number.isInteger(v) || v < 0) {
        throw new RangeError(`evaluation option ${f} = ${v}: a whole number >= 0`);
      }
    }
    this.#log = options.log ?? (() => {});
  }

  /** Token-weighted perplexity over the assistant tokens of the validation set. */
  async perplexity(): Promise<{ perplexity: number; loss: number; tokens: number; examples: number }> {
    const { val, model } = this.inputs;
    const n = this.options.perplexityExamples > 0
      ? Math.min(this.options.perplexityExamples, val.length)
      : val.length;
    let nll = 0;
    let tokens = 0;
    for (let i = 0; i < n; i++) {
      const e = val[i];
      const r = await model.loss(Int32Array.from(e.input_ids), Int32Array.from(e.labels));
      nll += r.nll;
      tokens += r.tokens;
    }
    if (tokens === 0) {
      throw new Error(
        `no assistant tokens in the ${n} validation examples: nothing to measure perplexity on`,
      );
    }
    const loss = nll / tokens;
    return { perplexity: Math.exp(loss), loss, tokens, examples: n };
  }

  /** Responses for the first `samples` validation prompts. */
  async generateResponses(): Promise<GeneratedResponseEntry[]> {
    const { val, model, tokenizer, template } = this.inputs;
    const n = Math.min(this.options.samples, val.length);
    if (n === 0) return [];
    const settings = this.options.generation;
    const split = val.slice(0, n).map(splitExample);
    const longest = Math.max(...split.map((s) => encodePrompt(tokenizer, template, s.prompt).length));
    const capacity = Math.min(model.config.maxPositionEmbeddings, longest + settings.maxNewTokens);
    const kv = await KvCacheModel.create(model, { maxTokens: capacity });
    try {
      const gen = new Generator(kv, tokenizer, template);
      const out: GeneratedResponseEntry[] = [];
      for (let i = 0; i < n; i++) {
        const s = split[i];
        const r = await gen.chat(s.prompt, settings);
        out.push({
          experiment_id: this.experimentId,
          example_id: val[i].id,
          input_text: s.input,
          reference: s.reference,
          response: r.text.trim(),
          settings,
          prompt_tokens: r.promptTokens,
          new_tokens: r.ids.length,
          stop_reason: r.stopReason,
          latency_ms: Math.round(r.latencyMs * 10) / 10,
        });
        this.#log(
          `response ${i + 1}/${n}: ${r.ids.length} tokens in ${
            (r.latencyMs / 1000).toFixed(2)
          } s (${r.stopReason})`,
        );
      }
      return out;
    } finally {
      kv.destroy();
    }
  }

  /** Perplexity, responses and scores; writes the outputs (see the file comment). */
  async run(): Promise<EvaluationResult> {
    const runDir = this.inputs.runDir;
    this.#log(`perplexity over ${this.inputs.val.length} validation examples...`);
    const ppl = await this.perplexity();
    this.#log(
      `perplexity ${ppl.perplexity.toFixed(3)} (val loss ${ppl.loss.toFixed(4)}, ${ppl.tokens} tokens)`,
    );
    const responses = await this.generateResponses();
    const hyps = responses.map((r) => r.response);
    const refs = responses.map((r) => r.reference);
    const bleu = responses.length ? corpusBleu(hyps, refs, { tokenize: "intl" }) : null;
    const bleu13a = responses.length ? corpusBleu(hyps, refs, { tokenize: "13a" }) : null;
    const rougeL = responses.length ? corpusRougeL(hyps, refs).f1 : null;

    const keptAside: string[] = [];
    const responsesPath = join(runDir, RESPONSES_FILE);
    const previous = await readJsonIfExists(responsesPath, "the earlier responses");
    const changed = previous !== undefined && !sameResponses(previous, responses);
    const when = stamp();
    if (changed) {
      for (const f of [RESPONSES_FILE, RATINGS_FILE]) {
        const from = join(runDir, f);
        const to = join(runDir, f.replace(/\.json$/, `.${when}.json`));
        try {
          await Deno.rename(from, to);
          keptAside.push(to);
        } catch (e) {
          if (!(e instanceof Deno.errors.NotFound)) throw e;
        }
      }
    }
    await writeFileAtomic(responsesPath, JSON.stringify(responses, null, 2) + "\n");

    const ratings = await readJsonIfExists(join(runDir, RATINGS_FILE), "the human ratings") as
      | { aggregates?: HumanAggregates }
      | undefined;
    const metrics = {
      perplexity: ppl.perplexity,
      val_loss: ppl.loss,
      eval_tokens: ppl.tokens,
      eval_examples: ppl.examples,
      bleu: bleu?.score ?? null,
      bleu_13a: bleu13a?.score ?? null,
      bleu_signature: bleu?.signature ?? null,
      bleu_13a_signature: bleu13a?.signature ?? null,
      rouge_l: rougeL,
      evaluation: {
        responses: responses.length,
        responses_file: RESPONSES_FILE,
        generation: this.options.generation,
        evaluated_at: new Date().toISOString(),
        kept_aside: keptAside.map((p) => basename(p)),
      },
    };
    const experiments = await this.#updateExperiments(metrics, changed);
    const result: EvaluationResult = {
      experimentId: this.experimentId,
      perplexity: ppl.perplexity,
      valLoss: ppl.loss,
      valTokens: ppl.tokens,
      valExamples: ppl.examples,
      bleu,
      bleu13a,
      rougeL,
      responses,
      experiments,
      keptAside,
    };
    const lossCurve = await Deno.stat(join(runDir, "loss_curve.svg")).then(() => true, () => false);
    await writeFileAtomic(join(runDir, REPORT_FILE), this.report(result, lossCurve, ratings?.aggregates));
    return result;
  }

  async #updateExperiments(
    metrics: Record<string, unknown>,
    responsesChanged: boolean,
  ): Promise<EvaluationResult["experiments"]> {
    const path = await experimentsPath(this.inputs.runDir);
    const data = await readJsonIfExists(path, "the experiments log");
    if (data === undefined) return { path, updated: false, note: `${path} not found` };
    if (!Array.isArray(data)) throw new Error(`${path}: expected a JSON array of experiments; move it aside`);
    const entry = data.find((e) => (e as { id?: unknown })?.id === this.experimentId) as
      | Record<string, unknown>
      | undefined;
    if (!entry) {
      return { path, updated: false, note: `${path} has no experiment with id "${this.experimentId}"` };
    }
    const old = (entry.metrics && typeof entry.metrics === "object" ? entry.metrics : {}) as Record<
      string,
      unknown
    >;
    if (old.evaluation !== undefined) {
      const earlier: Record<string, unknown> = {};
      for (const k of [...Object.keys(metrics), ...(responsesChanged ? ["human_eval"] : [])]) {
        if (k in old) earlier[k] = old[k];
      }
      const list = Array.isArray(old.previous_evaluations) ? old.previous_evaluations : [];
      old.previous_evaluations = [...list, earlier];
      if (responsesChanged) delete old.human_eval;
    }
    entry.metrics = { ...old, ...metrics };
    await writeFileAtomic(path, JSON.stringify(data, null, 2) + "\n");
    return { path, updated: true };
  }

  /** The markdown report. */
  report(r: EvaluationResult, lossCurve: boolean, human?: HumanAggregates): string {
    const g = this.options.generation;
    const mode = g.doSample
      ? `sampling (temperature ${g.temperature}, top-k ${g.topK || "off"}, top-p ${g.topP}, seed ${g.seed})`
      : "greedy";
    const lines = [
      `# Evaluation: ${this.experimentId}`,
      "",
      `Model: ${this.inputs.modelName}, base ${this.inputs.model.baseFormat}, LoRA r=${this.inputs.model.lora.r} ` +
      `on ${this.inputs.model.lora.targets.join(", ") || "nothing"}; device ${
        this.inputs.model.gpus.map((x) => x.name).join(", ")
      }.`,
      "",
      "## Metrics",
      "",
      "| metric | value |",
      "|---|---|",
      `| perplexity (assistant tokens, token-weighted) | ${fmt(r.perplexity, 3)} |`,
      `| validation loss (mean NLL per token) | ${fmt(r.valLoss, 4)} |`,
      `| validation examples / assistant tokens | ${r.valExamples} / ${r.valTokens} |`,
      `| BLEU (intl tokenizer) | ${fmt(r.bleu?.score ?? null)} |`,
      `| BLEU (13a tokenizer) | ${fmt(r.bleu13a?.score ?? null)} |`,
      `| ROUGE-L F1 (Unicode word tokens, x100) | ${fmt(r.rougeL === null ? null : 100 * r.rougeL)} |`,
      "",
    ];
    if (r.bleu && r.bleu13a) {
      lines.push(
        "BLEU signatures (sacreBLEU):",
        "",
        `- intl: \`${r.bleu.signature}\``,
        `- 13a: \`${r.bleu13a.signature}\``,
        "",
        "The intl tokenizer splits Unicode punctuation such as the danda (।) off Bengali words; 13a, " +
          "sacreBLEU's default, splits only ASCII punctuation.",
        "",
      );
    }
    if (r.responses.length > 0) {
      const newTokens = r.responses.reduce((s, x) => s + x.new_tokens, 0);
      const ms = r.responses.reduce((s, x) => s + x.latency_ms, 0);
      lines.push(
        `Responses: ${r.responses.length} validation prompts, ${mode}, at most ${g.maxNewTokens} new tokens, ` +
          `repetition penalty ${g.repetitionPenalty}; ${newTokens} tokens in ${(ms / 1000).toFixed(1)} s ` +
          `(${(newTokens / Math.max(ms / 1000, 1e-9)).toFixed(1)} tokens/s including prefill). ` +
          `All of them: [${RESPONSES_FILE}](${RESPONSES_FILE}).`,
        "",
      );
    }
    if (lossCurve) lines.push("## Loss curve", "", "![training and validation loss](loss_curve.svg)", "");
    const shown = r.responses.slice(0, this.options.reportExamples);
    if (shown.length > 0) {
      lines.push("## Examples", "");
      shown.forEach((x, i) => {
        lines.push(
          `### ${i + 1}. ${x.example_id}`,
          "",
          "Prompt:",
          "",
          quote(x.input_text),
          "",
          "Reference:",
          "",
          quote(x.reference),
          "",
          `Response (${x.new_tokens} tokens, ${x.stop_reason}):`,
          "",
          quote(x.response || "(empty)"),
          "",
        );
      });
    }
    if (human) lines.push(humanEvalMarkdown(human));
    return lines.join("\n").replace(/\n*$/, "\n");
  }
}

function sameResponses(previous: unknown, next: readonly GeneratedResponseEntry[]): boolean {
  if (!Array.isArray(previous) || previous.length !== next.length) return false;
  return previous.every((p, i) =>
    (p as GeneratedResponseEntry)?.input_text === next[i].input_text &&
    (p as GeneratedResponseEntry)?.response === next[i].response
  );
}

export interface EvaluateRunOptions extends EvaluationOptions {
  gpus: Gpu[];
  /** The validation data, when it is not where the run's training_config.json says. */
  data?: string | null;
  /** A Hugging Face folder holding the run's base, when it moved since training. */
  model?: string | null;
}

/** Evaluates a finished training run: its base and adapter, its validation set, its outputs. */
export async function evaluateRun(runDir: string, options: EvaluateRunOptions): Promise<EvaluationResult> {
  const loaded = await loadInferenceModel({ run: runDir, model: options.model, gpus: options.gpus });
  try {
    const val = await loadValidationSet(
      loaded.trainingConfig!,
      loaded.tokenizer,
      loaded.template,
      options.data,
    );
    if (val.length === 0) {
      throw new Error(
        `the run's data has no validation examples; give --data with a val.jsonl folder or corpus`,
      );
    }
    const evaluator = new Evaluator({
      model: loaded.model,
      tokenizer: loaded.tokenizer,
      template: loaded.template,
      val,
      runDir,
      modelName: loaded.modelName,
    }, options);
    return await evaluator.run();
  } finally {
    loaded.model.destroy();
  }
}
