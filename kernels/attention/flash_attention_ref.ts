// Float64 reference of the attention family: naive scaled dot-product attention with an optional
// causal mask and grouped-query heads, its row log-sum-exp, and its backward by the analytic
// formulas. The specification the kernels are tested against.
//
// Dimension letters: B sequences, T tokens, H query heads, KVH kv heads, D head dim.
//   q, o, dO, dq [B,T,H,D]; k, v, dk, dv [B,T,KVH,D]; lse, delta [B,H,T].
// Query head h reads kv head floor(h / (H / KVH)).

export interface AttentionRefShape {
  B: number;
  T: number;
  H: number;
  KVH: number;
  D: number;
  causal: boolean;
  /** Multiplies q·k; 1/sqrt(D) in Llama. */
  scale: number;
}

/** Scores of query row t of head h against every visible key row (masked ones left out). */
function scoresOf(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  s: AttentionRefShape,
  b: number,
  t: number,
  h: number,
): Float64Array {
  const { T, H, KVH, D } = s;
  const g = Math.floor(h / (H / KVH));
  const n = s.causal ? t + 1 : T;
  const out = new Float64Array(n);
  const qo = ((b * T + t) * H + h) * D;
  for (let j = 0; j < n; j++) {
    const ko = ((b * T + j) * KVH + g) * D;
    let acc = 0;
    for (let d = 0; d < D; d++) acc += q[qo + d] * k[ko + d];
    out[j] = acc * s.scale;
  }
  return out;
}

function logSumExp(x: Float64Array): number {
  let m = -Infinity;
  for (const v of x) m = Math.max(m, v);
  let sum = 0;
  for (const v of x) sum += Math.exp(v - m);
  return m + Math.log(sum);
}

/** Forward: o [B,T,H,D] and lse [B,H,T] (natural log of the sum of exp of the scaled scores). */
export function flashAttentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  s: AttentionRefShape,
): { o: Float64Array; lse: Float64Array } {
  const { B, T, H, KVH, D } = s;
  const o = new Float64Array(B * T * H * D);
  const lse = new Float64Array(B * H * T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / KVH));
      for (let t = 0; t < T; t++) {
        const sc = scoresOf(q, k, s, b, t, h);
        const l = logSumExp(sc);
        lse[(b * H + h) * T + t] = l;
        const oo = ((b * T + t) * H + h) * D;
        for (let j = 0; j < sc.length; j++) {
          const pj = Math.exp(sc[j] - l);
          const vo = ((b * T + j) * KVH + g) * D;
          for (let d = 0; d < D; d++) o[oo + d] += pj * v[vo + d];
        }
      }
    }
  }
  return { o, lse };
}

/** Backward: the gradients of sum(o * dO) with respect to q, k and v, with P recomputed and
 * delta = rowsum(dO * o), dS = P * (dO·v^T - delta), dq = scale dS k, dk = scale dS^T q,
 * dv = P^T dO, the kv gradients summed over the query heads of each group. */
export function flashAttentionBackwardRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dO: ArrayLike<number>,
  s: AttentionRefShape,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array; delta: Float64Array } {
  const { B, T, H, KVH, D } = s;
  const dq = new Float64Array(B * T * H * D);
  const dk = new Float64Array(B * T * KVH * D);
  const dv = new Float64Array(B * T * KVH * D);
  const delta = new Float64Array(B * H * T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / KVH));
      for (let t = 0; t < T; t++) {
        const sc = scoresOf(q, k, s, b, t, h);
        const l = logSumExp(sc);
        const qo = ((b * T + t) * H + h) * D;
        const n = sc.length;
        const pr = new Float64Array(n);
        const dp = new Float64Array(n);
        let dl = 0;
        for (let j = 0; j < n; j++) {
          pr[j] = Math.exp(sc[j] - l);
          const vo = ((b * T + j) * KVH + g) * D;
          let acc = 0;
          for (let d = 0; d < D; d++) acc += dO[qo + d] * v[vo + d];
          dp[j] = acc;
          dl += pr[j] * acc; // sum_j P dP = dO · o
        }
        delta[(b * H + h) * T + t] = dl;
        for (let j = 0; j < n; j++) {
          const ds = pr[j] * (dp[j] - dl);
          const ko = ((b * T + j) * KVH + g) * D;
          for (let d = 0; d < D; d++) {
            dq[qo + d] += s.scale * ds * k[ko + d];
            dk[ko + d] += s.scale * ds * q[qo + d];
            dv[ko + d] += pr[j] * dO[qo + d];
          }
        }
      }
    }
  }
  return { dq, dk, dv, delta };
}
