/**
 * Test fixtures for the data layer: a small Llama 3 layout tokenizer trained in memory on
 * the bundled Bengali sample (plus a little English), so tests need no downloaded files.
 */
import { join } from "node:path";
import { type TokenizerJson, trainByteLevelBpe } from "./bpe_trainer.ts";
import { LlamaTokenizer, type TokenizerConfig } from "./tokenizer.ts";

export const SAMPLE_CSV = new URL("./sample/bengali_empathetic_sample.csv", import.meta.url).pathname;
export const CHAT_TEMPLATE_PATH = new URL("./sample/llama31_chat_template.jinja", import.meta.url).pathname;

const ENGLISH = [
  "I'm sorry you are going through this. It's okay to feel tired; you've carried a lot.",
  "They're here, we'll see. Don't worry: 12 steps, 345 pages, 2024-07-26.",
  "Hello world! This is a test of the tokenizer with some English text and numbers 1234567.",
];

let cached: { json: TokenizerJson; config: TokenizerConfig } | null = null;

/** tokenizer.json object and tokenizer_config.json object of the fixture tokenizer. */
export function fixtureTokenizerFiles(): { json: TokenizerJson; config: TokenizerConfig } {
  if (cached) return cached;
  const csv = Deno.readTextFileSync(SAMPLE_CSV);
  const json = trainByteLevelBpe([csv, ...ENGLISH, ...ENGLISH], { vocabSize: 1024 });
  const config: TokenizerConfig = {
    bos_token: "<|begin_of_text|>",
    eos_token: "<|eot_id|>",
    pad_token: "<|finetune_right_pad_id|>",
    clean_up_tokenization_spaces: true,
    chat_template: Deno.readTextFileSync(CHAT_TEMPLATE_PATH),
  };
  cached = { json, config };
  return cached;
}

/** The fixture tokenizer, in memory. */
export function fixtureTokenizer(): LlamaTokenizer {
  const { json, config } = fixtureTokenizerFiles();
  return new LlamaTokenizer(structuredClone(json), config, {
    tokenizerPath: "fixture/tokenizer.json",
    configPath: "fixture/tokenizer_config.json",
  });
}

/** Writes the fixture tokenizer as a model folder (tokenizer.json + tokenizer_config.json). */
export async function writeFixtureTokenizerDir(dir: string): Promise<string> {
  const { json, config } = fixtureTokenizerFiles();
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(json));
  await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(config));
  return dir;
}

/** Hard strings for tokenizer tests (the golden script uses the same list). */
export const HARD_STRINGS: readonly string[] = [
  "ক্ষমা করো",
  "জ্ঞান বিজ্ঞান",
  "কৃষ্ণচূড়া ফুল ফুটেছে।",
  "আমি তোমাকে ভালোবাসি। তুমি কেমন আছ?",
  "র‍্যাব, র্‍য, য়, ড়, ঢ়, ৎ",
  "কি কী কু কূ কে কৈ কো কৌ কং কঃ কঁ",
  "১২৩৪৫ টাকা, ৬৭৮৯০",
  "😀 👍🏽 👨‍👩‍👧‍👦 🇧🇩 ❤️",
  "Bengali আর English mixed, ok? হ্যাঁ OK.",
  "   leading spaces and trailing   ",
  "a\n\nb\n\n\n\nc",
  "line one\r\nline two\r\n",
  "\t\ttabs\tand spaces  \n",
  "1 12 123 1234 12345 123456 1234567 12345678",
  "I'M they're we'VE you'll he'd she's it'S",
  "<|begin_of_text|>hello<|eot_id|>",
  "text with <|start_header_id|>user<|end_header_id|> inside",
  "।।। danda ।",
  "\u00a0no-break\u00a0space and\u2003em space",
  "",
];
