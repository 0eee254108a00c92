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
// One invocation rotates two adjacent pairs (vec2<f16> at i and at i + D/2), so D is a multiple of 4,
// in up to HEADS_PER_THREAD heads of one token, which share cos and sin.
// f16 in and out, f32 inside. The workgroup grid may be 2D (flat index wg.y * num_workgroups.x + wg.x).
enable f16;

struct Params {
  T: u32,
  NH: u32,
  D: u32,
  dir: f32,
  // out_of_place: y starts this many vec2 into its binding (decode writes k into a cache row).
  out_off: u32,
}

const WG = 256u;
// 2*pi = C1 + C2 + C3: C1 has 8 significant bits and C2 9, so k * C1 and k * C2 are exact for k < 2^15.
const C1 = 6.28125;
const C2 = 0.001934051513671875;
const C3 = 1.2556658930407139e-06;
const INV_2PI = 0.15915493667125702;

@group(0) @binding(0) var<uniform> p: Params;

// inplace: x [T, NH, D] rotated in place, positions [T], inv_freq [D/2]
@group(0) @binding(1) var<storage, read_write> i_x: array<vec2<f16>>;
@group(0) @binding(2) var<storage, read> i_pos: array<u32>;
@group(0) @binding(3) var<storage, read> i_freq: array<f32>;

// out_of_place: x, positions, inv_freq, y [T, NH, D] (at out_off)
@group(0) @binding(1) var<storage, read> o_x: array<vec2<f16>>;
@group(0) @binding(2) var<storage, read> o_pos: array<u32>;
@group(0) @binding(3) var<storage, read> o_freq: array<f32>;
@group(0) @binding(4) var<storage, read_write> o_y: array<vec2<f16>>;

fn reduce2pi(a: f32) -> f32 {
  let k = round(a * INV_2PI);
  return ((a - k * C1) - k * C2) - k * C3;
}

/** f truncated to 7 significant bits. */
fn top7(f: f32) -> f32 {
  return bitcast<f32>(bitcast<u32>(f) & 0xfffe0000u);
}

/** (cos, dir * sin) of pos * f, with the product taken exactly. */
fn rotation(pos: u32, f: f32) -> vec2<f32> {
  let fp = f32(pos);
  let fh = top7(f);
  let fm = top7(f - fh);
  let fl = (f - fh) - fm;
  let r = reduce2pi(reduce2pi(fp * fh) + reduce2pi(fp * fm) + fp * fl);
  return vec2<f32>(cos(r), p.dir * sin(r));
}

// Heads rotated by one invocation with the same cos and sin (the angle depends on t and i only).
const HEADS_PER_THREAD = 4u;

struct Site {
  lo: u32, // vec2 index of elements (i, i+1) of the first head, in the first half
  t: u32,
  i: u32,
  h0: u32, // first head
}

fn site(wg: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> Site {
  let idx = (wg.y * nwg.x + wg.x) * WG + lid.x;
  let quarter = p.D / 4u;
  let groups = (p.NH + HEADS_PER_THREAD - 1u) / HEADS_PER_THREAD;
  let rest = idx / quarter; // t * groups + head group
  let j = idx - rest * quarter;
  var s: Site;
  s.t = rest / groups;
  s.h0 = (rest - s.t * groups) * HEADS_PER_THREAD;
  s.lo = (s.t * p.NH + s.h0) * (p.D / 2u) + j;
  s.i = 2u * j;
  return s;
}

fn rotate(a: vec2<f16>, b: vec2<f16>, c: vec2<f32>, s: vec2<f32>) -> array<vec2<f16>, 2> {
  let x0 = vec2<f32>(a);
  let x1 = vec2<f32>(b);
  return array<vec2<f16>, 2>(vec2<f16>(x0 * c - x1 * s), vec2<f16>(x1 * c + x0 * s));
}

@compute @workgroup_size(WG)
fn inplace(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let s = site(wg, nwg, lid);
  if (s.t >= p.T) {
    return;
  }
  let pos = i_pos[s.t];
  let r0 = rotation(pos, i_freq[s.i]);
  let r1 = rotation(pos, i_freq[s.i + 1u]);
  let c = vec2<f32>(r0.x, r1.x);
  let sn = vec2<f32>(r0.y, r1.y);
  let quarter = p.D / 4u;
  for (var k = 0u; k < HEADS_PER_THREAD; k++) {
    if (s.h0 + k < p.NH) {
      let lo = s.lo + k * (p.D / 2u);
      let y = rotate(i_x[lo], i_x[lo + quarter], c, sn);
      i_x[lo] = y[0];
      i_x[lo + quarter] = y[1];
    }
  }
}

@compute @workgroup_size(WG)
fn out_of_place(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let s = site(wg, nwg, lid);
  if (s.t >= p.T) {
    return;
  }
  let pos = o_pos[s.t];
  let r0 = rotation(pos, o_freq[s.i]);
  let r1 = rotation(pos, o_freq[s.i + 1u]);
  let c = vec2<f32>(r0.x, r1.x);
  let sn = vec2<f32>(r0.y, r1.y);
  let quarter = p.D / 4u;
  for (var k = 0u; k < HEADS_PER_THREAD; k++) {
    if (s.h0 + k < p.NH) {
      let lo = s.lo + k * (p.D / 2u);
      let y = rotate(o_x[lo], o_x[lo + quarter], c, sn);
      o_y[p.out_off + lo] = y[0];
      o_y[p.out_off + lo + quarter] = y[1];
    }
  }
}
