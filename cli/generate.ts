/**
 * deno task generate [--model DIR] [--adapter DIR] [--run DIR] [--prompt "..."] [--system "..."]
 *   [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K] [--repetition-penalty R] [--seed S]
 *   [--max-context N] [--base-format nf4|f16] [--merge] [--backend dawn|deno] [--gpu NAME]
 *
 * Generates an assistant reply with the KV cache, streaming tokens to stdout. With --prompt: one reply.
 * Without: an interactive chat that keeps the conversation (one user message per line; /reset starts
 * over, /exit quits). The model: --run DIR (a training run: its base and adapter), or --model DIR (a
 * Hugging Face folder) with an optional --adapter DIR; with neither, the newest finished run of the
 * embedded model under runs/. Greedy by default; a temperature above 0 samples (seeded).
 */
import { parseArgs } from "node:util";
import { openGpu } from "../engine/gpu.ts";
import type { ChatMessage } from "../data/chat_template.ts";
import { type GenerationSettings, Generator, KvCacheModel, resolvedSettings } from "../model/generate.ts";
import { findLatestEmbeddedRun, loadInferenceModel } from "../model/run_model.ts";
import { stdinLines } from "./mod.ts";

const USAGE = `Usage: deno task generate [options]
  --prompt TEXT             one reply to TEXT (without it: interactive chat, /reset, /exit)
  --system TEXT             system message
  --run DIR                 a training run folder: its base model and adapter
  --model DIR               a Hugging Face model folder (config.json, safetensors, tokenizer)
  --adapter DIR             a PEFT adapter folder (adapter_config.json, adapter_model.safetensors)
                            (none of --run/--model: the newest embedded-model run under runs/)
  --tokenizer DIR           tokenizer folder (default: the run's or the model's)
  --max-new-tokens N        most new tokens per reply (256)
  --temperature T           0 = greedy (default); > 0 samples
  --top-p P                 nucleus filtering (1 = off)
  --top-k K                 top-k filtering (0 = off)
  --repetition-penalty R    HF repetition penalty (1 = off)
  --seed S                  sampling seed (0)
  --max-context N           KV cache size in tokens (default min(4096, max_position_embeddings))
  --base-format nf4|f16     base weights on the GPU (default: the run's strategy, else nf4)
  --merge                   fold LoRA into the f16 base weights (f16 base only)
  --backend dawn|deno       WebGPU implementation (dawn)
  --gpu NAME                adapter name substring
  -h, --help                this text`;

function num(name: string, v: string | undefined, integer = false): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (v.trim() === "" || !Number.isFinite(x) || (integer && !Number.isInteger(x))) {
    throw new Error(`--${name} ${JSON.stringify(v)}: expected ${integer ? "a whole number" : "a number"}`);
  }
  return x;
}

/** Sampling flags shared with `deno task evaluate`. */
export const SAMPLING_OPTIONS = {
  "max-new-tokens": { type: "string" },
  temperature: { type: "string" },
  "top-p": { type: "string" },
  "top-k": { type: "string" },
  "repetition-penalty": { type: "string" },
  seed: { type: "string" },
} as const;

export function samplingSettings(values: Record<string, unknown>): GenerationSettings {
  const s = (k: string) => values[k] as string | undefined;
  const settings: GenerationSettings = {
    maxNewTokens: num("max-new-tokens", s("max-new-tokens"), true),
    temperature: num("temperature", s("temperature")),
    topP: num("top-p", s("top-p")),
    topK: num("top-k", s("top-k"), true),
    repetitionPenalty: num("repetition-penalty", s("repetition-penalty")),
    seed: num("seed", s("seed"), true),
  };
  const r = resolvedSettings(settings);
  if (r.maxNewTokens < 1) throw new Error(`--max-new-tokens ${r.maxNewTokens}: must be >= 1`);
  return settings;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      prompt: { type: "string" },
      system: { type: "string" },
      run: { type: "string" },
      model: { type: "string" },
      adapter: { type: "string" },
      tokenizer: { type: "string" },
      "max-context": { type: "string" },
      "base-format": { type: "string" },
      merge: { type: "boolean", default: false },
      backend: { type: "string", default: "dawn" },
      gpu: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
      ...SAMPLING_OPTIONS,
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.backend !== "dawn" && values.backend !== "deno") {
    throw new Error(`--backend ${values.backend}: expected dawn or deno`);
  }
  const baseFormat = values["base-format"];
  if (baseFormat !== undefined && baseFormat !== "nf4" && baseFormat !== "f16") {
    throw new Error(`--base-format ${baseFormat}: expected nf4 or f16`);
  }
  const settings = samplingSettings(values);
  const maxContext = num("max-context", values["max-context"], true);
  let run = values.run ?? null;
  if (run === null && !values.model) {
    if (values.adapter) throw new Error("--adapter needs --model (or --run): which base does it belong to?");
    run = await findLatestEmbeddedRun();
  }
  const err = (s: string) => void Deno.stderr.writeSync(new TextEncoder().encode(s));
  const gpu = await openGpu({ backend: values.backend, adapter: values.gpu });
  const loaded = await loadInferenceModel({
    run,
    model: values.model ?? null,
    adapter: values.adapter ?? null,
    tokenizer: values.tokenizer ?? null,
    baseFormat: baseFormat ?? null,
    gpus: [gpu],
  });
  err(
    `model: ${loaded.modelName} (${loaded.baseFormat} base)` +
      (loaded.adapterDir ? `, adapter ${loaded.adapterDir}` : ", no adapter") + ` on ${gpu.name}\n`,
  );
  const kv = await KvCacheModel.create(loaded.model, { maxTokens: maxContext, merge: values.merge });
  const out = (s: string) => void Deno.stdout.writeSync(new TextEncoder().encode(s));
  try {
    const gen = new Generator(kv, loaded.tokenizer, loaded.template);
    const start: ChatMessage[] = values.system ? [{ role: "system", content: values.system }] : [];
    const reply = async (messages: ChatMessage[]) => {
      const r = await gen.chat(messages, settings, out);
      out("\n");
      const decodeS = r.decodeMs / 1000;
      err(
        `[${r.promptTokens} prompt tokens, ${r.ids.length} new (${r.stopReason}); prefill ` +
          `${r.prefillMs.toFixed(0)} ms, ${(r.ids.length / Math.max(decodeS, 1e-9)).toFixed(1)} tokens/s]\n`,
      );
      return r.text.trim();
    };
    if (values.prompt !== undefined) {
      await reply([...start, { role: "user", content: values.prompt }]);
      return 0;
    }
    err("chat: type a message and Enter; /reset starts over, /exit quits.\n");
    let messages = [...start];
    const lines = stdinLines();
    for (;;) {
      err("> ");
      const next = await lines.next();
      if (next.done) break;
      const line = next.value.trim();
      if (line === "") continue;
      if (line === "/exit" || line === "/quit") break;
      if (line === "/reset") {
        messages = [...start];
        err("(conversation cleared)\n");
        continue;
      }
      messages.push({ role: "user", content: line });
      try {
        messages.push({ role: "assistant", content: await reply(messages) });
      } catch (e) {
        if (!(e instanceof RangeError)) throw e;
        messages.pop();
        err(`${e.message}\n(type /reset to start a new conversation)\n`);
      }
    }
    return 0;
  } finally {
    kv.destroy();
    loaded.model.destroy();
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`generate: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
