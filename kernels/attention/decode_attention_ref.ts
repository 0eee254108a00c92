// Float64 reference of decode attention: one query position per head over the first n rows of a
// KV cache, with grouped-query heads. The specification decode_attention.ts is tested against.
//
// Dimension letters: H query heads, KVH kv heads, D head dim, Tmax cache rows.
//   q [H,D]; k, v [Tmax,KVH,D]; out [H,D]. Query head h reads kv head floor(h / (H / KVH)).

export interface DecodeAttentionRefShape {
  n: number;
  H: number;
  KVH: number;
  D: number;
  scale: number;
}

/** out[h] = sum_j softmax_j(scale q[h]·k[j,g]) v[j,g] over j < n. */
export function decodeAttentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  s: DecodeAttentionRefShape,
): Float64Array {
  const { n, H, KVH, D } = s;
  const out = new Float64Array(H * D);
  const scores = new Float64Array(n);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / (H / KVH));
    let m = -Infinity;
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let d = 0; d < D; d++) acc += q[h * D + d] * k[(j * KVH + g) * D + d];
      scores[j] = acc * s.scale;
      m = Math.max(m, scores[j]);
    }
    let sum = 0;
    for (let j = 0; j < n; j++) sum += Math.exp(scores[j] - m);
    for (let j = 0; j < n; j++) {
      const w = Math.exp(scores[j] - m) / sum;
      for (let d = 0; d < D; d++) out[h * D + d] += w * v[(j * KVH + g) * D + d];
    }
  }
  return out;
}
