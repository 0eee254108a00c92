// Float64 reference of the LoRA family: the specification the kernels are tested against.
//   Y = X W^T + s · (Xd A^T) B^T,  Xd = dropout(X)
// W is the base weight [out, in] (for QLoRA the dequantized NF4 weight), A [R, in], B [out, R].
// Products are exact (float64); only Xd is rounded to f16 as the dropout kernel stores it.

import { roundToF16 } from "../../engine/buffers.ts";
import { loraDropoutParams } from "./lora.ts";

/** The PCG hash of lora_dropout.wgsl. */
export function pcgHash(v: number): number {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

/** Whether element e survives dropout with probability p under `seed`. */
export function loraKeep(seed: number, p: number, e: number): boolean {
  const { threshold } = loraDropoutParams(p);
  return pcgHash((e + pcgHash(seed >>> 0)) >>> 0) >= threshold;
}

/** dropout(X) as the kernel stores it (f16); X itself when p = 0. */
export function loraDropoutRef(x: ArrayLike<number>, p: number, seed: number): Float64Array {
  if (p === 0) return Float64Array.from(x);
  const { scale } = loraDropoutParams(p);
  const out = new Float64Array(x.length);
  for (let e = 0; e < x.length; e++) out[e] = loraKeep(seed, p, e) ? Math.fround(x[e] * scale) : 0;
  return roundToF16(out);
}

function mm(
  a: ArrayLike<number>,
  aAt: (a: ArrayLike<number>, m: number, k: number) => number,
  b: ArrayLike<number>,
  bAt: (b: ArrayLike<number>, k: number, n: number) => number,
  M: number,
  N: number,
  K: number,
): Float64Array {
  const c = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += aAt(a, m, k) * bAt(b, k, n);
      c[m * N + n] = s;
    }
  }
  return c;
}

export interface LoraRefShape {
  T: number;
  in: number;
  out: number;
  R: number;
  scale: number;
  p: number;
  seed: number;
}

/** Forward: Y [T, out] and U = Xd A^T [T, R]. */
export function loraForwardRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  s: LoraRefShape,
): { y: Float64Array; u: Float64Array } {
  const { T, R } = s;
  const xd = loraDropoutRef(x, s.p, s.seed);
  const u = mm(xd, (v, m, k) => v[m * s.in + k], a, (v, k, n) => v[n * s.in + k], T, R, s.in);
  const base = mm(x, (v, m, k) => v[m * s.in + k], w, (v, k, n) => v[n * s.in + k], T, s.out, s.in);
  const low = mm(u, (v, m, k) => v[m * R + k], b, (v, k, n) => v[n * R + k], T, s.out, R);
  const y = base.map((v, i) => v + s.scale * low[i]);
  return { y, u };
}

/** Backward: dX [T, in], dA [R, in], dB [out, R] from dY [T, out] (U as the kernels keep it). */
export function loraBackwardRef(
  x: ArrayLike<number>,
  dy: ArrayLike<number>,
  u: ArrayLike<number>,
  w: ArrayLike<number>,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  s: LoraRefShape,
): { dx: Float64Array; dA: Float64Array; dB: Float64Array; du: Float64Array } {
  const { T, R } = s;
  const xd = loraDropoutRef(x, s.p, s.seed);
  const dB = mm(dy, (v, m, k) => v[k * s.out + m], u, (v, k, n) => v[k * R + n], s.out, R, T).map((v) =>
    s.scale * v
  );
  const du = mm(dy, (v, m, k) => v[m * s.out + k], b, (v, k, n) => v[k * R + n], T, R, s.out).map((v) =>
    s.scale * v
  );
  const dA = mm(du, (v, m, k) => v[k * R + m], xd, (v, k, n) => v[k * s.in + n], R, s.in, T);
  const base = mm(dy, (v, m, k) => v[m * s.out + k], w, (v, k, n) => v[k * s.in + n], T, s.in, s.out);
  const g = mm(du, (v, m, k) => v[m * R + k], a, (v, k, n) => v[k * s.in + n], T, s.in, R);
  const { scale } = loraDropoutParams(s.p);
  const dx = base.map((v, e) => v + (s.p === 0 ? g[e] : loraKeep(s.seed, s.p, e) ? g[e] * scale : 0));
  return { dx, dA, dB, du };
}
