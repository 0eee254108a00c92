/**
 * Chat template rendering (tokenizer_config.json's Jinja `chat_template`, through
 * `@huggingface/jinja`) and chat encoding with assistant-only labels.
 *
 * Llama 3.1 format (see FACTS.md):
 *   <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n
 *   Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{system}<|eot_id|>
 *   then per turn <|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}<|eot_id|>
 *   and a generation prompt <|start_header_id|>assistant<|end_header_id|>\n\n.
 *
 * The template emits <|begin_of_text|> itself, so rendered text is encoded WITHOUT adding
 * special tokens again (no double BOS). The date is fixed (DEFAULT_DATE_STRING) so that
 * training and evaluation see the same prompt on any day.
 */
import { Template } from "@huggingface/jinja";
import type { LlamaTokenizer } from "./tokenizer.ts";

export type ChatRole = "system" | "user" | "assistant";

export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/** The date every rendering uses (the Llama 3.1 template's own default). */
export const DEFAULT_DATE_STRING = "26 Jul 2024";
const FIXED_DATE = new Date(Date.UTC(2024, 6, 26));

/** Label value for positions that take no loss. */
export const IGNORE_INDEX = -100;

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const MONTHS_LONG = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
];

/** strftime over the fixed date (for templates that call strftime_now). */
export function strftimeFixed(format: string, date: Date = FIXED_DATE): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return format.replace(/%([dbBmYyjeA%-]d?)/g, (_m, code: string) => {
    switch (code) {
      case "d":
        return pad(date.getUTCDate());
      case "-d":
      case "e":
        return String(date.getUTCDate());
      case "b":
        return MONTHS[date.getUTCMonth()];
      case "B":
        return MONTHS_LONG[date.getUTCMonth()];
      case "m":
        return pad(date.getUTCMonth() + 1);
      case "Y":
        return String(date.getUTCFullYear());
      case "y":
        return pad(date.getUTCFullYear() % 100);
      case "%":
        return "%";
      default:
        return "%" + code;
    }
  });
}

export interface ChatTemplateOptions {
  bosToken: string;
  eosToken?: string;
  /** Overrides the date the template prints. Default DEFAULT_DATE_STRING. */
  dateString?: string;
}

/** A compiled chat template. */
export class ChatTemplate {
  readonly #template: Template;
  readonly source: string;
  readonly options: Required<ChatTemplateOptions>;

  constructor(source: string, options: ChatTemplateOptions) {
    try {
      // The Jinja runtime's own strftime_now reads the clock and cannot be replaced by a
      // render variable; calls are routed to a fixed-date version under another name.
      this.#template = new Template(source.replaceAll(/\bstrftime_now\s*\(/g, "__strftime_fixed("));
    } catch (e) {
      throw new Error(
        `chat_template does not parse as Jinja (${(e as Error).message}). ` +
          `Use the chat_template from the model's tokenizer_config.json.`,
      );
    }
    this.source = source;
    this.options = {
      bosToken: options.bosToken,
      eosToken: options.eosToken ?? "",
      dateString: options.dateString ?? DEFAULT_DATE_STRING,
    };
  }

  /** The template of a tokenizer's tokenizer_config.json; throws if it has none. */
  static fromTokenizer(tok: LlamaTokenizer, dateString?: string): ChatTemplate {
    const src = tok.chatTemplate;
    if (src === null) {
      throw new Error(
        `${tok.source.configPath}: field "chat_template" is missing. Use the tokenizer_config.json ` +
          `of an Instruct model (e.g. meta-llama/Llama-3.1-8B-Instruct), which carries the template.`,
      );
    }
    const eos = tok.config.eos_token;
    return new ChatTemplate(src, {
      bosToken: tok.bosToken,
      eosToken: typeof eos === "string" ? eos : eos?.content,
      dateString,
    });
  }

  /** Renders messages to text, exactly as transformers' apply_chat_template(tokenize=False). */
  render(messages: readonly ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): string {
    return this.#template.render({
      messages: messages.map((m) => ({ role: m.role, content: m.content })),
      bos_token: this.options.bosToken,
      eos_token: this.options.eosToken,
      add_generation_prompt: options.addGenerationPrompt ?? false,
      date_string: this.options.dateString,
      __strftime_fixed: (fmt: string) => strftimeFixed(fmt),
    });
  }
}

/** One tokenized conversation. Shapes: [T] each, T = number of tokens. */
export interface EncodedChat {
  /** Token ids of the rendered conversation (starts with BOS from the template). */
  inputIds: Int32Array;
  /**
   * Training targets aligned with inputIds (not shifted): the token id on assistant content
   * tokens and on each assistant turn's closing <|eot_id|>, IGNORE_INDEX (-100) elsewhere.
   * The model's loss at position t predicts labels[t] from inputIds[0..t-1] (HF convention:
   * the shift happens in the loss).
   */
  labels: Int32Array;
}

function checkMessages(messages: readonly ChatMessage[]): void {
  if (messages.length === 0) throw new Error("encodeChat: a conversation needs at least one message.");
  for (const [i, m] of messages.entries()) {
    if (!["system", "user", "assistant"].includes(m.role)) {
      throw new Error(
        `encodeChat: message ${i} has role ${JSON.stringify(m.role)}; expected system, user or assistant.`,
      );
    }
    if (typeof m.content !== "string") {
      throw new Error(`encodeChat: message ${i} (${m.role}) has no text content.`);
    }
  }
}

/**
 * Renders and tokenizes a conversation with assistant-only labels.
 *
 * Method: for each assistant turn i, the rendering of messages[0..i) with a generation
 * prompt is a prefix of the full text and ends where turn i's content starts; the rendering
 * of messages[0..i] ends right after its <|eot_id|>. The text is cut at those character
 * boundaries, each piece is tokenized on its own, and the pieces inside assistant turns are
 * labelled. The pieces are checked to tokenize exactly like the whole text (cuts fall on
 * pre-token boundaries: after "\n\n" and after <|eot_id|>), so ids equal those of encoding
 * the rendered text in one go.
 */
export function encodeChat(
  tok: LlamaTokenizer,
  template: ChatTemplate,
  messages: readonly ChatMessage[],
): EncodedChat {
  checkMessages(messages);
  const full = template.render(messages);
  // Character spans [start, end) of assistant turns (content + <|eot_id|>).
  const spans: [number, number][] = [];
  for (let i = 0; i < messages.length; i++) {
    if (messages[i].role !== "assistant") continue;
    if (i === 0) {
      throw new Error(
        "encodeChat: the first message is an assistant turn; start with a user (or system) message.",
      );
    }
    const before = template.render(messages.slice(0, i), { addGenerationPrompt: true });
    const through = template.render(messages.slice(0, i + 1));
    if (!full.startsWith(before) || !full.startsWith(through) || through.length < before.length) {
      throw new Error(
        `encodeChat: the chat template does not render conversations incrementally (the prefix ` +
          `before assistant turn ${i} is not a prefix of the whole rendering), so assistant tokens ` +
          `cannot be located. Use a Llama 3 style chat_template.`,
      );
    }
    spans.push([before.length, through.length]);
  }
  const ids: number[] = [];
  const labels: number[] = [];
  let pos = 0;
  const push = (text: string, train: boolean) => {
    if (text.length === 0) return;
    for (const id of tok.encode(text)) {
      ids.push(id);
      labels.push(train ? id : IGNORE_INDEX);
    }
  };
  for (const [s, e] of spans) {
    push(full.slice(pos, s), false);
    push(full.slice(s, e), true);
    pos = e;
  }
  push(full.slice(pos), false);
  const whole = tok.encode(full);
  if (whole.length !== ids.length || whole.some((v, k) => v !== ids[k])) {
    throw new Error(
      `encodeChat: tokenizing the conversation piecewise gives different ids than tokenizing it ` +
        `whole (${ids.length} vs ${whole.length} tokens); the assistant turns do not start on a ` +
        `token boundary with this tokenizer/template.`,
    );
  }
  return { inputIds: Int32Array.from(ids), labels: Int32Array.from(labels) };
}

/** Token ids of a prompt for generation: messages rendered with the assistant header appended. */
export function encodePrompt(
  tok: LlamaTokenizer,
  template: ChatTemplate,
  messages: readonly ChatMessage[],
): Int32Array {
  checkMessages(messages);
  return tok.encode(template.render(messages, { addGenerationPrompt: true }));
}
