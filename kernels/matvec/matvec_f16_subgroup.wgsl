// Matrix-vector product with an f16 weight, subgroup variant:
//   y[p.y_off + o] = alpha * sum_i W[o, i] x[i] + alpha2 * sum_k W2[o, k] x2[p.x2_off + k] + beta * y[p.y_off + o]   (o < OUT)
// W f16 [OUT, IN] row-major with IN % 8 == 0, read 16 bytes (8 values) at a time; x f16 [IN];
// W2 f16 [OUT, K2] row-major (K2 = 0: no second product), x2 f16 [x2_off + K2].
// A lane group of LANES (32..256) threads computes one row: lane l reads the 16-byte words l,
// l + LANES, ... of the row (a group reads LANES * 16 contiguous bytes per step), f32 partial sums, reduced with subgroupAdd
// (subgroups of 4..32 invocations, consecutive in local_invocation_index, so a lane group is
// 32 / subgroup_size whole subgroups) and the subgroups' sums added through workgroup memory.
// 256 / LANES rows per workgroup of 256. beta 0 never reads y.
// Entry `normed`: the product reads the RMSNorm of x instead (matvec_f16_norm.wgsl, which the
// launcher appends to this file).
enable f16;
enable subgroups;

struct Params {
  OUT: u32,
  IN: u32,
  K2: u32,
  gx: u32,
  alpha: f32,
  alpha2: f32,
  beta: f32,
  y_off: u32, // elements of y before row 0
  x2_off: u32, // elements of x2 before its first
  eps: f32, // NORMED
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> w2: array<f16>;
@group(0) @binding(4) var<storage, read> x2: array<f16>;
@group(0) @binding(5) var<storage, read_write> y: array<{{OUT}}>;

// Lanes per row: a power of two, 32..256 (the launcher picks it).
override LANES: u32 = 32u;
const WG = 256u;
override ROWS: u32 = WG / LANES;

var<workgroup> red: array<f32, WG>;

fn dot2(a: u32, b: u32) -> f32 {
  return dot(unpack2x16float(a), unpack2x16float(b));
}

// Eight f16 weights times eight f16 of x.
fn dot8(wv: vec4<u32>, xv: vec4<u32>) -> f32 {
  return dot2(wv.x, xv.x) + dot2(wv.y, xv.y) + dot2(wv.z, xv.z) + dot2(wv.w, xv.w);
}

fn row_main(o: u32, lane: u32) -> f32 {
  let words = p.IN / 8u;
  let base = o * words;
  var a0 = 0.0;
  var a1 = 0.0;
  var j = lane;
  // Two independent words in flight per lane.
  for (; j + LANES < words; j += 2u * LANES) {
    a0 += dot8(w[base + j], in8(j));
    a1 += dot8(w[base + j + LANES], in8(j + LANES));
  }
  if (j < words) { a0 += dot8(w[base + j], in8(j)); }
  return a0 + a1;
}

fn row_second(o: u32, lane: u32) -> f32 {
  var acc = 0.0;
  let base = o * p.K2;
  for (var k = lane; k < p.K2; k += LANES) { acc = fma(f32(w2[base + k]), f32(x2[p.x2_off + k]), acc); }
  return acc;
}

// The product for this workgroup's rows (every invocation calls it).
fn product(wg: vec3<u32>, li: u32, sg: u32, sl: u32) {
  let lane = li % LANES;
  let o = (wg.y * p.gx + wg.x) * ROWS + li / LANES;
  var v = 0.0;
  if (o < p.OUT) {
    v = p.alpha * row_main(o, lane);
    if (p.K2 > 0u) { v += p.alpha2 * row_second(o, lane); }
  }
  let t = subgroupAdd(v);
  if (sl == 0u) { red[li / sg] = t; }
  workgroupBarrier();
  if (lane == 0u && o < p.OUT) {
    var r = 0.0;
    for (var k = 0u; k < LANES / sg; k++) { r += red[li / sg + k]; }
    if (p.beta != 0.0) { r += p.beta * f32(y[p.y_off + o]); }
    y[p.y_off + o] = {{OUT}}(r);
  }
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
  @builtin(subgroup_size) sg: u32,
  @builtin(subgroup_invocation_id) sl: u32,
) {
  product(wg, li, sg, sl);
}

// NORMED (its own entry, so that `main` binds neither nw nor hout).
@compute @workgroup_size(WG)
fn normed(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
  @builtin(subgroup_size) sg: u32,
  @builtin(subgroup_invocation_id) sl: u32,
) {
  normed_input(li, wg.x == 0u && wg.y == 0u);
  product(wg, li, sg, sl);
}
