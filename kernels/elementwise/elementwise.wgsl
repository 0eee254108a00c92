// Elementwise ops on flat arrays of n elements: residual add and scale (f16 or f32), and casts
// between f32, f16 and bf16 in every direction.
//
// Two kinds of entry point:
// - Vector entries (add, add_inplace, scale, scale_inplace, convert) see every buffer as
//   vec4<u32> and cover the first p.n elements, a multiple of 8: one unit of 8 elements is one
//   16-byte vector of 16-bit data or two of f32. Each invocation handles UNITS units, loading all
//   of them before any math, so several 16-byte loads per buffer are in flight; workgroup w
//   covers units [w * WG * UNITS, (w + 1) * WG * UNITS), lane l its units l, l + WG, ...
// - Tail entries (*_tail) see every buffer as u32 words and handle the last elements
//   [p.start, p.start + p.n), fewer than 8, as pairs of 16-bit values or single f32 words. Their
//   bindings begin at a 256-byte aligned offset inside the whole range; element i of buffer k is
//   element i - p.base[k] of its binding. Where the last 16-bit pair is half outside, the upper
//   half of the output word is kept as it was.
// Conversions work on bit patterns, without branches: f32 -> f16 and f32 -> bf16 round to
// nearest even, values beyond the f16 range become infinities, subnormals are kept, NaN stays NaN
// (f16 and bf16 NaN get the quiet bit). Results are the same on every adapter; no shader-f16.
// Sums and products are f32 operations, each result rounded once to the storage type.

struct Params {
  n: u32, // vector entries: elements (a multiple of 8); tail entries: elements in the tail
  src: u32, // element type of the input: 0 f32, 1 f16, 2 bf16
  dst: u32, // element type of the output
  factor: f32, // scale factor
  start: u32, // tail entries: the first element of the tail
  base0: u32, // tail entries: first element of each binding (bindings 1, 2, 3)
  base1: u32,
  base2: u32,
}

const F32 = 0u;
const F16 = 1u;
const BF16 = 2u;
const WG = 256u;
const UNITS = 2u;

// Element types of the vector entries (fixed per pipeline, so dead branches vanish).
override SRC: u32 = 1u;
override DST: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;

// Vector entries. add: a, b, y f16; add_inplace: y (vacc) += b (vb); scale and convert: y
// (vout) from x (va); scale_inplace: y (vacc) *= factor.
@group(0) @binding(1) var<storage, read> va: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> vb: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> vy: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> vacc: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> vout: array<vec4<u32>>;

// Tail entries, the same bindings as u32 words.
@group(0) @binding(1) var<storage, read> ta: array<u32>;
@group(0) @binding(2) var<storage, read> tb: array<u32>;
@group(0) @binding(3) var<storage, read_write> ty: array<u32>;
@group(0) @binding(1) var<storage, read_write> tacc: array<u32>;
@group(0) @binding(2) var<storage, read_write> tout: array<u32>;

/** f16 bits (low 16 bits of each lane) -> f32 bits, exact. */
fn f16ToF32(h: vec4<u32>) -> vec4<u32> {
  let s = (h & vec4<u32>(0x8000u)) << vec4<u32>(16u);
  let em = h & vec4<u32>(0x7fffu);
  let normal = (em << vec4<u32>(13u)) + vec4<u32>(0x38000000u);
  let special = (em << vec4<u32>(13u)) + vec4<u32>(0x70000000u);
  // Subnormal (or zero): em * 2^-24 is a normal f32 (or zero).
  let sub = bitcast<vec4<u32>>(vec4<f32>(em) * 5.9604644775390625e-8);
  var r = select(normal, special, em >= vec4<u32>(0x7c00u));
  r = select(r, sub, em < vec4<u32>(0x0400u));
  return s | r;
}

/** f32 bits -> f16 bits (low 16 bits), round to nearest even; overflow gives infinity. */
fn f32ToF16(x: vec4<u32>) -> vec4<u32> {
  let s = (x >> vec4<u32>(16u)) & vec4<u32>(0x8000u);
  let a = x & vec4<u32>(0x7fffffffu);
  // Normal f16 range: rebias the exponent, add half an f16 step minus one plus the kept bit's
  // lowest bit (ties to even); a carry out of the mantissa moves to the exponent, up to infinity.
  let odd = (a >> vec4<u32>(13u)) & vec4<u32>(1u);
  let normal = (a - vec4<u32>(0x38000000u) + vec4<u32>(0xfffu) + odd) >> vec4<u32>(13u);
  // Below 2^-14: adding 0.5 leaves the f16 subnormal steps (2^-24) as the f32's last mantissa
  // bits, rounded to nearest even by the f32 addition.
  let sub = bitcast<vec4<u32>>(bitcast<vec4<f32>>(a) + vec4<f32>(0.5)) - vec4<u32>(0x3f000000u);
  let nan = vec4<u32>(0x7e00u) | ((a >> vec4<u32>(13u)) & vec4<u32>(0x3ffu));
  let big = select(vec4<u32>(0x7c00u), nan, a > vec4<u32>(0x7f800000u));
  var h = select(normal, sub, a < vec4<u32>(0x38800000u));
  h = select(h, big, a >= vec4<u32>(0x47800000u));
  return s | h;
}

/** f32 bits -> bf16 bits (low 16 bits), round to nearest even; NaN stays a quiet NaN. */
fn f32ToBf16(x: vec4<u32>) -> vec4<u32> {
  let rounded = (x + vec4<u32>(0x7fffu) + ((x >> vec4<u32>(16u)) & vec4<u32>(1u))) >> vec4<u32>(16u);
  let nan = (x >> vec4<u32>(16u)) | vec4<u32>(0x40u);
  return select(rounded, nan, (x & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u));
}

/** 16-bit values of type `kind` (low 16 bits) -> f32 bits. */
fn halfToF32(kind: u32, h: vec4<u32>) -> vec4<u32> {
  if (kind == BF16) {
    return (h & vec4<u32>(0xffffu)) << vec4<u32>(16u);
  }
  return f16ToF32(h & vec4<u32>(0xffffu));
}

/** f32 bits -> 16-bit values of type `kind` (low 16 bits). */
fn f32ToHalf(kind: u32, x: vec4<u32>) -> vec4<u32> {
  if (kind == BF16) {
    return f32ToBf16(x);
  }
  return f32ToF16(x);
}

/** Eight elements as f32 bits: lo holds elements 0, 2, 4, 6 and hi 1, 3, 5, 7. */
struct Eight {
  lo: vec4<u32>,
  hi: vec4<u32>,
}

/** One 16-byte vector of 16-bit values -> eight f32 bit patterns. */
fn widen(kind: u32, w: vec4<u32>) -> Eight {
  return Eight(halfToF32(kind, w), halfToF32(kind, w >> vec4<u32>(16u)));
}

/** Eight f32 bit patterns -> one 16-byte vector of 16-bit values. */
fn narrow(kind: u32, e: Eight) -> vec4<u32> {
  return f32ToHalf(kind, e.lo) | (f32ToHalf(kind, e.hi) << vec4<u32>(16u));
}

/** Two vectors of four f32 (elements 0..3 and 4..7) -> Eight. */
fn split(w0: vec4<u32>, w1: vec4<u32>) -> Eight {
  return Eight(vec4<u32>(w0.x, w0.z, w1.x, w1.z), vec4<u32>(w0.y, w0.w, w1.y, w1.w));
}

/** Eight -> its first and second vector of four f32. */
fn joinFirst(e: Eight) -> vec4<u32> {
  return vec4<u32>(e.lo.x, e.hi.x, e.lo.y, e.hi.y);
}

fn joinSecond(e: Eight) -> vec4<u32> {
  return vec4<u32>(e.lo.z, e.hi.z, e.lo.w, e.hi.w);
}

fn addEight(a: Eight, b: Eight) -> Eight {
  return Eight(
    bitcast<vec4<u32>>(bitcast<vec4<f32>>(a.lo) + bitcast<vec4<f32>>(b.lo)),
    bitcast<vec4<u32>>(bitcast<vec4<f32>>(a.hi) + bitcast<vec4<f32>>(b.hi)),
  );
}

fn scaleEight(a: Eight, f: f32) -> Eight {
  return Eight(bitcast<vec4<u32>>(bitcast<vec4<f32>>(a.lo) * f), bitcast<vec4<u32>>(bitcast<vec4<f32>>(a.hi) * f));
}

/** Scaled f32 words. */
fn scale4(w: vec4<u32>, f: f32) -> vec4<u32> {
  return bitcast<vec4<u32>>(bitcast<vec4<f32>>(w) * f);
}

/** First unit of this invocation (a 2D grid of workgroups covers large n). */
fn firstUnit(wg: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
  return (wg.y * nwg.x + wg.x) * (WG * UNITS) + lid.x;
}

@compute @workgroup_size(WG)
fn add(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let u0 = firstUnit(wg, nwg, lid);
  let units = p.n / 8u;
  var a: array<vec4<u32>, UNITS>;
  var b: array<vec4<u32>, UNITS>;
  for (var k = 0u; k < UNITS; k++) {
    let u = u0 + k * WG;
    if (u < units) {
      a[k] = va[u];
      b[k] = vb[u];
    }
  }
  for (var k = 0u; k < UNITS; k++) {
    let u = u0 + k * WG;
    if (u < units) {
      vy[u] = narrow(F16, addEight(widen(F16, a[k]), widen(F16, b[k])));
    }
  }
}

@compute @workgroup_size(WG)
fn add_inplace(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let u0 = firstUnit(wg, nwg, lid);
  let units = p.n / 8u;
  var a: array<vec4<u32>, UNITS>;
  var b: array<vec4<u32>, UNITS>;
  for (var k = 0u; k < UNITS; k++) {
    let u = u0 + k * WG;
    if (u < units) {
      a[k] = vacc[u];
      b[k] = vb[u];
    }
  }
  for (var k = 0u; k < UNITS; k++) {
    let u = u0 + k * WG;
    if (u < units) {
      vacc[u] = narrow(F16, addEight(widen(F16, a[k]), widen(F16, b[k])));
    }
  }
}

@compute @workgroup_size(WG)
fn scale(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let u0 = firstUnit(wg, nwg, lid);
  let units = p.n / 8u;
  if (DST == F32) {
    var x: array<vec4<u32>, 2 * UNITS>;
    for (var k = 0u; k < UNITS; k++) {
      let u = u0 + k * WG;
      if (u < units) {
        x[2u * k] = va[2u * u];
        x[2u * k + 1u] = va[2u * u + 1u];
      }
    }
    for (var k = 0u; k < UNITS; k++) {
      let u = u0 + k * WG;
      if (u < units) {
        vout[2u * u] = scale4(x[2u * k], p.factor);
        vout[2u * u + 1u] = scale4(x[2u * k + 1u], p.factor);
      }
    }
    return;
  }
  var x: array<vec4<u32>, UNITS>;
  for (var k = 0u; k < UNITS; k++) {
    let u = u0 + k * WG;
    if (u < units) {
      x[k] = va[u];
    }
  }
  for (var k = 0u; k < UNITS; k++) {
    let u = u0 + k * WG;
    if (u < units) {
      vout[u] = narrow(F16, scaleEight(widen(F16, x[k]), p.factor));
    }
  }
}

@compute @workgroup_size(WG)
fn scale_inplace(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let u0 = firstUnit(wg, nwg, lid);
  let units = p.n / 8u;
  if (DST == F32) {
    var x: array<vec4<u32>, 2 * UNITS>;
    for (var k = 0u; k < UNITS; k++) {
      let u = u0 + k * WG;
      if (u < units) {
        x[2u * k] = vacc[2u * u];
        x[2u * k + 1u] = vacc[2u * u + 1u];
      }
    }
    for (var k = 0u; k < UNITS; k++) {
      let u = u0 + k * WG;
      if (u < units) {
        vacc[2u * u] = scale4(x[2u * k], p.factor);
        vacc[2u * u + 1u] = scale4(x[2u * k + 1u], p.factor);
      }
    }
    return;
  }
  var x: array<vec4<u32>, UNITS>;
  for (var k = 0u; k < UNITS; k++) {
    let u = u0 + k * WG;
    if (u < units) {
      x[k] = vacc[u];
    }
  }
  for (var k = 0u; k < UNITS; k++) {
    let u = u0 + k * WG;
    if (u < units) {
      vacc[u] = narrow(F16, scaleEight(widen(F16, x[k]), p.factor));
    }
  }
}

@compute @workgroup_size(WG)
fn convert(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let u0 = firstUnit(wg, nwg, lid);
  let units = p.n / 8u;
  // Loads: one vector per unit of 16-bit input, two of f32.
  var x0: array<vec4<u32>, UNITS>;
  var x1: array<vec4<u32>, UNITS>;
  for (var k = 0u; k < UNITS; k++) {
    let u = u0 + k * WG;
    if (u < units) {
      if (SRC == F32) {
        x0[k] = va[2u * u];
        x1[k] = va[2u * u + 1u];
      } else {
        x0[k] = va[u];
      }
    }
  }
  for (var k = 0u; k < UNITS; k++) {
    let u = u0 + k * WG;
    if (u < units) {
      if (SRC == F32 && DST == F32) {
        vout[2u * u] = x0[k];
        vout[2u * u + 1u] = x1[k];
      } else {
        var e: Eight;
        if (SRC == F32) {
          e = split(x0[k], x1[k]);
        } else {
          e = widen(SRC, x0[k]);
        }
        if (DST == F32) {
          vout[2u * u] = joinFirst(e);
          vout[2u * u + 1u] = joinSecond(e);
        } else {
          vout[u] = narrow(DST, e);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tail entries: one invocation per pair of elements (2i, 2i+1) of the tail.

fn f16f(h: u32) -> f32 {
  return bitcast<f32>(f16ToF32(vec4<u32>(h & 0xffffu)).x);
}

fn tof16(v: f32) -> u32 {
  return f32ToF16(vec4<u32>(bitcast<u32>(v))).x;
}

fn toF32Bits(kind: u32, h: u32) -> u32 {
  return halfToF32(kind, vec4<u32>(h)).x;
}

fn fromF32Bits(kind: u32, x: u32) -> u32 {
  return f32ToHalf(kind, vec4<u32>(x)).x;
}

/** Global index of the first element of this invocation's pair, or p.start + p.n if none. */
fn tailElement(lid: vec3<u32>) -> u32 {
  return p.start + 2u * lid.x;
}

@compute @workgroup_size(4)
fn add_tail(@builtin(local_invocation_id) lid: vec3<u32>) {
  let e = tailElement(lid);
  if (e >= p.start + p.n) {
    return;
  }
  let two = e + 1u < p.start + p.n;
  let a = ta[(e - p.base0) / 2u];
  let b = tb[(e - p.base1) / 2u];
  let iy = (e - p.base2) / 2u;
  let lo = tof16(f16f(a) + f16f(b));
  var hi = ty[iy] >> 16u;
  if (two) {
    hi = tof16(f16f(a >> 16u) + f16f(b >> 16u));
  }
  ty[iy] = lo | (hi << 16u);
}

@compute @workgroup_size(4)
fn add_inplace_tail(@builtin(local_invocation_id) lid: vec3<u32>) {
  let e = tailElement(lid);
  if (e >= p.start + p.n) {
    return;
  }
  let two = e + 1u < p.start + p.n;
  let iy = (e - p.base0) / 2u;
  let a = tacc[iy];
  let b = tb[(e - p.base1) / 2u];
  let lo = tof16(f16f(a) + f16f(b));
  var hi = a >> 16u;
  if (two) {
    hi = tof16(f16f(a >> 16u) + f16f(b >> 16u));
  }
  tacc[iy] = lo | (hi << 16u);
}

@compute @workgroup_size(4)
fn scale_tail(@builtin(local_invocation_id) lid: vec3<u32>) {
  let e = tailElement(lid);
  if (e >= p.start + p.n) {
    return;
  }
  let two = e + 1u < p.start + p.n;
  if (p.dst == F32) {
    tout[e - p.base1] = bitcast<u32>(bitcast<f32>(ta[e - p.base0]) * p.factor);
    if (two) {
      tout[e + 1u - p.base1] = bitcast<u32>(bitcast<f32>(ta[e + 1u - p.base0]) * p.factor);
    }
    return;
  }
  let x = ta[(e - p.base0) / 2u];
  let iy = (e - p.base1) / 2u;
  let lo = tof16(f16f(x) * p.factor);
  var hi = tout[iy] >> 16u;
  if (two) {
    hi = tof16(f16f(x >> 16u) * p.factor);
  }
  tout[iy] = lo | (hi << 16u);
}

@compute @workgroup_size(4)
fn scale_inplace_tail(@builtin(local_invocation_id) lid: vec3<u32>) {
  let e = tailElement(lid);
  if (e >= p.start + p.n) {
    return;
  }
  let two = e + 1u < p.start + p.n;
  if (p.dst == F32) {
    let i = e - p.base0;
    tacc[i] = bitcast<u32>(bitcast<f32>(tacc[i]) * p.factor);
    if (two) {
      tacc[i + 1u] = bitcast<u32>(bitcast<f32>(tacc[i + 1u]) * p.factor);
    }
    return;
  }
  let iy = (e - p.base0) / 2u;
  let x = tacc[iy];
  let lo = tof16(f16f(x) * p.factor);
  var hi = x >> 16u;
  if (two) {
    hi = tof16(f16f(x >> 16u) * p.factor);
  }
  tacc[iy] = lo | (hi << 16u);
}

@compute @workgroup_size(4)
fn convert_tail(@builtin(local_invocation_id) lid: vec3<u32>) {
  let e = tailElement(lid);
  if (e >= p.start + p.n) {
    return;
  }
  let two = e + 1u < p.start + p.n;
  // Both elements as f32 bits.
  var v0: u32;
  var v1 = 0u;
  if (p.src == F32) {
    v0 = ta[e - p.base0];
    if (two) {
      v1 = ta[e + 1u - p.base0];
    }
  } else {
    let w = ta[(e - p.base0) / 2u];
    v0 = toF32Bits(p.src, w & 0xffffu);
    v1 = toF32Bits(p.src, w >> 16u);
  }
  if (p.dst == F32) {
    tout[e - p.base1] = v0;
    if (two) {
      tout[e + 1u - p.base1] = v1;
    }
    return;
  }
  let iy = (e - p.base1) / 2u;
  let lo = fromF32Bits(p.dst, v0);
  var hi = tout[iy] >> 16u;
  if (two) {
    hi = fromF32Bits(p.dst, v1);
  }
  tout[iy] = lo | (hi << 16u);
}
