/**
 * DatasetProcessor: corpus records -> cleaned chats -> token ids with assistant-only labels
 * -> seeded train/val split -> train.jsonl, val.jsonl, stats.json (written all at once).
 *
 * Output format (one JSON object per line, UTF-8, "\n" line ends):
 *   {"id": "corpus.csv:17",                 // source file and line (or the JSONL id)
 *    "messages": [{"role","content"}...],   // cleaned chat, as rendered by the chat template
 *    "meta": {"topic": "..."},              // reader metadata
 *    "num_tokens": T,                       // length of input_ids
 *    "num_label_tokens": N,                 // positions whose label is not -100
 *    "input_ids": [T ints],                 // template rendering tokenized, BOS first, no double BOS
 *    "labels": [T ints]}                    // input_ids on assistant content + closing <|eot_id|>,
 *                                           // -100 elsewhere (unshifted, HF convention)
 * stats.json: see PrepareStats.
 */
import { join } from "node:path";
import { type ChatMessage, type ChatTemplate, encodeChat, IGNORE_INDEX } from "./chat_template.ts";
import type { CorpusReader, CorpusRecord } from "./corpus.ts";
import { checkOutDir, writeDirAtomic } from "./fs_util.ts";
import { mulberry32, shuffleInPlace } from "./rng.ts";
import type { LlamaTokenizer } from "./tokenizer.ts";

export interface PrepareOptions {
  /** Fraction of kept examples that go to val.jsonl. Default 0.1. */
  valFraction?: number;
  /** Seed of the split shuffle. Default 3407. */
  seed?: number;
  /** Examples with more tokens are left out (reported), never truncated. Default 4096. */
  maxSeqLength?: number;
  /** User turns shorter than this (characters, after cleaning) are dropped. Default 5. */
  minUserChars?: number;
  /** Assistant turns shorter than this (characters, after cleaning) are dropped. Default 10. */
  minAssistantChars?: number;
  /**
   * System prompt added to every chat, or null for none (the template still writes its own
   * system header with the dates). "{topic}" is replaced by the record's meta.topic.
   */
  systemPrompt?: string | null;
  /** Called as records are processed: (done, total). */
  onProgress?: (done: number, total: number) => void;
}

/** One prepared example (a line of train.jsonl / val.jsonl). */
export interface PreparedExample {
  id: string;
  messages: ChatMessage[];
  meta: Record<string, string>;
  num_tokens: number;
  num_label_tokens: number;
  input_ids: number[];
  labels: number[];
}

export type DropReason = "empty" | "too_short" | "duplicate" | "too_long";

export interface PrepareStats {
  source: string;
  tokenizer: string;
  options: {
    valFraction: number;
    seed: number;
    maxSeqLength: number;
    minUserChars: number;
    minAssistantChars: number;
    systemPrompt: string | null;
  };
  rows_read: number;
  kept: number;
  train: number;
  val: number;
  dropped: Record<DropReason, number>;
  /** Ids and token counts of the examples left out for exceeding maxSeqLength. */
  too_long: { id: string; num_tokens: number }[];
  /** Token lengths of kept examples (nearest-rank percentiles). */
  token_length: { p50: number; p90: number; p99: number; max: number; mean: number };
  label_tokens: { train: number; val: number };
  longest: { id: string; num_tokens: number; messages: ChatMessage[] } | null;
}

export interface PreparedDataset {
  train: PreparedExample[];
  val: PreparedExample[];
  stats: PrepareStats;
}

/**
 * Text cleaning: Unicode NFC; line ends to "\n"; zero-width and control characters other
 * than ZWJ/ZWNJ (needed by Bengali and emoji) removed; runs of spaces/tabs to one space; each
 * line trimmed; three or more line breaks to one blank line; the whole trimmed.
 */
export function cleanText(s: string): string {
  return s
    .normalize("NFC")
    .replace(/\r\n?/g, "\n")
    // deno-lint-ignore no-control-regex
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u200b\u2060\ufeff]/g, "")
    .replace(/[^\S\n]+/g, " ")
    .replace(/ *\n */g, "\n")
    .replace(/\n{3,}/g, "\n\n")
    .trim();
}

/** Nearest-rank percentile of an ascending array (0 for empty). */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

export class DatasetProcessor {
  readonly options: Required<Omit<PrepareOptions, "onProgress">> & Pick<PrepareOptions, "onProgress">;

  constructor(
    readonly tokenizer: LlamaTokenizer,
    readonly template: ChatTemplate,
    options: PrepareOptions = {},
  ) {
    this.options = {
      valFraction: options.valFraction ?? 0.1,
      seed: options.seed ?? 3407,
      maxSeqLength: options.maxSeqLength ?? 4096,
      minUserChars: options.minUserChars ?? 5,
      minAssistantChars: options.minAssistantChars ?? 10,
      systemPrompt: options.systemPrompt ?? null,
      onProgress: options.onProgress,
    };
    const { valFraction, maxSeqLength, seed } = this.options;
    if (!(valFraction >= 0 && valFraction < 1)) {
      throw new Error(`val-fraction is ${valFraction}; it must be in [0, 1), e.g. 0.1.`);
    }
    if (!Number.isInteger(maxSeqLength) || maxSeqLength < 8) {
      throw new Error(`max-seq-length is ${maxSeqLength}; it must be an integer >= 8 (default 4096).`);
    }
    if (!Number.isInteger(seed)) throw new Error(`seed is ${seed}; it must be an integer.`);
  }

  /** Cleans a record's messages and adds the system prompt; null with a reason when dropped. */
  cleanRecord(rec: CorpusRecord): { messages: ChatMessage[] } | { drop: DropReason } {
    const messages = rec.messages.map((m) => ({ role: m.role, content: cleanText(m.content) }));
    const users = messages.filter((m) => m.role === "user");
    const assistants = messages.filter((m) => m.role === "assistant");
    if (users.length === 0 || assistants.length === 0) return { drop: "empty" };
    if (messages.some((m) => m.role !== "system" && m.content === "")) return { drop: "empty" };
    if (users.some((m) => [...m.content].length < this.options.minUserChars)) return { drop: "too_short" };
    if (assistants.some((m) => [...m.content].length < this.options.minAssistantChars)) {
      return { drop: "too_short" };
    }
    const sp = this.options.systemPrompt;
    if (sp !== null && messages[0].role !== "system") {
      messages.unshift({
        role: "system",
        content: cleanText(sp.replaceAll("{topic}", rec.meta.topic ?? "")),
      });
    }
    return { messages };
  }

  /** Reads, cleans, tokenizes, filters and splits a corpus (in memory). */
  async prepare(reader: CorpusReader): Promise<PreparedDataset> {
    const records = await reader.read();
    const dropped: Record<DropReason, number> = { empty: 0, too_short: 0, duplicate: 0, too_long: 0 };
    const tooLong: { id: string; num_tokens: number }[] = [];
    const seen = new Set<string>();
    const kept: PreparedExample[] = [];
    const total = records.length;
    for (let i = 0; i < records.length; i++) {
      const rec = records[i];
      const c = this.cleanRecord(rec);
      if ("drop" in c) {
        dropped[c.drop]++;
      } else {
        const key = JSON.stringify(c.messages.filter((m) => m.role !== "system"));
        if (seen.has(key)) {
          dropped.duplicate++;
        } else {
          seen.add(key);
          let enc;
          try {
            enc = encodeChat(this.tokenizer, this.template, c.messages);
          } catch (e) {
            throw new Error(`${rec.id}: ${(e as Error).message}`);
          }
          const n = enc.inputIds.length;
          if (n > this.options.maxSeqLength) {
            dropped.too_long++;
            tooLong.push({ id: rec.id, num_tokens: n });
          } else {
            let nl = 0;
            for (const l of enc.labels) if (l !== IGNORE_INDEX) nl++;
            kept.push({
              id: rec.id,
              messages: c.messages,
              meta: rec.meta,
              num_tokens: n,
              num_label_tokens: nl,
              input_ids: Array.from(enc.inputIds),
              labels: Array.from(enc.labels),
            });
          }
        }
      }
      if (this.options.onProgress && ((i + 1) % 64 === 0 || i + 1 === total)) {
        this.options.onProgress(i + 1, total);
      }
    }
    if (kept.length === 0) {
      throw new Error(
        `${reader.path}: no usable examples (${total} rows read; dropped ${JSON.stringify(dropped)}). ` +
          `Check that the Questions and Answers columns hold text.`,
      );
    }
    const order = shuffleInPlace(kept.map((_, i) => i), mulberry32(this.options.seed));
    const nVal = Math.round(kept.length * this.options.valFraction);
    const valSet = new Set(order.slice(0, nVal));
    // Both files keep corpus order; membership is what the seed decides.
    const train = kept.filter((_, i) => !valSet.has(i));
    const val = kept.filter((_, i) => valSet.has(i));
    const lengths = kept.map((e) => e.num_tokens).sort((a, b) => a - b);
    const longest = kept.reduce((a, b) => (b.num_tokens > a.num_tokens ? b : a));
    const sum = (xs: PreparedExample[]) => xs.reduce((s, e) => s + e.num_label_tokens, 0);
    const { onProgress: _, ...opts } = this.options;
    const stats: PrepareStats = {
      source: reader.path,
      tokenizer: this.tokenizer.source.tokenizerPath,
      options: opts,
      rows_read: total,
      kept: kept.length,
      train: train.length,
      val: val.length,
      dropped,
      too_long: tooLong,
      token_length: {
        p50: percentile(lengths, 50),
        p90: percentile(lengths, 90),
        p99: percentile(lengths, 99),
        max: lengths[lengths.length - 1],
        mean: Math.round((lengths.reduce((a, b) => a + b, 0) / lengths.length) * 10) / 10,
      },
      label_tokens: { train: sum(train), val: sum(val) },
      longest: { id: longest.id, num_tokens: longest.num_tokens, messages: longest.messages },
    };
    return { train, val, stats };
  }

  /**
   * prepare() then write train.jsonl, val.jsonl and stats.json into `outDir` all at once.
   * An existing non-empty `outDir` is refused unless `overwrite`.
   */
  async run(
    reader: CorpusReader,
    outDir: string,
    options: { overwrite?: boolean } = {},
  ): Promise<PreparedDataset> {
    // Fail early, before the work, if the output would be refused.
    await checkOutDir(outDir, options.overwrite ?? false);
    const data = await this.prepare(reader);
    await writeDirAtomic(outDir, async (tmp) => {
      await writeJsonl(join(tmp, "train.jsonl"), data.train);
      await writeJsonl(join(tmp, "val.jsonl"), data.val);
      await Deno.writeTextFile(join(tmp, "stats.json"), JSON.stringify(data.stats, null, 2) + "\n");
    }, options);
    return data;
  }
}

/** Writes objects as JSON lines, streaming (no whole-file string). */
export async function writeJsonl(path: string, items: readonly unknown[]): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  const enc = new TextEncoder();
  try {
    let buf = "";
    for (const it of items) {
      buf += JSON.stringify(it) + "\n";
      if (buf.length > 1 << 20) {
        await writeAll(f, enc.encode(buf));
        buf = "";
      }
    }
    if (buf) await writeAll(f, enc.encode(buf));
  } finally {
    f.close();
  }
}

async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await f.write(bytes.subarray(off));
}

/** Reads a train.jsonl / val.jsonl written by DatasetProcessor. */
export async function readPreparedJsonl(path: string): Promise<PreparedExample[]> {
  const text = await Deno.readTextFile(path);
  const out: PreparedExample[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() === "") continue;
    let o: PreparedExample;
    try {
      o = JSON.parse(lines[i]);
    } catch (e) {
      throw new Error(
        `${path}:${i + 1}: not valid JSON (${(e as Error).message}). Re-run deno task prepare.`,
      );
    }
    if (!Array.isArray(o.input_ids) || !Array.isArray(o.labels) || o.input_ids.length !== o.labels.length) {
      throw new Error(
        `${path}:${
          i + 1
        }: "input_ids" and "labels" must be arrays of equal length. Re-run deno task prepare.`,
      );
    }
    out.push(o);
  }
  return out;
}
