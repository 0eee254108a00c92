// Float64 reference of rotary position embedding: the specification the kernels are tested
// against. The angle is position * invFreq[i] taken exactly (invFreq as the f32 table).

/** x [T, heads, D] rotated by position * invFreq (dir -1: by the negative angle). */
export function ropeRef(
  x: ArrayLike<number>,
  positions: ArrayLike<number>,
  invFreq: ArrayLike<number>,
  T: number,
  heads: number,
  D: number,
  dir: 1 | -1 = 1,
): Float64Array {
  const y = new Float64Array(T * heads * D);
  const half = D / 2;
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * D;
      for (let i = 0; i < half; i++) {
        const a = positions[t] * invFreq[i];
        const c = Math.cos(a);
        const s = dir * Math.sin(a);
        const x0 = x[base + i];
        const x1 = x[base + i + half];
        y[base + i] = x0 * c - x1 * s;
        y[base + i + half] = x1 * c + x0 * s;
      }
    }
  }
  return y;
}
