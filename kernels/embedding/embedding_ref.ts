// Float64 reference of the token embedding: the specification the kernels are tested against.

/** out[t, :] = table[ids[t], :], zeros for ids outside [0, V). */
export function embeddingRef(
  table: ArrayLike<number>,
  ids: ArrayLike<number>,
  T: number,
  C: number,
  V: number,
): Float64Array {
  const out = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    const id = ids[t];
    if (id < 0 || id >= V) continue;
    for (let c = 0; c < C; c++) out[t * C + c] = table[id * C + c];
  }
  return out;
}

/** dTable0 + scatter-add of dy rows by id (ids outside [0, V) dropped). */
export function embeddingBackwardRef(
  dy: ArrayLike<number>,
  ids: ArrayLike<number>,
  T: number,
  C: number,
  V: number,
  dTable0?: ArrayLike<number>,
): Float64Array {
  const d = dTable0 ? Float64Array.from(dTable0) : new Float64Array(V * C);
  for (let t = 0; t < T; t++) {
    const id = ids[t];
    if (id < 0 || id >= V) continue;
    for (let c = 0; c < C; c++) d[id * C + c] += dy[t * C + c];
  }
  return d;
}
