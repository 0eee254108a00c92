// Next-token choice from one row of f32 logits on the CPU (V up to 128256), with the semantics of
// Hugging Face generate: the repetition penalty first (a positive logit of a token already in the
// context is divided by the penalty, a negative one multiplied), then temperature, top-k and
// top-p (nucleus) filtering, then either the argmax (greedy) or a draw from the softmax of what is
// left, from a seeded Rng so that a seed reproduces a generation.
//
// Dimension letters: V vocabulary.

import type { Rng } from "../engine/rng.ts";
import { argmaxRef } from "../kernels/argmax/argmax_ref.ts";

export interface SamplingOptions {
  /** false (or temperature 0): argmax after the repetition penalty. Default true. */
  doSample?: boolean;
  /** Divides the logits before filtering; default 1. 0 means greedy. */
  temperature?: number;
  /** Keep only the k largest logits (ties with the k-th kept); 0 or absent: off. */
  topK?: number;
  /** Keep the smallest set of largest-probability tokens whose mass reaches p; 1 or absent: off. */
  topP?: number;
  /** HF repetition penalty over the context tokens; 1 or absent: off. */
  repetitionPenalty?: number;
}

function checkOptions(o: SamplingOptions): void {
  const t = o.temperature ?? 1;
  if (!(t >= 0) || !Number.isFinite(t)) throw new Error(`temperature = ${t} must be a finite number >= 0`);
  const k = o.topK ?? 0;
  if (!Number.isInteger(k) || k < 0) throw new Error(`topK = ${k} must be an integer >= 0 (0 turns it off)`);
  const p = o.topP ?? 1;
  if (!(p > 0 && p <= 1)) throw new Error(`topP = ${p} must be in (0, 1] (1 turns it off)`);
  const r = o.repetitionPenalty ?? 1;
  if (!(r > 0) || !Number.isFinite(r)) {
    throw new Error(`repetitionPenalty = ${r} must be a finite number > 0 (1 turns it off)`);
  }
}

/** Chooses tokens from logits; keeps its scratch arrays between calls (one per generation loop). */
export class TokenSampler {
  readonly options: Readonly<SamplingOptions>;
  #scores = new Float64Array(0);
  #sorted = new Float64Array(0);

  constructor(options: SamplingOptions = {}, readonly rng?: Rng) {
    checkOptions(options);
    this.options = { ...options };
    if (this.#sampling && !rng) {
      throw new Error("TokenSampler: sampling needs an Rng (or set doSample: false)");
    }
  }

  get #sampling(): boolean {
    return (this.options.doSample ?? true) && (this.options.temperature ?? 1) > 0;
  }

  /** The scores after the repetition penalty and temperature, with filtered tokens at -Infinity
   * (what HF's logits processors and warpers leave). `context` holds the prompt and the tokens
   * generated so far. */
  processed(logits: ArrayLike<number>, context: ArrayLike<number> = []): Float64Array {
    const V = logits.length;
    if (V === 0) throw new Error("TokenSampler: empty logits row");
    if (this.#scores.length !== V) {
      this.#scores = new Float64Array(V);
      this.#sorted = new Float64Array(V);
    }
    const s = this.#scores;
    for (let i = 0; i < V; i++) s[i] = logits[i];
    const penalty = this.options.repetitionPenalty ?? 1;
    if (penalty !== 1) {
      const seen = new Set<number>();
      for (let i = 0; i < context.length; i++) {
        const id = context[i];
        if (id < 0 || id >= V || seen.has(id)) continue;
        seen.add(id);
        s[id] = s[id] < 0 ? s[id] * penalty : s[id] / penalty;
      }
    }
    if (!this.#sampling) return s;
    const temperature = this.options.temperature ?? 1;
    if (temperature !== 1) { for (let i = 0; i < V; i++) s[i] /= temperature; }
    const k = this.options.topK ?? 0;
    if (k > 0 && k < V) this.#keepAtLeast(this.#kthLargest(k));
    const p = this.options.topP ?? 1;
    if (p < 1) this.#keepAtLeast(this.#nucleusThreshold(p));
    return s;
  }

  /** The next token id. */
  next(logits: ArrayLike<number>, context: ArrayLike<number> = []): number {
    const s = this.processed(logits, context);
    if (!this.#sampling) return argmax(s);
    let max = -Infinity;
    for (let i = 0; i < s.length; i++) if (s[i] > max) max = s[i];
    if (!Number.isFinite(max)) {
      throw new Error(
        `TokenSampler: no finite logit left to sample from (largest is ${max}); check the model output`,
      );
    }
    let sum = 0;
    for (let i = 0; i < s.length; i++) sum += s[i] === -Infinity ? 0 : Math.exp(s[i] - max);
    const u = this.rng!.next() * sum;
    let acc = 0;
    let last = -1;
    for (let i = 0; i < s.length; i++) {
      if (s[i] === -Infinity) continue;
      acc += Math.exp(s[i] - max);
      last = i;
      if (acc > u) return i;
    }
    return last;
  }

  #keepAtLeast(threshold: number): void {
    const s = this.#scores;
    for (let i = 0; i < s.length; i++) if (s[i] < threshold) s[i] = -Infinity;
  }

  /** The scores in descending order (NaN removed), into the scratch array; returns the count. */
  #sortDescending(): number {
    const s = this.#scores;
    let n = 0;
    for (let i = 0; i < s.length; i++) if (!Number.isNaN(s[i])) this.#sorted[n++] = -s[i];
    const view = this.#sorted.subarray(0, n);
    view.sort();
    for (let i = 0; i < n; i++) view[i] = -view[i];
    return n;
  }

  #kthLargest(k: number): number {
    const n = this.#sortDescending();
    return this.#sorted[Math.min(k, n) - 1];
  }

  /** The smallest score kept by top-p: walking down the sorted scores, a token stays while the
   * probability mass above it is below p (HF keeps tokens whose ascending cumulative probability
   * exceeds 1 - p, and always the most likely one). Tokens tied with that score stay too. */
  #nucleusThreshold(p: number): number {
    const n = this.#sortDescending();
    const sorted = this.#sorted;
    const max = sorted[0];
    if (!Number.isFinite(max)) return max;
    let total = 0;
    for (let i = 0; i < n; i++) total += Math.exp(sorted[i] - max);
    let above = 0;
    let threshold = max;
    for (let i = 0; i < n; i++) {
      if (above >= p * total) break;
      threshold = sorted[i];
      above += Math.exp(sorted[i] - max);
    }
    return threshold;
  }
}

/** Index of the largest value (the first one on ties), as torch.argmax; the same scan that the GPU
 * argmax of greedy decoding (kernels/argmax) is tested against. */
export const argmax: (values: ArrayLike<number>) => number = argmaxRef;

/** Whether `id` ends the generation (Llama-3.1: 128001, 128008, 128009). */
export function isStopToken(id: number, eosTokenIds: readonly number[]): boolean {
  return eosTokenIds.includes(id);
}
