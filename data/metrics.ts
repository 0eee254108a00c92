/**
 * Text metrics of the evaluation: corpus BLEU with sacreBLEU's semantics (its `13a` and `intl`
 * tokenizers, smoothing methods, brevity penalty and signature string), ROUGE-L (F1, precision,
 * recall per pair, averaged as rouge_score does) on a Unicode-aware tokenization that keeps
 * Bengali words whole, and corpus perplexity.
 *
 * sacreBLEU behaviour matched here (checked against sacreBLEU itself by data/metrics_test.ts with
 * data/metric_golden.json, made by bench/reference/make_metric_golden.py):
 * - each segment is lowercased (when asked), right-stripped of whitespace, then tokenized;
 * - `13a`: drops "<skipped>", joins "-\n" line breaks, turns newlines into spaces, unescapes
 *   &quot; &amp; &lt; &gt;, then splits ASCII punctuation and symbols off words (period and comma
 *   only next to a non-digit, dash only after a digit); non-ASCII punctuation such as the danda
 *   (U+0964) stays attached to its word;
 * - `intl`: splits every Unicode punctuation character (\p{P}) next to a non-digit and every
 *   Unicode symbol (\p{S});
 * - tokens are whitespace-separated (Python's str.split whitespace set); n-grams of order 1..4
 *   are clipped by the maximum count over the references; the effective reference length is the
 *   closest one (the shorter on a tie);
 * - precisions, brevity penalty, score and the early zero when no n-gram matches at all follow
 *   sacreBLEU 2.x's compute_bleu.
 */

/** The sacreBLEU version whose behaviour this module matches; it ends every BLEU signature. */
export const SACREBLEU_VERSION = "2.6.0";

export type BleuTokenizer = "13a" | "intl" | "none";
export type BleuSmoothing = "exp" | "none" | "floor" | "add-k";

export interface BleuOptions {
  /** "13a" (sacreBLEU's default) or "intl" (splits Unicode punctuation such as the danda). */
  tokenize?: BleuTokenizer;
  /** "exp" by default, as sacreBLEU. */
  smoothMethod?: BleuSmoothing;
  /** Floor value (default 0.1) or k of add-k (default 1); ignored by "exp" and "none". */
  smoothValue?: number;
  lowercase?: boolean;
  /** Version written into the signature; SACREBLEU_VERSION by default. */
  version?: string;
}

export interface BleuResult {
  /** BLEU on the 0..100 scale, unrounded. */
  score: number;
  /** Modified n-gram precisions (0..100) for n = 1..4. */
  precisions: number[];
  /** Brevity penalty. */
  bp: number;
  /** hypLen / refLen (0 when refLen is 0). */
  ratio: number;
  hypLen: number;
  refLen: number;
  /** Matched and total n-gram counts for n = 1..4 (after add-k smoothing, as sacreBLEU keeps). */
  counts: number[];
  totals: number[];
  /** sacreBLEU's signature, e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0". */
  signature: string;
}

const MAX_ORDER = 4;
const SMOOTH_DEFAULTS: Record<BleuSmoothing, number | null> = {
  "none": null,
  "floor": 0.1,
  "add-k": 1,
  "exp": null,
};

/** Characters Python's str.split() and str.rstrip() treat as whitespace. */
const PY_WHITESPACE = "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
const PY_SPLIT = new RegExp(`[${PY_WHITESPACE}]+`, "u");
const PY_RSTRIP = new RegExp(`[${PY_WHITESPACE}]+$`, "u");

/** Python's str.split() with no argument: runs of whitespace separate, no empty tokens. */
export function pySplit(s: string): string[] {
  return s.split(PY_SPLIT).filter((t) => t.length > 0);
}

// 13a: ASCII punctuation and symbols except apostrophe, comma, hyphen and period are always split.
const RE_13A_SYMBOLS = /([{-~[-` -&(-+:-@/])/gu;
const RE_13A_PERIOD_AFTER = /([^0-9])([.,])/gu;
const RE_13A_PERIOD_BEFORE = /([.,])([^0-9])/gu;
const RE_13A_DASH = /([0-9])(-)/gu;

/** sacreBLEU's `13a` tokenizer (mteval-v13a.pl): the tokens joined by single spaces. */
export function tokenize13a(line: string): string {
  let s = line.replaceAll("<skipped>", "").replaceAll("-\n", "").replaceAll("\n", " ");
  if (s.includes("&")) {
    s = s.replaceAll("&quot;", '"').replaceAll("&amp;", "&").replaceAll("&lt;", "<").replaceAll("&gt;", ">");
  }
  s = ` ${s} `;
  s = s.replace(RE_13A_SYMBOLS, " $1 ");
  s = s.replace(RE_13A_PERIOD_AFTER, "$1 $2 ");
  s = s.replace(RE_13A_PERIOD_BEFORE, " $1 $2");
  s = s.replace(RE_13A_DASH, "$1 $2 ");
  return pySplit(s).join(" ");
}

const RE_INTL_PUNCT_AFTER = /(\P{N})(\p{P})/gu;
const RE_INTL_PUNCT_BEFORE = /(\p{P})(\P{N})/gu;
const RE_INTL_SYMBOL = /(\p{S})/gu;

/** sacreBLEU's `intl` tokenizer (mteval-v14 international): the tokens joined by single spaces. */
export function tokenizeIntl(line: string): string {
  let s = line.replace(RE_INTL_PUNCT_AFTER, "$1 $2 ");
  s = s.replace(RE_INTL_PUNCT_BEFORE, " $1 $2");
  s = s.replace(RE_INTL_SYMBOL, " $1 ");
  return pySplit(s).join(" ");
}

function tokenizer(name: BleuTokenizer): (line: string) => string {
  switch (name) {
    case "13a":
      return tokenize13a;
    case "intl":
      return tokenizeIntl;
    case "none":
      return (line) => line;
    default:
      throw new Error(`BLEU tokenizer "${name}" is not supported: use "13a", "intl" or "none"`);
  }
}

/** Counts of every n-gram of order 1..max, keyed by order and the tokens joined with "\u0000". */
function ngramCounts(tokens: string[], max: number): Map<string, number>[] {
  const out: Map<string, number>[] = [];
  for (let n = 1; n <= max; n++) {
    const m = new Map<string, number>();
    for (let i = 0; i + n <= tokens.length; i++) {
      const key = tokens.slice(i, i + n).join("\u0000");
      m.set(key, (m.get(key) ?? 0) + 1);
    }
    out.push(m);
  }
  return out;
}

function signature(
  nrefs: number,
  o: Required<Omit<BleuOptions, "smoothValue">>,
  smoothValue?: number,
): string {
  let smooth: string = o.smoothMethod;
  const def = SMOOTH_DEFAULTS[o.smoothMethod];
  if (def !== null) smooth += `[${(smoothValue ?? def).toFixed(2)}]`;
  return `nrefs:${nrefs}|case:${o.lowercase ? "lc" : "mixed"}|eff:no|tok:${o.tokenize}|smooth:${smooth}` +
    `|version:${o.version}`;
}

/**
 * Corpus BLEU of `hypotheses` against `references`: either one reference per hypothesis
 * (string[]) or several reference streams (string[][], each as long as the hypotheses), as
 * sacreBLEU's corpus_score(hyps, [refs1, refs2, ...]).
 */
export function corpusBleu(
  hypotheses: readonly string[],
  references: readonly string[] | readonly (readonly string[])[],
  options: BleuOptions = {},
): BleuResult {
  const o = {
    tokenize: options.tokenize ?? "13a",
    smoothMethod: options.smoothMethod ?? "exp",
    lowercase: options.lowercase ?? false,
    version: options.version ?? SACREBLEU_VERSION,
  };
  if (!(o.smoothMethod in SMOOTH_DEFAULTS)) {
    throw new Error(`BLEU smoothing "${o.smoothMethod}" is not supported: use exp, none, floor or add-k`);
  }
  const streams: readonly (readonly string[])[] = references.length > 0 && typeof references[0] === "string"
    ? [references as readonly string[]]
    : references as readonly (readonly string[])[];
  if (streams.length === 0) throw new Error("corpusBleu: no reference stream given");
  streams.forEach((s, i) => {
    if (s.length !== hypotheses.length) {
      throw new Error(
        `corpusBleu: reference stream ${i} has ${s.length} segments but there are ${hypotheses.length} ` +
          `hypotheses; give one reference per hypothesis`,
      );
    }
  });
  const tok = tokenizer(o.tokenize);
  const prep = (s: string) => tok((o.lowercase ? s.toLowerCase() : s).replace(PY_RSTRIP, ""));

  let hypLen = 0;
  let refLen = 0;
  const correct = new Array<number>(MAX_ORDER).fill(0);
  const total = new Array<number>(MAX_ORDER).fill(0);
  for (let i = 0; i < hypotheses.length; i++) {
    const hyp = pySplit(prep(hypotheses[i]));
    const refMax: Map<string, number>[] = Array.from({ length: MAX_ORDER }, () => new Map());
    let closest = -1;
    for (const stream of streams) {
      const ref = pySplit(prep(stream[i]));
      const len = ref.length;
      if (
        closest < 0 || Math.abs(len - hyp.length) < Math.abs(closest - hyp.length) ||
        (Math.abs(len - hyp.length) === Math.abs(closest - hyp.length) && len < closest)
      ) closest = len;
      ngramCounts(ref, MAX_ORDER).forEach((m, n) => {
        for (const [k, c] of m) refMax[n].set(k, Math.max(refMax[n].get(k) ?? 0, c));
      });
    }
    hypLen += hyp.length;
    refLen += closest;
    ngramCounts(hyp, MAX_ORDER).forEach((m, n) => {
      for (const [k, c] of m) correct[n] += Math.min(c, refMax[n].get(k) ?? 0);
      total[n] += Math.max(0, hyp.length - n);
    });
  }
  return bleuFromStats(correct, total, hypLen, refLen, o, options.smoothValue, streams.length);
}

function bleuFromStats(
  correct: number[],
  total: number[],
  hypLen: number,
  refLen: number,
  o: Required<Omit<BleuOptions, "smoothValue">>,
  smoothValue: number | undefined,
  nrefs: number,
): BleuResult {
  const value = smoothValue ?? SMOOTH_DEFAULTS[o.smoothMethod] ?? 0;
  const bp = hypLen < refLen ? (hypLen > 0 ? Math.exp(1 - refLen / hypLen) : 0) : 1;
  const precisions = new Array<number>(MAX_ORDER).fill(0);
  const result = (score: number): BleuResult => ({
    score,
    precisions,
    bp,
    ratio: refLen > 0 ? hypLen / refLen : 0,
    hypLen,
    refLen,
    counts: correct,
    totals: total,
    signature: signature(nrefs, o, smoothValue),
  });
  if (!correct.some((c) => c > 0)) return result(0);
  let mteval = 1;
  for (let n = 0; n < MAX_ORDER; n++) {
    if (o.smoothMethod === "add-k" && n > 0) {
      correct[n] += value;
      total[n] += value;
    }
    if (total[n] === 0) break;
    if (correct[n] === 0) {
      if (o.smoothMethod === "exp") {
        mteval *= 2;
        precisions[n] = 100 / (mteval * total[n]);
      } else if (o.smoothMethod === "floor") {
        precisions[n] = 100 * value / total[n];
      }
    } else {
      precisions[n] = 100 * correct[n] / total[n];
    }
  }
  // A zero precision counts as log 0 = -9999999999, as in sacreBLEU, which makes the score 0.
  let logSum = 0;
  for (const p of precisions) logSum += p === 0 ? -9999999999 : Math.log(p);
  return result(bp * Math.exp(logSum / MAX_ORDER));
}

// ---------------------------------------------------------------- ROUGE-L

const RE_NOT_WORD = /[^\p{L}\p{M}\p{N}]+/gu;

/** Lowercase, then words of Unicode letters, combining marks and digits (everything else separates).
 * Bengali vowel signs and the virama are marks, so Bengali words stay whole. */
export function rougeTokenize(text: string): string[] {
  return text.toLowerCase().replace(RE_NOT_WORD, " ").split(" ").filter((t) => t.length > 0);
}

/** Length of the longest common subsequence, by dynamic programming in O(|a|·|b|) time, O(|b|) space. */
export function lcsLength(a: readonly string[], b: readonly string[]): number {
  if (a.length === 0 || b.length === 0) return 0;
  let prev = new Uint32Array(b.length + 1);
  let cur = new Uint32Array(b.length + 1);
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      cur[j] = a[i - 1] === b[j - 1] ? prev[j - 1] + 1 : Math.max(prev[j], cur[j - 1]);
    }
    [prev, cur] = [cur, prev];
    cur[0] = 0;
  }
  return prev[b.length];
}

export interface RougeScore {
  precision: number;
  recall: number;
  f1: number;
}

/** ROUGE-L of one pair: precision = LCS / hypothesis tokens, recall = LCS / reference tokens,
 * F1 their harmonic mean; all 0 when either side has no tokens. */
export function rougeL(hypothesis: string, reference: string): RougeScore {
  const hyp = rougeTokenize(hypothesis);
  const ref = rougeTokenize(reference);
  if (hyp.length === 0 || ref.length === 0) return { precision: 0, recall: 0, f1: 0 };
  const lcs = lcsLength(ref, hyp);
  const precision = lcs / hyp.length;
  const recall = lcs / ref.length;
  const f1 = precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0;
  return { precision, recall, f1 };
}

/** ROUGE-L averaged over the pairs (the mean of the per-pair scores, as rouge_score's aggregation
 * of per-example scores); zeros for an empty set. */
export function corpusRougeL(hypotheses: readonly string[], references: readonly string[]): RougeScore {
  if (hypotheses.length !== references.length) {
    throw new Error(
      `corpusRougeL: ${hypotheses.length} hypotheses but ${references.length} references; give one each`,
    );
  }
  const sum = { precision: 0, recall: 0, f1: 0 };
  for (let i = 0; i < hypotheses.length; i++) {
    const s = rougeL(hypotheses[i], references[i]);
    sum.precision += s.precision;
    sum.recall += s.recall;
    sum.f1 += s.f1;
  }
  const n = Math.max(1, hypotheses.length);
  return { precision: sum.precision / n, recall: sum.recall / n, f1: sum.f1 / n };
}

// ---------------------------------------------------------------- perplexity

/** exp(sum of token NLL / number of tokens) over the whole set (not a mean of per-batch values). */
export function perplexity(sums: Iterable<{ nll: number; tokens: number }>): number {
  let nll = 0;
  let tokens = 0;
  for (const s of sums) {
    nll += s.nll;
    tokens += s.tokens;
  }
  if (tokens === 0) throw new Error("perplexity: no label tokens in the set (every label is -100?)");
  return Math.exp(nll / tokens);
}
