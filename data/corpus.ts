/**
 * Corpus readers: each turns one source file into conversations (CorpusRecord). The
 * DatasetProcessor takes any CorpusReader, so a new dataset format is a new reader.
 *
 * - CsvCorpusReader: the Bengali Empathetic Conversations CSV (RFC 4180: quoted fields,
 *   embedded newlines, "" escapes, optional BOM, CRLF or LF), columns
 *   `Topics, Question-Title, Questions, Answers`. A row becomes
 *   user = Question-Title + "\n" + Questions, assistant = Answers, meta.topic = Topics.
 * - JsonlChatReader: one JSON object per line with `messages: [{role, content}]` and an
 *   optional `id` (other fields are kept in meta when they are strings).
 */
import { parse } from "csv-parse/sync";
import { basename } from "node:path";
import type { ChatMessage, ChatRole } from "./chat_template.ts";
import { readTextStrict } from "./fs_util.ts";

export interface CorpusRecord {
  /** Stable id, e.g. "bengali_empathetic_sample.csv:17" (file name and line of the row). */
  id: string;
  messages: ChatMessage[];
  /** Extra fields, e.g. { topic: "পরিবার" }. */
  meta: Record<string, string>;
}

export interface CorpusReader {
  /** The source, for messages and stats. */
  readonly path: string;
  /** All records of the source, in file order. Throws an error for people on bad input. */
  read(): Promise<CorpusRecord[]>;
}

/** The corpus CSV's columns, in the corpus's order. */
export const CSV_COLUMNS = ["Topics", "Question-Title", "Questions", "Answers"] as const;

const norm = (s: string) => s.replace(/^\uFEFF/, "").trim().toLowerCase();

interface CsvParseErrorLike extends Error {
  code?: string;
  lines?: number;
}

/** Reads the corpus CSV. */
export class CsvCorpusReader implements CorpusReader {
  constructor(readonly path: string) {}

  async read(): Promise<CorpusRecord[]> {
    const text = await readTextStrict(
      this.path,
      "Pass --input the corpus CSV (columns Topics, Question-Title, Questions, Answers).",
    );
    if (text.replace(/^\uFEFF/, "").trim().length === 0) {
      throw new Error(
        `${this.path}: file is empty. Expected a CSV with the header ` +
          `${CSV_COLUMNS.join(",")} and one row per question/answer pair.`,
      );
    }
    let rows: { record: string[]; info: { lines: number } }[];
    try {
      rows = parse(text, {
        bom: true,
        info: true,
        relax_column_count: false,
        skip_empty_lines: true,
      }) as unknown as { record: string[]; info: { lines: number } }[];
    } catch (e) {
      const err = e as CsvParseErrorLike;
      const line = err.lines ?? "?";
      throw new Error(
        `${this.path}:${line}: malformed CSV near line ${line} (${err.code ?? "error"}: ${err.message}). ` +
          `Fields that contain commas, quotes or line breaks must be wrapped in double quotes, and a ` +
          `quote inside a quoted field is written as "". Fix the row or re-export the file as CSV.`,
      );
    }
    const header = rows[0].record;
    const found = header.map((h) => h.replace(/^\uFEFF/, "").trim());
    const index = new Map<string, number>();
    found.forEach((h, i) => index.set(norm(h), i));
    const missing = CSV_COLUMNS.filter((c) => !index.has(norm(c)));
    if (missing.length > 0) {
      throw new Error(
        `${this.path}:1: missing column${missing.length > 1 ? "s" : ""} ${
          missing.map((c) => JSON.stringify(c)).join(", ")
        }; the header has ${found.map((c) => JSON.stringify(c)).join(", ")}. ` +
          `The corpus CSV needs the columns ${CSV_COLUMNS.join(", ")} (any order).`,
      );
    }
    const [iTopic, iTitle, iQuestion, iAnswer] = CSV_COLUMNS.map((c) => index.get(norm(c))!);
    const name = basename(this.path);
    const starts = recordStartLines(text);
    const out: CorpusRecord[] = [];
    for (let r = 1; r < rows.length; r++) {
      const { record, info } = rows[r];
      const startLine = starts.length === rows.length ? starts[r] : info.lines;
      const title = record[iTitle] ?? "";
      const question = record[iQuestion] ?? "";
      const user = title.trim() && question.trim() ? `${title}\n${question}` : title + question;
      out.push({
        id: `${name}:${startLine}`,
        messages: [
          { role: "user", content: user },
          { role: "assistant", content: record[iAnswer] ?? "" },
        ],
        meta: { topic: record[iTopic] ?? "" },
      });
    }
    if (out.length === 0) {
      throw new Error(`${this.path}: has a header but no rows. Add question/answer rows.`);
    }
    return out;
  }
}

/**
 * 1-based line on which each CSV record starts (quote-aware; CRLF, LF or CR line ends; blank
 * lines skipped, as the parser does).
 */
export function recordStartLines(text: string): number[] {
  const starts: number[] = [];
  let line = 1;
  let inQuotes = false;
  let atRecordStart = true;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (atRecordStart && c !== "\r" && c !== "\n") {
      starts.push(line);
      atRecordStart = false;
    }
    if (c === '"') inQuotes = !inQuotes;
    else if (c === "\r" || c === "\n") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      line++;
      if (!inQuotes) atRecordStart = true;
    }
  }
  return starts;
}

const ROLES: readonly ChatRole[] = ["system", "user", "assistant"];

/** Reads JSONL with one chat per line: {"id"?: string, "messages": [{"role","content"}], ...}. */
export class JsonlChatReader implements CorpusReader {
  constructor(readonly path: string) {}

  async read(): Promise<CorpusRecord[]> {
    const text = await readTextStrict(this.path, "Pass --input a JSONL file of chats.");
    const name = basename(this.path);
    const out: CorpusRecord[] = [];
    const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/);
    const what = `Each line must be a JSON object like {"messages": [{"role": "user", "content": "..."}, ` +
      `{"role": "assistant", "content": "..."}]}.`;
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i].trim();
      if (line === "") continue;
      const where = `${this.path}:${i + 1}`;
      let obj: unknown;
      try {
        obj = JSON.parse(line);
      } catch (e) {
        throw new Error(`${where}: not valid JSON (${(e as Error).message}). ${what}`);
      }
      if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
        throw new Error(`${where}: expected a JSON object. ${what}`);
      }
      const o = obj as Record<string, unknown>;
      if (!Array.isArray(o.messages)) {
        throw new Error(
          `${where}: field "messages" is ${o.messages === undefined ? "missing" : "not an array"}. ${what}`,
        );
      }
      const messages: ChatMessage[] = o.messages.map((m: unknown, k: number) => {
        const mm = m as Record<string, unknown> | null;
        if (
          !mm || typeof mm !== "object" || !ROLES.includes(mm.role as ChatRole) ||
          typeof mm.content !== "string"
        ) {
          throw new Error(
            `${where}: messages[${k}] is ${JSON.stringify(m)?.slice(0, 120)}; expected ` +
              `{"role": "system"|"user"|"assistant", "content": "<text>"}.`,
          );
        }
        return { role: mm.role as ChatRole, content: mm.content };
      });
      const meta: Record<string, string> = {};
      for (const [k, v] of Object.entries(o)) {
        if (k !== "id" && k !== "messages" && typeof v === "string") meta[k] = v;
      }
      out.push({ id: typeof o.id === "string" ? o.id : `${name}:${i + 1}`, messages, meta });
    }
    if (out.length === 0) throw new Error(`${this.path}: file is empty. ${what}`);
    return out;
  }
}

/** Picks a reader by file extension (.csv, .jsonl/.json lines). */
export function readerFor(path: string): CorpusReader {
  const lower = path.toLowerCase();
  if (lower.endsWith(".csv")) return new CsvCorpusReader(path);
  if (lower.endsWith(".jsonl") || lower.endsWith(".ndjson")) return new JsonlChatReader(path);
  throw new Error(
    `${path}: unknown corpus format (by extension). Use a .csv with columns ${CSV_COLUMNS.join(", ")} ` +
      `or a .jsonl of chats with "messages".`,
  );
}
