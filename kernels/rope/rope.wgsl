// Rotary position embedding, rotate-half form (Hugging Face Llama layout), on x [T, NH, D] where NH
// is the number of heads of the tensor (H for q, KVH for k):
//   for i < D/2, with a = positions[t] * inv_freq[i], c = cos(a), s = dir * sin(a):
//     y[i]       = x[i] * c - x[i + D/2] * s
//     y[i + D/2] = x[i + D/2] * c + x[i] * s
// dir = +1 is the forward, dir = -1 the backward (rotation by the negative angle).
// The angle is the exact product of the integer position and the f32 frequency, reduced modulo
// 2*pi in f32 without rounding the product (the frequency is split into pieces of 7 significant
// bits, whose products with positions below 2^17 are exact; Cody-Waite reduction), so cos and sin
// see an argument in [-pi, pi] accurate to about 1e-6 even at position 131071.
//
// Work item (t, j, g): token t, frequencies i = 8j .. 8j+7 (one 16-byte unit of 8 halves in each
// half of the head, so D is a multiple of 16), heads HEADS * g .. HEADS * g + HEADS - 1. The item
// computes its 8 cos/sin pairs once and applies them to both halves of all its heads; it issues all
// 2 * HEADS loads before any math. Items are numbered ((t * groups) + g) * units + j (units = D/16,
// groups = ceil(NH / HEADS)), so a lane group reads whole 128-byte rows of consecutive units.
// f16 in and out, f32 inside: halves widen exactly (unpack2x16float) and the results are rounded to
// nearest even on the bits (overflow to infinity), the same on every adapter; no shader-f16.
// The workgroup grid may be 2D (flat index wg.y * num_workgroups.x + wg.x).

struct Params {
  T: u32,
  NH: u32,
  D: u32,
  dir: f32,
  units: u32, // D / 16
  groups: u32, // ceil(NH / HEADS)
  items: u32, // units * groups: work items per token
  _pad: u32,
}

const WG = 256u;
// Heads of one work item.
const HEADS = 4u;
// 2*pi = C1 + C2 + C3: C1 has 8 significant bits and C2 9, so k * C1 and k * C2 are exact for k < 2^15.
const C1 = 6.28125;
const C2 = 0.001934051513671875;
const C3 = 1.2556658930407139e-06;
const INV_2PI = 0.15915493667125702;

@group(0) @binding(0) var<uniform> p: Params;

// inplace: x [T, NH, D] rotated in place, positions [T], inv_freq [D/2]
@group(0) @binding(1) var<storage, read_write> i_x: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> i_pos: array<u32>;
@group(0) @binding(3) var<storage, read> i_freq: array<vec4<f32>>;

// out_of_place: x, positions, inv_freq, y [T, NH, D]
@group(0) @binding(1) var<storage, read> o_x: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> o_pos: array<u32>;
@group(0) @binding(3) var<storage, read> o_freq: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> o_y: array<vec4<u32>>;

fn reduce2pi(a: vec4<f32>) -> vec4<f32> {
  let k = round(a * INV_2PI);
  return ((a - k * C1) - k * C2) - k * C3;
}

/** f truncated to 7 significant bits. */
fn top7(f: vec4<f32>) -> vec4<f32> {
  return bitcast<vec4<f32>>(bitcast<vec4<u32>>(f) & vec4<u32>(0xfffe0000u));
}

/** Angles pos * f reduced to [-pi, pi], with the product taken exactly. */
fn angle(fp: f32, f: vec4<f32>) -> vec4<f32> {
  let fh = top7(f);
  let fm = top7(f - fh);
  let fl = (f - fh) - fm;
  return reduce2pi(reduce2pi(fp * fh) + reduce2pi(fp * fm) + fp * fl);
}

/** Eight values as f32: even holds elements 0, 2, 4, 6 of a unit and odd 1, 3, 5, 7. */
struct Eight {
  even: vec4<f32>,
  odd: vec4<f32>,
}

/** One 16-byte unit of halves -> eight f32 (exact). */
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

/** Eight f32 -> one 16-byte unit of halves. */
fn narrow(even: vec4<f32>, odd: vec4<f32>) -> vec4<u32> {
  return f32ToF16(even) | (f32ToF16(odd) << vec4<u32>(16u));
}

/** cos and dir * sin of the 8 angles of one unit, in the even/odd order of Eight. */
struct Rotation {
  c: Eight,
  s: Eight,
}

fn rotation(pos: u32, f0: vec4<f32>, f1: vec4<f32>) -> Rotation {
  let fp = f32(pos);
  let ae = angle(fp, vec4<f32>(f0.x, f0.z, f1.x, f1.z));
  let ao = angle(fp, vec4<f32>(f0.y, f0.w, f1.y, f1.w));
  return Rotation(Eight(cos(ae), cos(ao)), Eight(p.dir * sin(ae), p.dir * sin(ao)));
}

/** The rotated first-half and second-half units. */
fn rotate(lo: vec4<u32>, hi: vec4<u32>, r: Rotation) -> array<vec4<u32>, 2> {
  let x0 = widen(lo);
  let x1 = widen(hi);
  return array<vec4<u32>, 2>(
    narrow(x0.even * r.c.even - x1.even * r.s.even, x0.odd * r.c.odd - x1.odd * r.s.odd),
    narrow(x1.even * r.c.even + x0.even * r.s.even, x1.odd * r.c.odd + x0.odd * r.s.odd),
  );
}

struct Item {
  t: u32,
  j: u32, // unit of the first half: frequencies 8j .. 8j+7
  h0: u32, // first head
  lo: u32, // vec4 index of unit j of head h0
}

fn item(wg: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> Item {
  let idx = (wg.y * nwg.x + wg.x) * WG + lid.x;
  // Two divisions by uniform values per invocation, outside any loop.
  var it: Item;
  it.t = idx / p.items;
  let r = idx - it.t * p.items;
  let g = r / p.units;
  it.j = r - g * p.units;
  it.h0 = g * HEADS;
  it.lo = (it.t * p.NH + it.h0) * (2u * p.units) + it.j;
  return it;
}

@compute @workgroup_size(WG)
fn inplace(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let it = item(wg, nwg, lid);
  if (it.t >= p.T) {
    return;
  }
  let row = 2u * p.units;
  var lo: array<vec4<u32>, HEADS>;
  var hi: array<vec4<u32>, HEADS>;
  for (var k = 0u; k < HEADS; k++) {
    if (it.h0 + k < p.NH) {
      lo[k] = i_x[it.lo + k * row];
      hi[k] = i_x[it.lo + k * row + p.units];
    }
  }
  let r = rotation(i_pos[it.t], i_freq[2u * it.j], i_freq[2u * it.j + 1u]);
  for (var k = 0u; k < HEADS; k++) {
    if (it.h0 + k < p.NH) {
      let y = rotate(lo[k], hi[k], r);
      i_x[it.lo + k * row] = y[0];
      i_x[it.lo + k * row + p.units] = y[1];
    }
  }
}

@compute @workgroup_size(WG)
fn out_of_place(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let it = item(wg, nwg, lid);
  if (it.t >= p.T) {
    return;
  }
  let row = 2u * p.units;
  var lo: array<vec4<u32>, HEADS>;
  var hi: array<vec4<u32>, HEADS>;
  for (var k = 0u; k < HEADS; k++) {
    if (it.h0 + k < p.NH) {
      lo[k] = o_x[it.lo + k * row];
      hi[k] = o_x[it.lo + k * row + p.units];
    }
  }
  let r = rotation(o_pos[it.t], o_freq[2u * it.j], o_freq[2u * it.j + 1u]);
  for (var k = 0u; k < HEADS; k++) {
    if (it.h0 + k < p.NH) {
      let y = rotate(lo[k], hi[k], r);
      o_y[it.lo + k * row] = y[0];
      o_y[it.lo + k * row + p.units] = y[1];
    }
  }
}
