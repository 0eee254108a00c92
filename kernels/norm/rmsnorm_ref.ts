// Float64 reference of RMSNorm (Hugging Face Llama order): the specification the kernels are
// tested against. x, w, dy hold the numbers of the f16 inputs.

function f16(v: number): number {
  return Float16Array.of(v)[0];
}

/** y = f16(f16(x * r) * w) and r = 1 / sqrt(mean(x^2) + eps) per row. */
export function rmsnormRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  T: number,
  C: number,
  eps: number,
): { y: Float64Array; rstd: Float64Array } {
  const y = new Float64Array(T * C);
  const rstd = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[t * C + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[t] = r;
    for (let c = 0; c < C; c++) y[t * C + c] = f16(f16(x[t * C + c] * r) * w[c]);
  }
  return { y, rstd };
}

/** dx = r * dn - r^3 * x * sum(dn * x) / C with dn = dy * w, plus `dx0` where given. */
export function rmsnormBackwardRef(
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  rstd: ArrayLike<number>,
  T: number,
  C: number,
  dx0?: ArrayLike<number>,
): Float64Array {
  const dx = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    const r = rstd[t];
    let s = 0;
    for (let c = 0; c < C; c++) s += dy[t * C + c] * w[c] * x[t * C + c];
    const k = (r * r * r * s) / C;
    for (let c = 0; c < C; c++) {
      const i = t * C + c;
      dx[i] = r * dy[i] * w[c] - k * x[i] + (dx0 ? dx0[i] : 0);
    }
  }
  return dx;
}

/** dw[c] = sum over t of dy[t, c] * f16(x[t, c] * r[t]), plus `dw0` where given. */
export function rmsnormWeightGradRef(
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  rstd: ArrayLike<number>,
  T: number,
  C: number,
  dw0?: ArrayLike<number>,
): Float64Array {
  const dw = new Float64Array(C);
  for (let c = 0; c < C; c++) dw[c] = dw0 ? dw0[c] : 0;
  for (let t = 0; t < T; t++) {
    for (let c = 0; c < C; c++) dw[c] += dy[t * C + c] * f16(x[t * C + c] * rstd[t]);
  }
  return dw;
}
