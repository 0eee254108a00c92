// The one launcher of the token embedding: gather forward, and a deterministic scatter-add
// backward driven by a plan made on the CPU from the ids (which the CPU has: they come from the
// tokenizer).
//
// Dimension letters: T tokens, C hidden size (even), V vocabulary.
//   table: f16 [V, C]   ids: i32 [T]   out, dy: f16 [T, C]   dTable: f32 [V, C]
// Ids outside [0, V) give zero rows in the forward and no gradient; checkEmbeddingIds finds them on
// the CPU first with a message that names them.
//
// The forward copies rows as 16-byte vectors where C is a multiple of 8 (every Llama hidden size),
// otherwise as 4-byte words; two units per invocation, all loads before the stores, one workgroup
// row per token.

import type { Binding, Encoder } from "../../engine/encoder.ts";
import { elementwiseGrid } from "../elementwise/elementwise.ts";
import embeddingCode from "./embedding.wgsl" with { type: "text" };

const SHADER = { file: "kernels/embedding/embedding.wgsl", code: embeddingCode };

/** Throws, naming the first offending token, where an id is outside [0, V). */
export function checkEmbeddingIds(ids: ArrayLike<number>, V: number): void {
  let bad = 0;
  let first = -1;
  for (let t = 0; t < ids.length; t++) {
    const id = ids[t];
    if (!(Number.isInteger(id) && id >= 0 && id < V)) {
      bad++;
      if (first < 0) first = t;
    }
  }
  if (bad > 0) {
    throw new RangeError(
      `Token id ${ids[first]} at position ${first} is outside the vocabulary [0, ${V}) ` +
        `(${bad} of ${ids.length} ids are); check that the tokenizer matches the model's vocab_size.`,
    );
  }
}

/** Tokens grouped by id for embeddingBackward: `order` lists token indices id by id (in token
 * order within an id), the tokens of uniqueIds[u] are order[starts[u] .. starts[u+1]). Ids outside
 * [0, V) are left out. */
export interface EmbeddingBackwardPlan {
  uniqueIds: Int32Array;
  starts: Uint32Array;
  order: Uint32Array;
}

export function embeddingBackwardPlan(ids: ArrayLike<number>, V: number): EmbeddingBackwardPlan {
  const byId = new Map<number, number[]>();
  for (let t = 0; t < ids.length; t++) {
    const id = ids[t];
    if (!(Number.isInteger(id) && id >= 0 && id < V)) continue;
    let list = byId.get(id);
    if (!list) byId.set(id, list = []);
    list.push(t);
  }
  const uniqueIds = Int32Array.from([...byId.keys()].sort((a, b) => a - b));
  const starts = new Uint32Array(uniqueIds.length + 1);
  const order: number[] = [];
  uniqueIds.forEach((id, u) => {
    starts[u] = order.length;
    order.push(...byId.get(id)!);
  });
  starts[uniqueIds.length] = order.length;
  return { uniqueIds, starts, order: Uint32Array.from(order) };
}

function checkShape(what: string, T: number, C: number, V: number): void {
  if (!Number.isInteger(T) || T < 0) throw new RangeError(`${what}: T = ${T} must be a whole number >= 0`);
  if (!Number.isInteger(V) || V <= 0) {
    throw new RangeError(`${what}: V = ${V} must be a positive whole number`);
  }
  if (!Number.isInteger(C) || C <= 0 || C % 2 !== 0) {
    throw new RangeError(`${what}: C = ${C} must be a positive even number (rows move as f16 pairs)`);
  }
}

function params(T: number, C: number, V: number, U: number): Uint32Array {
  return new Uint32Array([T, C, V, U]);
}

export interface EmbeddingForwardArgs {
  /** f16 [V, C]. */
  table: Binding;
  /** i32 [T]. */
  ids: Binding;
  /** f16 [T, C]. */
  out: Binding;
  T: number;
  C: number;
  V: number;
}

/** Units one workgroup of the forward copies (WG * UNITS in the shader). */
const FORWARD_UNITS_PER_GROUP = 256 * 2;

/** out[t, :] = table[ids[t], :]; zeros for ids outside [0, V). */
export async function embeddingForward(enc: Encoder, args: EmbeddingForwardArgs): Promise<void> {
  const { T, C, V } = args;
  checkShape("embeddingForward", T, C, V);
  if (T === 0) return;
  const vector = C % 8 === 0;
  const pipeline = await enc.gpu.pipelines.get({
    shader: SHADER,
    entry: vector ? "forward" : "forward_words",
  });
  const max = enc.gpu.caps.limits.maxComputeWorkgroupsPerDimension;
  const x = Math.ceil(C / (vector ? 8 : 2) / FORWARD_UNITS_PER_GROUP);
  const z = Math.ceil(T / max);
  if (z > max) {
    throw new RangeError(`embeddingForward: T = ${T} tokens exceed the ${max}x${max} workgroup grid`);
  }
  enc.dispatch(pipeline, params(T, C, V, 0), [args.table, args.ids, args.out], [x, Math.ceil(T / z), z]);
}

export interface EmbeddingBackwardArgs {
  /** f16 [T, C]: gradient of the forward's output. */
  dy: Binding;
  /** The plan's arrays, uploaded: u32 [T'], u32 [U + 1], i32 [U] (T' tokens with valid ids). */
  order: Binding;
  starts: Binding;
  uniqueIds: Binding;
  /** Number of distinct ids, plan.uniqueIds.length. */
  U: number;
  /** f32 [V, C]: the gradient is added to what it holds (zero it for a fresh gradient). */
  dTable: Binding;
  T: number;
  C: number;
  V: number;
}

/** dTable[id, :] += sum of dy over the tokens with that id, in f32, one workgroup per distinct id. */
export async function embeddingBackward(enc: Encoder, args: EmbeddingBackwardArgs): Promise<void> {
  const { T, C, V, U } = args;
  checkShape("embeddingBackward", T, C, V);
  if (!Number.isInteger(U) || U < 0 || U > Math.min(T, V)) {
    throw new RangeError(`embeddingBackward: U = ${U} distinct ids must be between 0 and min(T, V)`);
  }
  const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry: "backward" });
  enc.dispatch(
    pipeline,
    params(T, C, V, U),
    [args.dy, args.order, args.starts, args.uniqueIds, args.dTable],
    elementwiseGrid(enc.gpu.caps, U, 1),
  );
}
