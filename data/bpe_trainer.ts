/**
 * A small byte-level BPE trainer that writes a tokenizer.json in the Llama 3 layout.
 *
 * The project's shipped tokenizer (data/sample/tokenizer) is made by the Hugging Face
 * `tokenizers` trainer (bench/reference/make_tokenizer_golden.py). This trainer exists so
 * that tests and tools can build a tokenizer of the same shape in memory, without any files:
 * the same split regex, byte-level alphabet, `ignore_merges: true`, the Llama 3 special
 * tokens placed after the learned vocabulary, a TemplateProcessing post-processor that
 * prepends <|begin_of_text|>, and a ByteLevel decoder.
 *
 * Training is the classic algorithm: count pre-tokens, start from the 256 byte symbols,
 * repeatedly merge the most frequent adjacent pair (ties: the pair whose symbol ids are
 * smallest), until the vocabulary reaches the requested size or no pair occurs twice.
 */

/** The Llama 3 pre-tokenizer split regex, exactly as in Meta's tokenizer.json (Oniguruma syntax). */
export const LLAMA3_SPLIT_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/**
 * The same regex in JavaScript syntax (the `(?i:...)` group spelled out, since it only
 * covers ASCII letters). Global + unicode flags.
 */
export const LLAMA3_SPLIT_REGEX_JS =
  /'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;

/**
 * Special tokens in Llama 3 order. Entry k gets id (learned vocab size + k), the same
 * offsets as ids 128000 + k in the real Llama 3 tokenizer.
 */
export const LLAMA3_SPECIAL_TOKENS: readonly string[] = [
  "<|begin_of_text|>",
  "<|end_of_text|>",
  "<|reserved_special_token_0|>",
  "<|reserved_special_token_1|>",
  "<|finetune_right_pad_id|>",
  "<|reserved_special_token_2|>",
  "<|start_header_id|>",
  "<|end_header_id|>",
  "<|eom_id|>",
  "<|eot_id|>",
  "<|python_tag|>",
];

/** GPT-2 byte-to-unicode table: byte b -> a printable code point used in the vocabulary. */
export const BYTE_TO_UNICODE: readonly string[] = (() => {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const table = new Array<string>(256);
  for (let i = 0; i < bs.length; i++) table[bs[i]] = String.fromCodePoint(cs[i]);
  return table;
})();

/** The subset of tokenizer.json this project reads and writes. */
export interface TokenizerJson {
  version: string;
  truncation: null;
  padding: null;
  added_tokens: {
    id: number;
    content: string;
    single_word: boolean;
    lstrip: boolean;
    rstrip: boolean;
    normalized: boolean;
    special: boolean;
  }[];
  normalizer: null;
  pre_tokenizer: unknown;
  post_processor: unknown;
  decoder: unknown;
  model: {
    type: "BPE";
    dropout: null;
    unk_token: null;
    continuing_subword_prefix: null;
    end_of_word_suffix: null;
    fuse_unk: boolean;
    byte_fallback: boolean;
    ignore_merges: boolean;
    vocab: Record<string, number>;
    merges: [string, string][];
  };
}

export interface TrainOptions {
  /** Total vocabulary size including the special tokens (padded with reserved tokens). */
  vocabSize: number;
  /** Pairs seen fewer times than this are never merged. Default 2. */
  minFrequency?: number;
}

const textEncoder = new TextEncoder();

/** Maps a string to its byte-level form (each UTF-8 byte to one code point of BYTE_TO_UNICODE). */
export function toByteLevel(s: string): string {
  let out = "";
  for (const b of textEncoder.encode(s)) out += BYTE_TO_UNICODE[b];
  return out;
}

/** Trains a byte-level BPE on `texts` and returns a Llama 3 style tokenizer.json object. */
export function trainByteLevelBpe(texts: Iterable<string>, options: TrainOptions): TokenizerJson {
  const minFrequency = options.minFrequency ?? 2;
  const learnedTarget = options.vocabSize - LLAMA3_SPECIAL_TOKENS.length;
  if (learnedTarget < 256) {
    throw new Error(
      `trainByteLevelBpe: vocabSize ${options.vocabSize} is too small; it needs 256 byte ` +
        `tokens plus ${LLAMA3_SPECIAL_TOKENS.length} special tokens, so at least ${
          256 + LLAMA3_SPECIAL_TOKENS.length
        }.`,
    );
  }
  // Word counts over pre-tokens (in byte-level form).
  const wordCounts = new Map<string, number>();
  for (const text of texts) {
    for (const m of text.matchAll(LLAMA3_SPLIT_REGEX_JS)) {
      const w = toByteLevel(m[0]);
      wordCounts.set(w, (wordCounts.get(w) ?? 0) + 1);
    }
  }
  // Symbols: ids 0..255 are the bytes in the order of BYTE_TO_UNICODE's code points.
  const symbols: string[] = BYTE_TO_UNICODE.slice().sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);
  const symbolId = new Map<string, number>(symbols.map((s, i) => [s, i]));
  const words: number[][] = [];
  const counts: number[] = [];
  for (const [w, c] of wordCounts) {
    words.push(Array.from(w, (ch) => symbolId.get(ch)!));
    counts.push(c);
  }
  const key = (a: number, b: number) => a * 65536 + b;
  const pairCounts = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addWordPairs = (wi: number, sign: number) => {
    const w = words[wi];
    for (let i = 0; i + 1 < w.length; i++) {
      const k = key(w[i], w[i + 1]);
      pairCounts.set(k, (pairCounts.get(k) ?? 0) + sign * counts[wi]);
      if (sign > 0) {
        let set = pairWords.get(k);
        if (!set) pairWords.set(k, set = new Set());
        set.add(wi);
      }
    }
  };
  for (let wi = 0; wi < words.length; wi++) addWordPairs(wi, 1);

  const merges: [string, string][] = [];
  while (symbols.length < learnedTarget) {
    let bestKey = -1;
    let bestCount = 0;
    for (const [k, c] of pairCounts) {
      if (c > bestCount || (c === bestCount && c > 0 && k < bestKey)) {
        bestKey = k;
        bestCount = c;
      }
    }
    if (bestKey < 0 || bestCount < minFrequency) break;
    const a = Math.floor(bestKey / 65536);
    const b = bestKey % 65536;
    const merged = symbols[a] + symbols[b];
    let newId = symbolId.get(merged);
    if (newId === undefined) {
      newId = symbols.length;
      symbols.push(merged);
      symbolId.set(merged, newId);
    }
    merges.push([symbols[a], symbols[b]]);
    for (const wi of pairWords.get(bestKey) ?? []) {
      const w = words[wi];
      addWordPairs(wi, -1);
      const out: number[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
          out.push(newId);
          i++;
        } else out.push(w[i]);
      }
      words[wi] = out;
      addWordPairs(wi, 1);
    }
    pairWords.delete(bestKey);
    pairCounts.delete(bestKey);
    for (const [k, c] of pairCounts) if (c === 0) pairCounts.delete(k);
  }
  return buildLlama3TokenizerJson(symbols, merges, options.vocabSize);
}

/**
 * Assembles a Llama 3 layout tokenizer.json from learned symbols (id = index) and merges.
 * Special tokens follow the learned vocabulary; reserved tokens fill up to `vocabSize`.
 */
export function buildLlama3TokenizerJson(
  symbols: readonly string[],
  merges: [string, string][],
  vocabSize: number,
): TokenizerJson {
  const vocab: Record<string, number> = {};
  symbols.forEach((s, i) => vocab[s] = i);
  const base = symbols.length;
  const specials = LLAMA3_SPECIAL_TOKENS.slice();
  for (let r = 3; base + specials.length < vocabSize; r++) {
    specials.push(`<|reserved_special_token_${r}|>`);
  }
  const added_tokens = specials.map((content, k) => ({
    id: base + k,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const bos = "<|begin_of_text|>";
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens,
    normalizer: null,
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: LLAMA3_SPLIT_REGEX }, behavior: "Isolated", invert: false },
        { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: "Sequence",
      processors: [
        { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
        {
          type: "TemplateProcessing",
          single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
          pair: [
            { SpecialToken: { id: bos, type_id: 0 } },
            { Sequence: { id: "A", type_id: 0 } },
            { SpecialToken: { id: bos, type_id: 1 } },
            { Sequence: { id: "B", type_id: 1 } },
          ],
          special_tokens: { [bos]: { id: bos, ids: [base], tokens: [bos] } },
        },
      ],
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: true,
      vocab,
      merges,
    },
  };
}
