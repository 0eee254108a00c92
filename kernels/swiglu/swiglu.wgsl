// SwiGLU gate of the Llama MLP on flat arrays of n = T * I f16 elements, forward and backward.
//   forward:  h = silu(g) * u,  silu(g) = g * sigmoid(g)
//   backward: du = dh * silu(g);  dg = dh * u * s * (1 + g * (1 - s)),  s = sigmoid(g)
// f16 in and out, f32 inside, each result rounded once (to nearest even, overflow to infinity,
// NaN kept; done on the bits, so every adapter gives the same f16 and no shader-f16 is needed).
//
// Two kinds of entry point:
// - Vector entries (forward, backward) see every buffer as vec4<u32> and cover the first p.n
//   elements, a multiple of 8: one unit is one 16-byte vector of 8 halves. Each invocation handles
//   UNITS units and issues all of its loads before any math; workgroup w covers units
//   [w * WG * UNITS, (w + 1) * WG * UNITS), lane l its units l, l + WG, ... The workgroup grid may
//   be 2D (flat index wg.y * num_workgroups.x + wg.x).
// - Tail entries (forward_tail, backward_tail) see every buffer as u32 words (pairs of halves)
//   and handle p.n < 8 elements starting at element p.start of their bindings, which begin at an
//   aligned offset before the tail. Where the last pair is half outside, the upper half of the
//   output word is kept as it was.

struct Params {
  n: u32, // vector entries: elements (a multiple of 8); tail entries: elements in the tail
  start: u32, // tail entries: first element of the tail within the bindings (even)
}

const WG = 256u;
const UNITS = 2u;

@group(0) @binding(0) var<uniform> p: Params;

// forward: g, u, h
@group(0) @binding(1) var<storage, read> f_g: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> f_u: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> f_h: array<vec4<u32>>;

// backward: dh, g, u, dg, du
@group(0) @binding(1) var<storage, read> b_dh: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> b_g: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> b_u: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> b_dg: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> b_du: array<vec4<u32>>;

// The tail entries' views of the same bindings.
@group(0) @binding(1) var<storage, read> ft_g: array<u32>;
@group(0) @binding(2) var<storage, read> ft_u: array<u32>;
@group(0) @binding(3) var<storage, read_write> ft_h: array<u32>;
@group(0) @binding(1) var<storage, read> bt_dh: array<u32>;
@group(0) @binding(2) var<storage, read> bt_g: array<u32>;
@group(0) @binding(3) var<storage, read> bt_u: array<u32>;
@group(0) @binding(4) var<storage, read_write> bt_dg: array<u32>;
@group(0) @binding(5) var<storage, read_write> bt_du: array<u32>;

/** Eight elements as f32: even holds elements 0, 2, 4, 6 and odd 1, 3, 5, 7. */
struct Eight {
  even: vec4<f32>,
  odd: vec4<f32>,
}

/** One 16-byte vector of halves -> eight f32 (exact). */
fn widen(w: vec4<u32>) -> Eight {
  let a = unpack2x16float(w.x);
  let b = unpack2x16float(w.y);
  let c = unpack2x16float(w.z);
  let d = unpack2x16float(w.w);
  return Eight(vec4<f32>(a.x, b.x, c.x, d.x), vec4<f32>(a.y, b.y, c.y, d.y));
}

/** f32 -> f16 bits (low 16 bits of each lane), round to nearest even; overflow gives infinity. */
fn f32ToF16(v: vec4<f32>) -> vec4<u32> {
  let x = bitcast<vec4<u32>>(v);
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

/** Eight f32 -> one 16-byte vector of halves. */
fn narrow(e: Eight) -> vec4<u32> {
  return f32ToF16(e.even) | (f32ToF16(e.odd) << vec4<u32>(16u));
}

fn sigmoid(x: vec4<f32>) -> vec4<f32> {
  return 1.0 / (1.0 + exp(-x));
}

fn silu_mul(g: vec4<f32>, u: vec4<f32>) -> vec4<f32> {
  return g * sigmoid(g) * u;
}

/** (dg, du) of one lane group. */
fn grads(dh: vec4<f32>, g: vec4<f32>, u: vec4<f32>) -> array<vec4<f32>, 2> {
  let s = sigmoid(g);
  return array<vec4<f32>, 2>(dh * u * s * (1.0 + g * (1.0 - s)), dh * g * s);
}

fn firstUnit(wg: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
  return (wg.y * nwg.x + wg.x) * (WG * UNITS) + lid.x;
}

@compute @workgroup_size(WG)
fn forward(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let u0 = firstUnit(wg, nwg, lid);
  let units = p.n / 8u;
  var g: array<vec4<u32>, UNITS>;
  var u: array<vec4<u32>, UNITS>;
  for (var k = 0u; k < UNITS; k++) {
    let i = u0 + k * WG;
    if (i < units) {
      g[k] = f_g[i];
      u[k] = f_u[i];
    }
  }
  for (var k = 0u; k < UNITS; k++) {
    let i = u0 + k * WG;
    if (i < units) {
      let gf = widen(g[k]);
      let uf = widen(u[k]);
      f_h[i] = narrow(Eight(silu_mul(gf.even, uf.even), silu_mul(gf.odd, uf.odd)));
    }
  }
}

@compute @workgroup_size(WG)
fn backward(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let u0 = firstUnit(wg, nwg, lid);
  let units = p.n / 8u;
  var dh: array<vec4<u32>, UNITS>;
  var g: array<vec4<u32>, UNITS>;
  var u: array<vec4<u32>, UNITS>;
  for (var k = 0u; k < UNITS; k++) {
    let i = u0 + k * WG;
    if (i < units) {
      dh[k] = b_dh[i];
      g[k] = b_g[i];
      u[k] = b_u[i];
    }
  }
  for (var k = 0u; k < UNITS; k++) {
    let i = u0 + k * WG;
    if (i < units) {
      let dhf = widen(dh[k]);
      let gf = widen(g[k]);
      let uf = widen(u[k]);
      let even = grads(dhf.even, gf.even, uf.even);
      let odd = grads(dhf.odd, gf.odd, uf.odd);
      b_dg[i] = narrow(Eight(even[0], odd[0]));
      b_du[i] = narrow(Eight(even[1], odd[1]));
    }
  }
}

/** Two f32 -> one word of halves; with only the first in range, the upper half of `old`. */
fn pairWord(v: vec2<f32>, old: u32, both: bool) -> u32 {
  let h = f32ToF16(vec4<f32>(v, 0.0, 0.0));
  return h.x | (select(old >> 16u, h.y, both) << 16u);
}

@compute @workgroup_size(4)
fn forward_tail(@builtin(local_invocation_id) lid: vec3<u32>) {
  let e = 2u * lid.x;
  if (e >= p.n) {
    return;
  }
  let w = p.start / 2u + lid.x;
  let h = silu_mul(vec4<f32>(unpack2x16float(ft_g[w]), 0.0, 0.0), vec4<f32>(unpack2x16float(ft_u[w]), 0.0, 0.0));
  ft_h[w] = pairWord(h.xy, ft_h[w], e + 1u < p.n);
}

@compute @workgroup_size(4)
fn backward_tail(@builtin(local_invocation_id) lid: vec3<u32>) {
  let e = 2u * lid.x;
  if (e >= p.n) {
    return;
  }
  let w = p.start / 2u + lid.x;
  let both = e + 1u < p.n;
  let d = grads(
    vec4<f32>(unpack2x16float(bt_dh[w]), 0.0, 0.0),
    vec4<f32>(unpack2x16float(bt_g[w]), 0.0, 0.0),
    vec4<f32>(unpack2x16float(bt_u[w]), 0.0, 0.0),
  );
  bt_dg[w] = pairWord(d[0].xy, bt_dg[w], both);
  bt_du[w] = pairWord(d[1].xy, bt_du[w], both);
}
