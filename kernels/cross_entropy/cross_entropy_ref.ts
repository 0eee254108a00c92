// Float64 reference of the cross_entropy family: the specification the kernels are tested against.
// Shapes as in cross_entropy.ts: hidden [T, C], weight [V, C], labels [T] (-100 ignored).

export interface CrossEntropyRefResult {
  /** [T]: lse - logit[label], 0 for ignored tokens, NaN for a label outside [0, V). */
  loss: Float64Array;
  /** [T]: log-sum-exp of each row's logits. */
  lse: Float64Array;
  /** Sum of loss over valid tokens and their count. */
  sum: number;
  count: number;
}

function rowLogits(hidden: ArrayLike<number>, weight: ArrayLike<number>, t: number, C: number, V: number) {
  const z = new Float64Array(V);
  for (let v = 0; v < V; v++) {
    let s = 0;
    for (let c = 0; c < C; c++) s += hidden[t * C + c] * weight[v * C + c];
    z[v] = s;
  }
  return z;
}

function logSumExp(z: Float64Array): number {
  let m = -Infinity;
  for (const x of z) m = Math.max(m, x);
  let s = 0;
  for (const x of z) s += Math.exp(x - m);
  return m + Math.log(s);
}

export function crossEntropyRef(
  hidden: ArrayLike<number>,
  weight: ArrayLike<number>,
  labels: ArrayLike<number>,
  T: number,
  C: number,
  V: number,
): CrossEntropyRefResult {
  const loss = new Float64Array(T);
  const lse = new Float64Array(T);
  let sum = 0;
  let count = 0;
  for (let t = 0; t < T; t++) {
    const z = rowLogits(hidden, weight, t, C, V);
    lse[t] = logSumExp(z);
    const label = labels[t];
    if (label === -100) continue;
    loss[t] = label >= 0 && label < V ? lse[t] - z[label] : NaN;
    sum += loss[t];
    count++;
  }
  return { loss, lse, sum, count };
}

/** dHidden[T, C] = sum_v (softmax_v - onehot(label)_v) * scale * W[v, :], 0 rows for ignored tokens. */
export function crossEntropyBackwardRef(
  hidden: ArrayLike<number>,
  weight: ArrayLike<number>,
  labels: ArrayLike<number>,
  T: number,
  C: number,
  V: number,
  scale: number,
): Float64Array {
  const dh = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    const label = labels[t];
    if (label === -100) continue;
    const z = rowLogits(hidden, weight, t, C, V);
    const l = logSumExp(z);
    for (let v = 0; v < V; v++) {
      const g = (Math.exp(z[v] - l) - (v === label ? 1 : 0)) * scale;
      if (g === 0) continue;
      for (let c = 0; c < C; c++) dh[t * C + c] += g * weight[v * C + c];
    }
  }
  return dh;
}
