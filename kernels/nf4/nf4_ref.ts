// CPU reference of the NF4 family (bitsandbytes-compatible 4-bit NormalFloat with double-quantized
// absmax): the specification that the GPU quantizer must match bit for bit, and the float64
// dequantized weight that the dequant-matmul kernels are tested against.
//
// Quantization of a weight [out, in] (flattened row-major, n = out * in elements):
// 1. Inputs are read as f32 (f16 and bf16 convert exactly); |x| < 2^-126 (f32 subnormals) counts
//    as 0, so GPUs that flush subnormals agree with the CPU.
// 2. Block b = elements [64b, 64b + 64) (the last block may be partial); absmax = max |x| (f32).
// 3. As in bitsandbytes' kQuantizeBlockwise, normed = f32(x * r) with r = f32(1 / absmax), the
//    correctly rounded reciprocal. Guard: absmax 0 (or r below 2^-126) gives r = 0, so a zero block
//    holds code 7 (the codebook's 0). bitsandbytes computes 0 * inf = NaN there and stores code 0;
//    both dequantize to 0.
// 4. code = number of NF4 midpoints that normed exceeds (strictly): the nearest codebook entry,
//    ties to the lower index, exactly bitsandbytes' dQuantizeNF4 decision tree. Midpoints are the
//    f32 values of (c[i] + c[i+1]) / 2.
// 5. Packing: byte j = code[2j] << 4 | code[2j + 1]; a missing last element packs as code 7.
// 6. Double quantization of the absmax values a[0..nb):
//    - total = fixed-order f32 sum: pairwise tree within groups of 256 (s[t] += s[t + h] for
//      h = 128, 64, .., 1), giving ceil(L / 256) partial sums; repeated on the partials until one
//      value is left (the GPU runs the same tree, one workgroup per group).
//    - offset = f32(total / nb), correctly rounded.
//    - v = f32(a - offset) (|v| < 2^-126 counts as 0); per group of 256: scale = max |v|,
//      r = f32(1 / scale) with the same guard; normed = f32(v * r) (|normed| < 2^-126 counts as 0);
//      code = bitsandbytes' dQuantize binary search over the signed dynamic map (nearest entry).
//    - dequant: absmax[i] = f32(f32(dynmap[q[i]] * scale[i / 256]) + offset).
// Dequantized weight: w = f32(NF4[code] * absmax), stored as f16 inside the matmul kernels.

/** The NF4 codebook, index 0..15 (f32 values). */
export const NF4_CODEBOOK: Float32Array = Float32Array.from([
  -1.0,
  -0.6961928009986877,
  -0.5250730514526367,
  -0.39491748809814453,
  -0.28444138169288635,
  -0.18477343022823334,
  -0.09105003625154495,
  0.0,
  0.07958029955625534,
  0.16093020141124725,
  0.24611230194568634,
  0.33791524171829224,
  0.44070982933044434,
  0.5626170039176941,
  0.7229568362236023,
  1.0,
]);

/** f32 midpoints between consecutive codebook entries (the thresholds of dQuantizeNF4). */
export const NF4_MIDPOINTS: Float32Array = Float32Array.from(
  { length: 15 },
  (_, i) => (NF4_CODEBOOK[i] + NF4_CODEBOOK[i + 1]) / 2,
);

export const NF4_BLOCK = 64;
export const NF4_NESTED_BLOCK = 256;
/** Smallest normal f32; magnitudes below it count as zero. */
export const F32_MIN_NORMAL = 2 ** -126;

const f32 = Math.fround;

/** bitsandbytes' create_dynamic_map(signed=True): 256 sorted f32 values from -0.99296875 to 1. */
export function nf4DynamicMap(): Float32Array {
  const data: number[] = [];
  for (let i = 0; i < 7; i++) {
    const items = 2 ** i + 1;
    // torch.linspace(0.1, 1, items) in f32: start + step * k for the first half, end - step * (items - 1 - k)
    // for the second half.
    const start = f32(0.1);
    const end = 1;
    const step = f32(f32(end - start) / (items - 1));
    const bounds: number[] = [];
    for (let k = 0; k < items; k++) {
      bounds.push(k < items / 2 ? f32(start + f32(step * k)) : f32(end - f32(step * (items - 1 - k))));
    }
    const scale = f32(10 ** (i - 6));
    for (let k = 0; k + 1 < items; k++) {
      const mean = f32(f32(bounds[k] + bounds[k + 1]) / 2);
      data.push(f32(scale * mean), f32(-scale * mean));
    }
  }
  data.push(0, 1);
  data.sort((a, b) => a - b);
  return Float32Array.from(data);
}

/** f32 values of f16 bit patterns (exact). */
export function f16BitsToF32(bits: Uint16Array): Float32Array {
  return Float32Array.from(new Float16Array(bits.buffer, bits.byteOffset, bits.length));
}

/** f32 values of bf16 bit patterns (exact: the high half of an f32). */
export function bf16BitsToF32(bits: Uint16Array): Float32Array {
  const words = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) words[i] = bits[i] << 16;
  return new Float32Array(words.buffer);
}

function flush(x: number): number {
  return Math.abs(x) < F32_MIN_NORMAL ? 0 : x;
}

/** f32(1 / a) with the zero guard: 0 where a is 0 or the reciprocal is not a normal f32. */
export function nf4Reciprocal(a: number): number {
  if (a === 0) return 0;
  return flush(f32(1 / a));
}

/** The NF4 code of a normalized value: midpoints exceeded, ties to the lower index. */
export function nf4Code(normed: number): number {
  let q = 0;
  for (let i = 0; i < 15; i++) if (normed > NF4_MIDPOINTS[i]) q++;
  return q;
}

/** bitsandbytes' dQuantize (non-stochastic): binary search of a 256-entry map with f32 midpoints. */
export function dynamicCode(map: Float32Array, x: number): number {
  let pivot = 127;
  let upperPivot = 255;
  let lowerPivot = 0;
  let lower = -1;
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
  if (upperPivot === 255) upper = map[upperPivot];
  if (lowerPivot === 0) lower = map[lowerPivot];
  if (x > val) {
    const mid = f32(f32(upper + val) * 0.5);
    return x > mid ? upperPivot : pivot;
  }
  const mid = f32(f32(lower + val) * 0.5);
  return x < mid ? lowerPivot : pivot;
}

/** The fixed-order f32 sum of the GPU: pairwise trees over groups of 256, level by level. */
export function nf4TreeSum(values: ArrayLike<number>): number {
  let level = Float32Array.from(values as ArrayLike<number>);
  do {
    const groups = Math.ceil(level.length / 256);
    const next = new Float32Array(groups);
    const s = new Float32Array(256);
    for (let g = 0; g < groups; g++) {
      s.fill(0);
      for (let t = 0; t < 256 && g * 256 + t < level.length; t++) s[t] = level[g * 256 + t];
      for (let h = 128; h > 0; h >>= 1) for (let t = 0; t < h; t++) s[t] = s[t] + s[t + h];
      next[g] = s[0];
    }
    level = next;
  } while (level.length > 1);
  return level[0] ?? 0;
}

/** An NF4 weight in the GPU layout, on the CPU (see nf4.ts for the buffers). */
export interface Nf4Host {
  out: number;
  in: number;
  /** Packed codes, 8 per word: word w holds bytes 4w..4w+3 of the bitsandbytes byte stream. */
  codes: Uint32Array;
  /** Absmax codes, 4 per word (byte i = block i). */
  absmaxCodes: Uint32Array;
  /** [offset, scale of nested block 0, 1, ...]: 1 + ceil(nblocks / 256) values. */
  nested: Float32Array;
  /** The signed dynamic map used for the absmax codes (256 values). */
  dynmap: Float32Array;
}

export function nf4Counts(out: number, inDim: number): { n: number; blocks: number; nested: number } {
  const n = out * inDim;
  const blocks = Math.ceil(n / NF4_BLOCK);
  return { n, blocks, nested: Math.ceil(blocks / NF4_NESTED_BLOCK) };
}

/** Per-block absmax and NF4 codes (one code per element) of f32 values, steps 1-4 above. */
export function nf4QuantizeBlocks(values: Float32Array): { codes: Uint8Array; absmax: Float32Array } {
  const n = values.length;
  const blocks = Math.ceil(n / NF4_BLOCK);
  const codes = new Uint8Array(n);
  const absmax = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const end = Math.min(n, (b + 1) * NF4_BLOCK);
    let a = 0;
    for (let i = b * NF4_BLOCK; i < end; i++) a = Math.max(a, Math.abs(flush(values[i])));
    absmax[b] = a;
    const r = nf4Reciprocal(a);
    for (let i = b * NF4_BLOCK; i < end; i++) codes[i] = nf4Code(f32(flush(values[i]) * r));
  }
  return { codes, absmax };
}

/** Double quantization of block absmax values (step 6). */
export function nf4QuantizeAbsmax(
  absmax: Float32Array,
  dynmap: Float32Array,
): { codes: Uint8Array; scales: Float32Array; offset: number } {
  const nb = absmax.length;
  const offset = flush(f32(nf4TreeSum(absmax) / nb));
  const groups = Math.ceil(nb / NF4_NESTED_BLOCK);
  const codes = new Uint8Array(nb);
  const scales = new Float32Array(groups);
  for (let g = 0; g < groups; g++) {
    const end = Math.min(nb, (g + 1) * NF4_NESTED_BLOCK);
    let scale = 0;
    for (let i = g * NF4_NESTED_BLOCK; i < end; i++) {
      scale = Math.max(scale, Math.abs(flush(f32(absmax[i] - offset))));
    }
    scales[g] = scale;
    const r = nf4Reciprocal(scale);
    for (let i = g * NF4_NESTED_BLOCK; i < end; i++) {
      const v = flush(f32(absmax[i] - offset));
      codes[i] = dynamicCode(dynmap, flush(f32(v * r)));
    }
  }
  return { codes, scales, offset };
}

/** The whole quantizer: f32 values of a weight [out, in] to the GPU layout. */
export function nf4QuantizeRef(values: Float32Array, out: number, inDim: number): Nf4Host {
  const { n, blocks } = nf4Counts(out, inDim);
  if (values.length !== n) {
    throw new RangeError(`nf4QuantizeRef: ${values.length} values for [${out}, ${inDim}]`);
  }
  const { codes, absmax } = nf4QuantizeBlocks(values);
  const dynmap = nf4DynamicMap();
  const dq = nf4QuantizeAbsmax(absmax, dynmap);
  const packed = new Uint8Array(Math.ceil(n / 8) * 4);
  packed.fill(0x77);
  for (let i = 0; i < n; i += 2) packed[i >> 1] = (codes[i] << 4) | (i + 1 < n ? codes[i + 1] : 7);
  const absmaxBytes = new Uint8Array(Math.ceil(blocks / 4) * 4);
  absmaxBytes.set(dq.codes);
  const nested = new Float32Array(1 + dq.scales.length);
  nested[0] = dq.offset;
  nested.set(dq.scales, 1);
  return {
    out,
    in: inDim,
    codes: new Uint32Array(packed.buffer),
    absmaxCodes: new Uint32Array(absmaxBytes.buffer),
    nested,
    dynmap,
  };
}

/** Byte i of words packed little-endian. */
export function wordByte(words: Uint32Array, i: number): number {
  return (words[i >> 2] >>> ((i & 3) * 8)) & 0xff;
}

/** The NF4 code of element i. */
export function nf4CodeAt(w: Nf4Host, i: number): number {
  const byte = wordByte(w.codes, i >> 1);
  return (i & 1) === 0 ? byte >> 4 : byte & 0xf;
}

/** Dequantized absmax of each block. */
export function nf4AbsmaxRef(w: Nf4Host, { fused = false }: { fused?: boolean } = {}): Float32Array {
  const { blocks } = nf4Counts(w.out, w.in);
  const out = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const product = w.dynmap[wordByte(w.absmaxCodes, b)] * w.nested[1 + (b >> 8)]; // exact in float64
    out[b] = fused ? f32(product + w.nested[0]) : f32(f32(product) + w.nested[0]);
  }
  return out;
}

/** Dequantized weight [out, in] as f32 values; with `f16` rounded to f16 as the kernels stage it.
 * With `fused`, each block's absmax is computed with one rounding (a fused multiply-add), as a GPU
 * compiler may emit it (and as bitsandbytes' CUDA kernels compute it): the f16 weights may then
 * differ from the two-rounding result by one unit in the last place. */
export function nf4DequantRef(
  w: Nf4Host,
  { f16 = true, fused = false }: { f16?: boolean; fused?: boolean } = {},
): Float64Array {
  const { n } = nf4Counts(w.out, w.in);
  const absmax = nf4AbsmaxRef(w, { fused });
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = f32(NF4_CODEBOOK[nf4CodeAt(w, i)] * absmax[i >> 6]);
  return f16 ? Float64Array.from(Float16Array.from(out)) : out;
}

/** Y[T,out] = X[T,in] · W[out,in]^T (fwd) or dX[T,in] = dY[T,out] · W[out,in] (dx) in float64. */
export function nf4MatmulRef(
  x: ArrayLike<number>,
  w: Float64Array,
  T: number,
  out: number,
  inDim: number,
  mode: "fwd" | "dx",
  { alpha = 1, beta = 0, c }: { alpha?: number; beta?: number; c?: ArrayLike<number> } = {},
): Float64Array {
  const N = mode === "fwd" ? out : inDim;
  const K = mode === "fwd" ? inDim : out;
  const y = new Float64Array(T * N);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[t * K + k] * (mode === "fwd" ? w[j * inDim + k] : w[k * inDim + j]);
      y[t * N + j] = alpha * s + (beta !== 0 && c ? beta * c[t * N + j] : 0);
    }
  }
  return y;
}

/** The tensors that bitsandbytes saves for one 4-bit weight (double-quantized NF4), made from the
 * GPU layout: the form `nf4FromBnb` in nf4.ts loads. `dtype` is the original weight dtype name. */
export function nf4ToBnbTensors(w: Nf4Host, dtype = "bfloat16"): {
  weight: Uint8Array;
  absmax: Uint8Array;
  quantMap: Float32Array;
  nestedAbsmax: Float32Array;
  nestedQuantMap: Float32Array;
  quantState: Uint8Array;
} {
  const { n, blocks } = nf4Counts(w.out, w.in);
  const state = {
    quant_type: "nf4",
    blocksize: NF4_BLOCK,
    dtype,
    shape: [w.out, w.in],
    nested_blocksize: NF4_NESTED_BLOCK,
    nested_dtype: "float32",
    nested_offset: w.nested[0],
  };
  return {
    weight: new Uint8Array(w.codes.buffer, w.codes.byteOffset, Math.ceil(n / 2)).slice(),
    absmax: new Uint8Array(w.absmaxCodes.buffer, w.absmaxCodes.byteOffset, blocks).slice(),
    quantMap: NF4_CODEBOOK.slice(),
    nestedAbsmax: w.nested.slice(1),
    nestedQuantMap: w.dynmap.slice(),
    quantState: new TextEncoder().encode(JSON.stringify(state)),
  };
}
