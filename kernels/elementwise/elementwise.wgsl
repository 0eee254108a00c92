// Elementwise ops on flat arrays of n elements: residual add and scale (f16 or f32), and casts
// between f32, f16 and bf16 in every direction.
//
// Every buffer is bound as u32 words, so 16-bit data (f16, bf16) travels as pairs packed in one
// word, low half first. One invocation handles one pair of elements (2i, 2i+1): one word of
// 16-bit data or two words of f32. Where n is odd, the upper half of the last 16-bit output word
// is kept as it was. Conversions work on bit patterns: f32 -> f16 and f32 -> bf16 round to nearest
// even, values beyond the f16 range become infinities, subnormals are kept, NaN stays NaN. This
// makes the results the same on every adapter and needs no shader-f16.

struct Params {
  n: u32, // elements
  src: u32, // element type of the input: 0 f32, 1 f16, 2 bf16
  dst: u32, // element type of the output
  factor: f32, // scale factor
}

const F32 = 0u;
const F16 = 1u;
const BF16 = 2u;
const WG = 256u;

@group(0) @binding(0) var<uniform> p: Params;

// add: a, b, y are f16 [n]
@group(0) @binding(1) var<storage, read> add_a: array<u32>;
@group(0) @binding(2) var<storage, read> add_b: array<u32>;
@group(0) @binding(3) var<storage, read_write> add_y: array<u32>;
// add_inplace: y += b
@group(0) @binding(1) var<storage, read_write> acc_y: array<u32>;
@group(0) @binding(2) var<storage, read> acc_b: array<u32>;
// scale: y = factor * x; convert: y = x converted from p.src to p.dst
@group(0) @binding(1) var<storage, read> un_x: array<u32>;
@group(0) @binding(2) var<storage, read_write> un_y: array<u32>;
// scale_inplace: y *= factor
@group(0) @binding(1) var<storage, read_write> in_y: array<u32>;

/** f16 bits (low 16 bits of h) -> f32 bits, exact. */
fn f16ToF32Bits(h: u32) -> u32 {
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) {
    return s | 0x7f800000u | (m << 13u);
  }
  if (e == 0u) {
    // Subnormal (or zero): m * 2^-24 is a normal f32.
    return s | bitcast<u32>(f32(m) * 5.9604644775390625e-8);
  }
  return s | ((e + 112u) << 23u) | (m << 13u);
}

/** f32 bits -> f16 bits, round to nearest even; overflow gives infinity. */
fn f32ToF16Bits(x: u32) -> u32 {
  let s = (x >> 16u) & 0x8000u;
  let e = (x >> 23u) & 0xffu;
  let m = x & 0x7fffffu;
  if (e == 0xffu) {
    if (m != 0u) {
      return s | 0x7e00u | (m >> 13u);
    }
    return s | 0x7c00u;
  }
  let E = i32(e) - 127;
  if (E > 15) {
    return s | 0x7c00u;
  }
  if (E >= -14) {
    // A carry out of the mantissa moves to the exponent; 65520 and up become infinity.
    var h = (u32(E + 15) << 10u) | (m >> 13u);
    let r = m & 0x1fffu;
    if (r > 0x1000u || (r == 0x1000u && (h & 1u) == 1u)) {
      h = h + 1u;
    }
    return s | h;
  }
  if (E < -25) {
    return s;
  }
  // Subnormal f16: value = mant * 2^(E-23), in units of 2^-24 that is mant >> (-E-1).
  let mant = m | 0x800000u;
  let shift = u32(-E - 1);
  var h = mant >> shift;
  let r = mant & ((1u << shift) - 1u);
  let half = 1u << (shift - 1u);
  if (r > half || (r == half && (h & 1u) == 1u)) {
    h = h + 1u;
  }
  return s | h;
}

/** f32 bits -> bf16 bits, round to nearest even; NaN stays a quiet NaN. */
fn f32ToBf16Bits(x: u32) -> u32 {
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return (x >> 16u) | 0x40u;
  }
  return (x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u;
}

fn halfToF32Bits(kind: u32, h: u32) -> u32 {
  if (kind == BF16) {
    return (h & 0xffffu) << 16u;
  }
  return f16ToF32Bits(h & 0xffffu);
}

fn f32BitsToHalf(kind: u32, x: u32) -> u32 {
  if (kind == BF16) {
    return f32ToBf16Bits(x);
  }
  return f32ToF16Bits(x);
}

fn f16f(h: u32) -> f32 {
  return bitcast<f32>(f16ToF32Bits(h & 0xffffu));
}

fn tof16(v: f32) -> u32 {
  return f32ToF16Bits(bitcast<u32>(v));
}

/** Index of the element pair of this invocation (a 2D grid of workgroups covers large n). */
fn pairIndex(wg: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
  return (wg.y * nwg.x + wg.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn add(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = pairIndex(wg, nwg, lid);
  if (2u * i >= p.n) {
    return;
  }
  let a = add_a[i];
  let b = add_b[i];
  let lo = tof16(f16f(a) + f16f(b));
  var hi = add_y[i] >> 16u;
  if (2u * i + 1u < p.n) {
    hi = tof16(f16f(a >> 16u) + f16f(b >> 16u));
  }
  add_y[i] = lo | (hi << 16u);
}

@compute @workgroup_size(WG)
fn add_inplace(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = pairIndex(wg, nwg, lid);
  if (2u * i >= p.n) {
    return;
  }
  let a = acc_y[i];
  let b = acc_b[i];
  let lo = tof16(f16f(a) + f16f(b));
  var hi = a >> 16u;
  if (2u * i + 1u < p.n) {
    hi = tof16(f16f(a >> 16u) + f16f(b >> 16u));
  }
  acc_y[i] = lo | (hi << 16u);
}

@compute @workgroup_size(WG)
fn scale(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = pairIndex(wg, nwg, lid);
  if (2u * i >= p.n) {
    return;
  }
  let two = 2u * i + 1u < p.n;
  if (p.dst == F32) {
    un_y[2u * i] = bitcast<u32>(bitcast<f32>(un_x[2u * i]) * p.factor);
    if (two) {
      un_y[2u * i + 1u] = bitcast<u32>(bitcast<f32>(un_x[2u * i + 1u]) * p.factor);
    }
    return;
  }
  let x = un_x[i];
  let lo = tof16(f16f(x) * p.factor);
  var hi = un_y[i] >> 16u;
  if (two) {
    hi = tof16(f16f(x >> 16u) * p.factor);
  }
  un_y[i] = lo | (hi << 16u);
}

@compute @workgroup_size(WG)
fn scale_inplace(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = pairIndex(wg, nwg, lid);
  if (2u * i >= p.n) {
    return;
  }
  let two = 2u * i + 1u < p.n;
  if (p.dst == F32) {
    in_y[2u * i] = bitcast<u32>(bitcast<f32>(in_y[2u * i]) * p.factor);
    if (two) {
      in_y[2u * i + 1u] = bitcast<u32>(bitcast<f32>(in_y[2u * i + 1u]) * p.factor);
    }
    return;
  }
  let x = in_y[i];
  let lo = tof16(f16f(x) * p.factor);
  var hi = x >> 16u;
  if (two) {
    hi = tof16(f16f(x >> 16u) * p.factor);
  }
  in_y[i] = lo | (hi << 16u);
}

@compute @workgroup_size(WG)
fn convert(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = pairIndex(wg, nwg, lid);
  if (2u * i >= p.n) {
    return;
  }
  let two = 2u * i + 1u < p.n;
  // Both elements as f32 bits.
  var v0: u32;
  var v1 = 0u;
  if (p.src == F32) {
    v0 = un_x[2u * i];
    if (two) {
      v1 = un_x[2u * i + 1u];
    }
  } else {
    let w = un_x[i];
    v0 = halfToF32Bits(p.src, w);
    v1 = halfToF32Bits(p.src, w >> 16u);
  }
  if (p.dst == F32) {
    un_y[2u * i] = v0;
    if (two) {
      un_y[2u * i + 1u] = v1;
    }
    return;
  }
  let lo = f32BitsToHalf(p.dst, v0);
  var hi = un_y[i] >> 16u;
  if (two) {
    hi = f32BitsToHalf(p.dst, v1);
  }
  un_y[i] = lo | (hi << 16u);
}
