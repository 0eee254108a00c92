/**
 * Length-bucketed batching: examples of similar length go in the same batch so that little
 * of each [B, T] batch is padding; the order of batches is shuffled with a seed per epoch.
 *
 * Shapes: B = examples in a batch, T = the longest example of the batch (no rounding unless
 * `padMultiple` is set). Collated arrays are row-major [B, T].
 */
import { IGNORE_INDEX } from "./chat_template.ts";
import { mulberry32, shuffleInPlace } from "./rng.ts";

export interface BatcherOptions {
  /** Examples per batch (upper bound). Default 1. */
  batchSize?: number;
  /** Also cap B * T (padded tokens per batch); 0 = no cap. Default 0. */
  maxTokensPerBatch?: number;
  /** Round T up to a multiple of this (e.g. 8 or 64 for kernels). Default 1. */
  padMultiple?: number;
  /** Base seed; epoch e uses seed + e. Default 3407. */
  seed?: number;
}

/** A batch as indices into the example list. */
export interface BatchPlan {
  indices: number[];
  /** Padded length T. */
  seqLen: number;
}

export interface PaddingReport {
  batches: number;
  realTokens: number;
  paddedTokens: number;
  /** paddedTokens / (realTokens + paddedTokens), 0..1. */
  waste: number;
}

export class LengthBucketedBatcher {
  readonly batchSize: number;
  readonly maxTokensPerBatch: number;
  readonly padMultiple: number;
  readonly seed: number;

  constructor(readonly lengths: readonly number[], options: BatcherOptions = {}) {
    this.batchSize = options.batchSize ?? 1;
    this.maxTokensPerBatch = options.maxTokensPerBatch ?? 0;
    this.padMultiple = options.padMultiple ?? 1;
    this.seed = options.seed ?? 3407;
    if (!Number.isInteger(this.batchSize) || this.batchSize < 1) {
      throw new Error(`batch size is ${this.batchSize}; it must be an integer >= 1.`);
    }
    if (!Number.isInteger(this.padMultiple) || this.padMultiple < 1) {
      throw new Error(`pad multiple is ${this.padMultiple}; it must be an integer >= 1.`);
    }
    const maxLen = Math.max(0, ...lengths);
    if (this.maxTokensPerBatch > 0 && this.padTo(maxLen) > this.maxTokensPerBatch) {
      throw new Error(
        `max tokens per batch is ${this.maxTokensPerBatch} but the longest example has ${maxLen} ` +
          `tokens; raise it to at least ${this.padTo(maxLen)}.`,
      );
    }
  }

  padTo(n: number): number {
    return Math.ceil(n / this.padMultiple) * this.padMultiple;
  }

  /**
   * Batches of one epoch: examples sorted by length (ties broken by a seeded shuffle), cut
   * into consecutive groups, then the group order shuffled. Every example appears once.
   */
  plan(epoch = 0): BatchPlan[] {
    const rand = mulberry32(this.seed + epoch);
    const idx = shuffleInPlace(this.lengths.map((_, i) => i), rand);
    idx.sort((a, b) => this.lengths[a] - this.lengths[b]); // stable: keeps the shuffle for ties
    const batches: BatchPlan[] = [];
    let cur: number[] = [];
    let curMax = 0;
    for (const i of idx) {
      const len = this.padTo(this.lengths[i]);
      const newMax = Math.max(curMax, len);
      const full = cur.length >= this.batchSize ||
        (this.maxTokensPerBatch > 0 && newMax * (cur.length + 1) > this.maxTokensPerBatch);
      if (cur.length > 0 && full) {
        batches.push({ indices: cur, seqLen: curMax });
        cur = [];
        curMax = 0;
      }
      cur.push(i);
      curMax = Math.max(curMax, len);
    }
    if (cur.length > 0) batches.push({ indices: cur, seqLen: curMax });
    return shuffleInPlace(batches, rand);
  }

  /** How much of the planned batches is padding (rows are padded to T; partial batches are not filled). */
  paddingReport(batches: readonly BatchPlan[] = this.plan()): PaddingReport {
    let real = 0;
    let total = 0;
    for (const b of batches) {
      for (const i of b.indices) real += this.lengths[i];
      total += b.seqLen * b.indices.length;
    }
    const padded = total - real;
    return {
      batches: batches.length,
      realTokens: real,
      paddedTokens: padded,
      waste: total ? padded / total : 0,
    };
  }
}

/** A collated batch. inputIds, labels, attentionMask: [B, T] row-major. */
export interface Batch {
  B: number;
  T: number;
  /** Token ids, right-padded with padId. */
  inputIds: Int32Array;
  /** Labels, right-padded with IGNORE_INDEX (-100). */
  labels: Int32Array;
  /** 1 for real tokens, 0 for padding. */
  attentionMask: Uint8Array;
}

/** Pads examples to [B, T] (T = `seqLen`, or the longest example when omitted). */
export function collate(
  examples: readonly { input_ids: ArrayLike<number>; labels: ArrayLike<number> }[],
  padId: number,
  seqLen?: number,
): Batch {
  const B = examples.length;
  const T = seqLen ?? Math.max(0, ...examples.map((e) => e.input_ids.length));
  const inputIds = new Int32Array(B * T).fill(padId);
  const labels = new Int32Array(B * T).fill(IGNORE_INDEX);
  const attentionMask = new Uint8Array(B * T);
  examples.forEach((e, b) => {
    const n = e.input_ids.length;
    if (n > T) throw new Error(`collate: example ${b} has ${n} tokens, more than the batch length ${T}.`);
    if (e.labels.length !== n) {
      throw new Error(`collate: example ${b} has ${n} input ids but ${e.labels.length} labels.`);
    }
    inputIds.set(e.input_ids, b * T);
    labels.set(e.labels, b * T);
    attentionMask.fill(1, b * T, b * T + n);
  });
  return { B, T, inputIds, labels, attentionMask };
}
