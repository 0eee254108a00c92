// Float64 reference of the matmul family: the specification the kernels are tested against.

import type { MatmulLayout } from "./matmul.ts";

/** C[M,N] = alpha * op(A) · op(B) + beta * C, operands laid out as in MatmulLayout. */
export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  M: number,
  N: number,
  K: number,
  layout: MatmulLayout,
  { alpha = 1, beta = 0, c }: { alpha?: number; beta?: number; c?: ArrayLike<number> } = {},
): Float64Array {
  const out = new Float64Array(M * N);
  const aAt = layout === "tn"
    ? (m: number, k: number) => a[k * M + m]
    : (m: number, k: number) => a[m * K + k];
  const bAt = layout === "nt"
    ? (k: number, n: number) => b[n * K + k]
    : (k: number, n: number) => b[k * N + n];
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += aAt(m, k) * bAt(k, n);
      out[m * N + n] = alpha * s + (beta !== 0 && c ? beta * c[m * N + n] : 0);
    }
  }
  return out;
}
