// Float64 reference of the SwiGLU gate: the specification the kernels are tested against.

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/** h = silu(g) * u. */
export function swigluRef(g: ArrayLike<number>, u: ArrayLike<number>): Float64Array {
  const h = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) h[i] = g[i] * sigmoid(g[i]) * u[i];
  return h;
}

/** Gradients of g and u given dh. */
export function swigluBackwardRef(
  dh: ArrayLike<number>,
  g: ArrayLike<number>,
  u: ArrayLike<number>,
): { dg: Float64Array; du: Float64Array } {
  const dg = new Float64Array(g.length);
  const du = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) {
    const s = sigmoid(g[i]);
    du[i] = dh[i] * g[i] * s;
    dg[i] = dh[i] * u[i] * s * (1 + g[i] * (1 - s));
  }
  return { dg, du };
}
