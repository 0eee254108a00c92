// NF4 quantization, pass 1: per-64 block absmax and packed 4-bit codes of a weight of n elements
// (f32, f16 or bf16 bits, chosen by DTYPE), bit for bit as nf4_ref.ts specifies.
// One invocation per output word (8 consecutive elements); 8 invocations share a block, so a
// workgroup of 64 covers 8 blocks. Workgroups are numbered wg.y * groupsX + wg.x.
// Elements at or beyond n read as 0 (code 7); subnormal inputs count as 0.

struct Params {
  n: u32,
  groupsX: u32,
}

override DTYPE: u32 = 0u; // 0 f32, 1 f16, 2 bf16

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>; // f32 words or pairs of 16-bit values
@group(0) @binding(2) var<storage, read_write> codes: array<u32>; // [ceil(n/8)]
@group(0) @binding(3) var<storage, read_write> absmax: array<f32>; // [ceil(n/64)]

const MIN_NORMAL = 1.17549435e-38;

// f32 midpoints between consecutive NF4 codebook entries, as bit patterns.
const MID = array<u32, 15>(
  0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu,
  0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau);

var<workgroup> red: array<f32, 64>;

fn f16BitsToF32(h: u32) -> f32 {
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0u) {
    let v = f32(m) * 5.9604644775390625e-8; // m * 2^-24, exact
    return select(v, -v, s != 0u);
  }
  if (e == 31u) { return bitcast<f32>(s | 0x7f800000u | (m << 13u)); }
  return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

fn loadValue(i: u32) -> f32 {
  if (i >= p.n) { return 0.0; }
  var x: f32;
  if (DTYPE == 0u) {
    x = bitcast<f32>(src[i]);
  } else {
    let h = (src[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
    if (DTYPE == 1u) { x = f16BitsToF32(h); } else { x = bitcast<f32>(h << 16u); }
  }
  if (abs(x) < MIN_NORMAL) { x = 0.0; }
  return x;
}

// Correctly rounded x / y for x >= 0, y > 0 normal f32, by long division of the significands
// (WGSL's division is only accurate to 2.5 ulp); 0 where the quotient is below 2^-126.
fn divExact(x: f32, y: f32) -> f32 {
  if (x == 0.0 || y == 0.0) { return 0.0; }
  let xb = bitcast<u32>(x);
  let yb = bitcast<u32>(y);
  let mx = (xb & 0x7fffffu) | 0x800000u;
  let my = (yb & 0x7fffffu) | 0x800000u;
  var e = i32((xb >> 23u) & 0xffu) - i32((yb >> 23u) & 0xffu) + 127;
  var rem = mx;
  if (mx < my) {
    rem = mx * 2u;
    e -= 1;
  }
  var q = 1u;
  rem -= my;
  for (var i = 0u; i < 23u; i++) {
    rem *= 2u;
    q *= 2u;
    if (rem >= my) {
      rem -= my;
      q |= 1u;
    }
  }
  let twice = rem * 2u;
  if (twice > my || (twice == my && (q & 1u) == 1u)) { q += 1u; }
  if (q == 0x1000000u) {
    q = 0x800000u;
    e += 1;
  }
  if (e < 1) { return 0.0; }
  if (e > 254) { return bitcast<f32>(0x7f7fffffu); } // saturates (never reached: x / y stays below 2^127 here)
  return bitcast<f32>((u32(e) << 23u) | (q & 0x7fffffu));
}

fn nf4Code(normed: f32) -> u32 {
  var q = 0u;
  for (var i = 0u; i < 15u; i++) {
    if (normed > bitcast<f32>(MID[i])) { q++; }
  }
  return q;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let word = (wg.y * p.groupsX + wg.x) * 64u + lid.x;
  let base = word * 8u;
  var v: array<f32, 8>;
  var m = 0.0;
  for (var j = 0u; j < 8u; j++) {
    v[j] = loadValue(base + j);
    m = max(m, abs(v[j]));
  }
  red[lid.x] = m;
  workgroupBarrier();
  let g = (lid.x / 8u) * 8u;
  var a = 0.0;
  for (var j = 0u; j < 8u; j++) { a = max(a, red[g + j]); }
  let r = divExact(1.0, a);
  var w = 0u;
  for (var j = 0u; j < 8u; j++) {
    let q = nf4Code(v[j] * r);
    w |= q << ((j / 2u) * 8u + select(0u, 4u, (j & 1u) == 0u));
  }
  if (base < p.n) {
    codes[word] = w;
    if ((lid.x & 7u) == 0u) { absmax[base / 64u] = a; }
  }
}
