// Float64 reference of the matvec family (the specification of matvec.ts):
//   y[o] = alpha · Σ_i W[o, i] x[i] + alpha2 · Σ_k W2[o, k] x2[k] + beta · y0[o]
// W [out, in] row-major as numbers (an NF4 weight enters dequantized without f16 rounding:
// nf4DequantRef(w, { f16: false }), since the kernel scales the f32 codebook sums by the f32 absmax).

export interface MatvecRefArgs {
  w: ArrayLike<number>;
  out: number;
  in: number;
  x: ArrayLike<number>;
  alpha?: number;
  beta?: number;
  /** The previous y (read when beta != 0). */
  y0?: ArrayLike<number>;
  second?: { w: ArrayLike<number>; x: ArrayLike<number>; K: number; alpha: number };
}

export function matvecRef(a: MatvecRefArgs): Float64Array {
  const { out, in: n } = a;
  const alpha = a.alpha ?? 1;
  const beta = a.beta ?? 0;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += a.w[o * n + i] * a.x[i];
    let v = alpha * s;
    if (a.second) {
      const { K } = a.second;
      let t = 0;
      for (let k = 0; k < K; k++) t += a.second.w[o * K + k] * a.second.x[k];
      v += a.second.alpha * t;
    }
    if (beta !== 0) v += beta * a.y0![o];
    y[o] = v;
  }
  return y;
}
