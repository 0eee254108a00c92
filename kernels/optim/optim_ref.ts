// Float64 reference of the optim family: the specification the kernels are tested against.
// The 8-bit optimizer's arithmetic runs in float64; its quantization is bitsandbytes' search,
// the same decisions as the kernel, so codes agree except where a value sits on a midpoint.

import type { AdamWHyper } from "./optim.ts";

export interface AdamWRefState {
  param: Float64Array;
  m: Float64Array;
  v: Float64Array;
}

/** One AdamW step; "torch" decays before the update, "bitsandbytes" after it. */
export function adamwRef(
  param: ArrayLike<number>,
  grad: ArrayLike<number>,
  m: ArrayLike<number>,
  v: ArrayLike<number>,
  h: AdamWHyper,
  order: "torch" | "bitsandbytes" = "torch",
): AdamWRefState {
  const n = param.length;
  const out = { param: new Float64Array(n), m: new Float64Array(n), v: new Float64Array(n) };
  const c1 = 1 - h.beta1 ** h.step;
  const c2 = Math.sqrt(1 - h.beta2 ** h.step);
  const decay = 1 - h.lr * h.weightDecay;
  for (let i = 0; i < n; i++) {
    const g = grad[i];
    const mi = h.beta1 * m[i] + (1 - h.beta1) * g;
    const vi = h.beta2 * v[i] + (1 - h.beta2) * g * g;
    let p = param[i];
    if (order === "torch") {
      p *= decay;
      p -= (h.lr / c1) * mi / (Math.sqrt(vi) / c2 + h.eps);
    } else {
      p -= (h.lr * c2 / c1) * mi / (Math.sqrt(vi) + h.eps * c2);
      p *= decay;
    }
    out.param[i] = p;
    out.m[i] = mi;
    out.v[i] = vi;
  }
  return out;
}

/** bitsandbytes' quantize_2D: the code of x (normalized by the block absmax) in a sorted map. */
export function quantizeDynamic(map: ArrayLike<number>, x: number, signed: boolean): number {
  let pivot = 127;
  let upperPivot = 255;
  let lowerPivot = 0;
  let lower = signed ? -1 : 0;
  let upper = 1;
  let val = map[pivot];
  for (let i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lowerPivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upperPivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = map[pivot];
  }
  // The midpoints in f32, as the CUDA kernel forms them.
  if (x > val) return x > Math.fround(upper + val) * 0.5 ? upperPivot : pivot;
  return x < Math.fround(lower + val) * 0.5 ? lowerPivot : pivot;
}

function signBit(x: number): boolean {
  return x < 0 || Object.is(x, -0);
}

export interface AdamW8bitRefState {
  param: Float64Array;
  codesM: Uint8Array;
  codesV: Uint8Array;
  /** Per block, rounded to f32 as stored. */
  absmaxM: Float32Array;
  absmaxV: Float32Array;
  /** The unquantized new states divided by their block absmax (what was quantized). */
  normM: Float64Array;
  normV: Float64Array;
}

/** One bitsandbytes AdamW 8-bit step (block 256) from the given codes and absmax. */
export function adamw8bitRef(
  param: ArrayLike<number>,
  grad: ArrayLike<number>,
  codesM: ArrayLike<number>,
  codesV: ArrayLike<number>,
  absmaxM: ArrayLike<number>,
  absmaxV: ArrayLike<number>,
  h: AdamWHyper,
  mapM: ArrayLike<number>,
  mapV: ArrayLike<number>,
): AdamW8bitRefState {
  const n = param.length;
  const blocks = Math.ceil(n / 256);
  const out: AdamW8bitRefState = {
    param: Float64Array.from(param),
    codesM: new Uint8Array(n),
    codesV: new Uint8Array(n),
    absmaxM: new Float32Array(blocks),
    absmaxV: new Float32Array(blocks),
    normM: new Float64Array(n),
    normV: new Float64Array(n),
  };
  // The kernel forms 1 - beta in f32 from f32 betas, as bitsandbytes does.
  const beta1 = Math.fround(h.beta1);
  const beta2 = Math.fround(h.beta2);
  const c1 = 1 - h.beta1 ** h.step;
  const c2 = Math.sqrt(1 - h.beta2 ** h.step);
  const stepSize = -h.lr * c2 / c1;
  const decay = 1 - h.lr * h.weightDecay;
  for (let b = 0; b < blocks; b++) {
    const lo = b * 256;
    const hi = Math.min(n, lo + 256);
    const s1 = new Float64Array(hi - lo);
    const s2 = new Float64Array(hi - lo);
    let maxM = 0;
    let maxV = 0;
    for (let i = lo; i < hi; i++) {
      const g = grad[i];
      if (Number.isFinite(g)) {
        s2[i - lo] = mapV[codesV[i]] * absmaxV[b] * beta2 + (1 - beta2) * g * g;
        s1[i - lo] = mapM[codesM[i]] * absmaxM[b] * beta1 + (1 - beta1) * g;
      }
      maxM = Math.max(maxM, Math.abs(s1[i - lo]));
      maxV = Math.max(maxV, Math.abs(s2[i - lo]));
    }
    out.absmaxM[b] = maxM;
    out.absmaxV[b] = maxV;
    for (let i = lo; i < hi; i++) {
      const m = s1[i - lo];
      const v = s2[i - lo];
      if (Number.isFinite(grad[i])) {
        out.param[i] = (param[i] + stepSize * (m / (Math.sqrt(v) + c2 * h.eps))) * decay;
      }
      if (maxM > 0) {
        const x = m / maxM;
        out.normM[i] = x;
        let q = quantizeDynamic(mapM, x, true);
        if (signBit(mapM[q]) !== signBit(m)) q = (m > 0 ? q + 1 : q - 1) & 255;
        out.codesM[i] = q;
      } else {
        out.codesM[i] = 255;
      }
      if (maxV > 0) {
        const x = v / maxV;
        out.normV[i] = x;
        out.codesV[i] = quantizeDynamic(mapV, x, false);
      } else {
        out.codesV[i] = 0;
      }
    }
  }
  return out;
}

/** Global L2 norm and whether any element is non-finite. */
export function gradStatsRef(grads: ArrayLike<number>[]): { norm: number; nonfinite: boolean } {
  let s = 0;
  let nonfinite = false;
  for (const g of grads) {
    for (let i = 0; i < g.length; i++) {
      if (!Number.isFinite(g[i])) nonfinite = true;
      s += g[i] * g[i];
    }
  }
  return { norm: Math.sqrt(s), nonfinite };
}

/** The factor that clipping multiplies every gradient by (torch.nn.utils.clip_grad_norm_). */
export function clipFactorRef(norm: number, maxNorm: number): number {
  return Math.min(1, maxNorm / (norm + 1e-6));
}
