/**
 * Llama 3 tokenizer: a thin wrapper around `@huggingface/tokenizers` (a pure JS port of the
 * Hugging Face tokenizers library) that loads a model folder's tokenizer.json and
 * tokenizer_config.json, checks that the tokenizer is the kind this engine supports
 * (byte-level BPE, as in Llama 3), and exposes ids as Int32Array.
 *
 * Semantics match Hugging Face `tokenizers` (Rust): special and added tokens written in the
 * text are matched as single tokens; `addSpecialTokens` runs the post-processor (Llama 3:
 * prepend <|begin_of_text|>); decode is the exact inverse of encode (no
 * clean_up_tokenization_spaces, which would change text).
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { join } from "node:path";
import { readJsonFile } from "./fs_util.ts";

/** The tokenizer_config.json fields this project reads. */
export interface TokenizerConfig {
  bos_token?: string | { content: string } | null;
  eos_token?: string | { content: string } | null;
  pad_token?: string | { content: string } | null;
  chat_template?: string | { name: string; template: string }[] | null;
  clean_up_tokenization_spaces?: boolean;
  model_max_length?: number;
  [key: string]: unknown;
}

export interface EncodeOptions {
  /** Run the post-processor (Llama 3: prepend <|begin_of_text|>). Default false. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave out special tokens (<|eot_id|> ...). Default false. */
  skipSpecialTokens?: boolean;
}

/** Where a tokenizer came from, for error messages. */
export interface TokenizerSource {
  tokenizerPath: string;
  configPath: string;
}

function tokenContent(t: string | { content: string } | null | undefined): string | null {
  if (t == null) return null;
  return typeof t === "string" ? t : t.content;
}

/** Checks that a parsed tokenizer.json is a byte-level BPE; throws an error for people if not. */
export function validateTokenizerJson(json: unknown, path: string): void {
  const what = "This engine supports byte-level BPE tokenizers (the Llama 3 / Llama 3.1 tokenizer.json). " +
    "Use the tokenizer.json from the model's Hugging Face folder (e.g. meta-llama/Llama-3.1-8B-Instruct) " +
    "or the bundled data/sample/tokenizer.";
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new Error(`${path}: expected a JSON object (a Hugging Face tokenizer.json). ${what}`);
  }
  const j = json as Record<string, unknown>;
  const model = j.model as Record<string, unknown> | undefined;
  if (!model || typeof model !== "object") {
    throw new Error(`${path}: field "model" is missing. ${what}`);
  }
  if (model.type !== "BPE") {
    throw new Error(
      `${path}: field "model.type" is ${JSON.stringify(model.type ?? null)}, expected "BPE". ${what}`,
    );
  }
  if (!model.vocab || typeof model.vocab !== "object" || !Array.isArray(model.merges)) {
    throw new Error(`${path}: field "model.vocab" or "model.merges" is missing or malformed. ${what}`);
  }
  if (model.byte_fallback === true) {
    throw new Error(
      `${path}: field "model.byte_fallback" is true (a SentencePiece-style BPE, e.g. Llama 2), ` +
        `not a byte-level BPE. ${what}`,
    );
  }
  const hasByteLevel = (node: unknown): boolean => {
    if (!node || typeof node !== "object") return false;
    const n = node as Record<string, unknown>;
    if (n.type === "ByteLevel") return true;
    const kids = (n.pretokenizers ?? n.decoders ?? n.processors) as unknown[] | undefined;
    return Array.isArray(kids) && kids.some(hasByteLevel);
  };
  if (!hasByteLevel(j.pre_tokenizer)) {
    const t = (j.pre_tokenizer as Record<string, unknown> | null)?.type ?? null;
    throw new Error(
      `${path}: field "pre_tokenizer" (type ${JSON.stringify(t)}) has no ByteLevel step. ${what}`,
    );
  }
  if (!hasByteLevel(j.decoder)) {
    const t = (j.decoder as Record<string, unknown> | null)?.type ?? null;
    throw new Error(`${path}: field "decoder" (type ${JSON.stringify(t)}) is not ByteLevel. ${what}`);
  }
}

/** A loaded Llama 3 style tokenizer. */
export class LlamaTokenizer {
  readonly #tok: HfTokenizer;
  readonly #vocab: Map<string, number>;
  readonly #idToToken: string[];
  /** Ids of special added tokens, for skipSpecialTokens. */
  readonly #specialIds: Set<number>;
  /** tokenizer_config.json as read. */
  readonly config: TokenizerConfig;
  /** Where the files came from (paths used in messages). */
  readonly source: TokenizerSource;
  /** Id of the BOS token (<|begin_of_text|>). */
  readonly bosId: number;
  /** BOS token text. */
  readonly bosToken: string;
  /**
   * End-of-sequence ids, generation stops at any of them: the config's eos_token plus
   * <|end_of_text|>, <|eom_id|>, <|eot_id|> where present (Llama 3.1: 128001, 128008, 128009).
   */
  readonly eosIds: readonly number[];
  /** Padding id: the config's pad_token, else <|finetune_right_pad_id|>, else the first eos. */
  readonly padId: number;
  /** Id of <|eot_id|> (ends every chat turn). */
  readonly eotId: number;
  /** Total number of ids (learned vocabulary plus added tokens). */
  readonly vocabSize: number;

  constructor(tokenizerJson: unknown, config: TokenizerConfig, source: TokenizerSource) {
    validateTokenizerJson(tokenizerJson, source.tokenizerPath);
    this.config = config;
    this.source = source;
    // Decode must be the inverse of encode: never let the library "clean up" spaces.
    this.#tok = new HfTokenizer(tokenizerJson as object, { ...config, clean_up_tokenization_spaces: false });
    this.#vocab = this.#tok.get_vocab(true);
    this.#idToToken = [];
    for (const [t, id] of this.#vocab) this.#idToToken[id] = t;
    this.vocabSize = this.#idToToken.length;
    this.#specialIds = new Set();
    for (const [id, tok] of this.#tok.get_added_tokens_decoder()) {
      if (tok.special) this.#specialIds.add(id);
    }
    const need = (name: string, field: string): number => {
      const id = this.#vocab.get(name);
      if (id === undefined) {
        throw new Error(
          `${source.configPath}: ${field} ${JSON.stringify(name)} is not a token of ` +
            `${source.tokenizerPath}. Use a tokenizer_config.json that belongs to this tokenizer.json.`,
        );
      }
      return id;
    };
    this.bosToken = tokenContent(config.bos_token) ?? "<|begin_of_text|>";
    this.bosId = need(this.bosToken, "bos_token");
    const eos: number[] = [];
    const configEos = tokenContent(config.eos_token);
    if (configEos !== null) eos.push(need(configEos, "eos_token"));
    for (const t of ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]) {
      const id = this.#vocab.get(t);
      if (id !== undefined && !eos.includes(id)) eos.push(id);
    }
    if (eos.length === 0) {
      throw new Error(
        `${source.configPath}: no eos_token and none of <|end_of_text|>, <|eom_id|>, <|eot_id|> ` +
          `is in ${source.tokenizerPath}. Set "eos_token" in tokenizer_config.json.`,
      );
    }
    this.eosIds = eos.sort((a, b) => a - b);
    this.eotId = this.#vocab.get("<|eot_id|>") ?? this.eosIds[0];
    const pad = tokenContent(config.pad_token);
    this.padId = pad !== null
      ? need(pad, "pad_token")
      : this.#vocab.get("<|finetune_right_pad_id|>") ?? this.eosIds[0];
  }

  /**
   * Loads `dir`/tokenizer.json and `dir`/tokenizer_config.json (a Hugging Face model folder).
   * Throws an error naming the missing or malformed file and what to do.
   */
  static async fromDir(dir: string): Promise<LlamaTokenizer> {
    const tokenizerPath = join(dir, "tokenizer.json");
    const configPath = join(dir, "tokenizer_config.json");
    const hint = `Point --tokenizer at a Hugging Face model folder that has tokenizer.json and ` +
      `tokenizer_config.json (e.g. a download of meta-llama/Llama-3.1-8B-Instruct), or at the ` +
      `bundled data/sample/tokenizer (made by bench/reference/make_tokenizer_golden.py).`;
    const json = await readJsonFile(tokenizerPath, hint);
    const config = await readJsonFile(configPath, hint);
    if (config === null || typeof config !== "object" || Array.isArray(config)) {
      throw new Error(`${configPath}: expected a JSON object. ${hint}`);
    }
    return new LlamaTokenizer(json, config as TokenizerConfig, { tokenizerPath, configPath });
  }

  /** Token ids of `text`. Special tokens written in the text are matched whole. */
  encode(text: string, options: EncodeOptions = {}): Int32Array {
    const enc = this.#tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? false });
    return Int32Array.from(enc.ids);
  }

  /** Text of `ids`; decode(encode(s)) === s for every string s. */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    let list = Array.from(ids);
    for (const id of list) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new Error(
          `decode: token id ${id} is outside this tokenizer's vocabulary [0, ${this.vocabSize}) ` +
            `(${this.source.tokenizerPath}). Were the ids made by another tokenizer?`,
        );
      }
    }
    if (options.skipSpecialTokens) list = list.filter((id) => !this.#specialIds.has(id));
    if (list.length === 0) return "";
    return this.#tok.decode(list, {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: false,
    });
  }

  /** Id of a token string (vocabulary or added token), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.#vocab.get(token);
  }

  /** Token string of an id, or undefined. */
  idToToken(id: number): string | undefined {
    return this.#idToToken[id];
  }

  /** Whether `id` is a special added token. */
  isSpecial(id: number): boolean {
    return this.#specialIds.has(id);
  }

  /** The chat template string from tokenizer_config.json, or null if it has none. */
  get chatTemplate(): string | null {
    const t = this.config.chat_template;
    if (t == null) return null;
    if (typeof t === "string") return t;
    return t.find((x) => x.name === "default")?.template ?? null;
  }
}
