// Float64 reference of the elementwise family: the specification the kernels are tested against.
// 16-bit values travel as bit patterns (Uint16Array), f32 as Float32Array.

import type { ElementType } from "./elementwise.ts";

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** bf16 bits of a number: rounded to f32 first, then to bf16 with round to nearest even. */
export function toBf16Bits(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    f32Scratch[0] = values[i];
    const x = u32Scratch[0];
    if ((x & 0x7fffffff) > 0x7f800000) out[i] = (x >>> 16) | 0x40;
    else out[i] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 0) >>> 16;
  }
  return out;
}

/** Numbers held by bf16 bit patterns. */
export function fromBf16Bits(bits: ArrayLike<number>): Float64Array {
  const out = new Float64Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    u32Scratch[0] = (bits[i] << 16) >>> 0;
    out[i] = f32Scratch[0];
  }
  return out;
}

/** Stored representation of numbers in an element type: Uint16Array bits for f16 and bf16 (round
 * to nearest even; f32 values first rounded to f32 for bf16), Float32Array for f32. */
export function encodeElements(values: ArrayLike<number>, type: ElementType): Uint16Array | Float32Array {
  if (type === "f32") return Float32Array.from(values);
  if (type === "bf16") return toBf16Bits(values);
  return new Uint16Array(Float16Array.from(values).buffer);
}

/** Numbers held by a stored representation. */
export function decodeElements(data: Uint16Array | Float32Array, type: ElementType): Float64Array {
  if (type === "f32") return Float64Array.from(data);
  if (type === "bf16") return fromBf16Bits(data);
  return Float64Array.from(new Float16Array(data.buffer, data.byteOffset, data.length));
}

/** Cast reference: the exact source values rounded once into the target type. */
export function castRef(
  src: Uint16Array | Float32Array,
  from: ElementType,
  to: ElementType,
): Uint16Array | Float32Array {
  return encodeElements(decodeElements(src, from), to);
}

/** Residual add reference: the exact sum rounded once to f16 (numbers, not bits). */
export function residualAddRef(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] + b[i];
  return Float64Array.from(Float16Array.from(out));
}

/** Scale reference: factor rounded to f32, the product rounded to f32, then to the storage type. */
export function scaleRef(x: ArrayLike<number>, factor: number, dtype: "f16" | "f32"): Float64Array {
  const f = Math.fround(factor);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = Math.fround(x[i] * f);
  return dtype === "f16" ? Float64Array.from(Float16Array.from(out)) : out;
}
