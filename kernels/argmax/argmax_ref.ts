// Reference of the argmax kernel, and the CPU argmax of greedy decoding (model/sampling.ts), so
// that a token chosen on the GPU and one chosen on the host cannot differ.

/** Index of the largest value, as torch.argmax on finite values: the sequential scan from index 0,
 * so the first index on ties; a NaN never compares greater, so one at index 0 keeps 0. */
export function argmaxRef(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}
