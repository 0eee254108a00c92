// NF4 double quantization, pass 3: offset = total / nb (correctly rounded), then each group of 256
// block absmax values minus the offset is quantized to 8-bit codes of the signed dynamic map with
// the group's scale = max |v| (bitsandbytes' dQuantize search), as nf4_ref.ts specifies.
// One workgroup of 256 per group; nested[0] = offset, nested[1 + g] = scale of group g.

struct Params {
  nb: u32,
  groupsX: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> absmax: array<f32>; // [nb]
@group(0) @binding(2) var<storage, read> total: array<f32>; // [1]: sum of absmax
@group(0) @binding(3) var<storage, read> dynmap: array<f32>; // [256]
@group(0) @binding(4) var<storage, read_write> absmaxCodes: array<u32>; // [ceil(nb/4)], 4 codes per word
@group(0) @binding(5) var<storage, read_write> nested: array<f32>; // [1 + ceil(nb/256)]

const MIN_NORMAL = 1.17549435e-38;

var<workgroup> red: array<f32, 256>;
var<workgroup> qs: array<u32, 256>;

// Correctly rounded x / y (see nf4_quantize.wgsl).
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

// bitsandbytes' dQuantize (non-stochastic) over the 256-entry map.
fn dynamicCode(x: f32) -> u32 {
  var pivot = 127u;
  var upperPivot = 255u;
  var lowerPivot = 0u;
  var lower = -1.0;
  var upper = 1.0;
  var val = dynmap[pivot];
  for (var i = 64u; i > 0u; i >>= 1u) {
    if (x > val) {
      lowerPivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upperPivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = dynmap[pivot];
  }
  if (upperPivot == 255u) { upper = dynmap[upperPivot]; }
  if (lowerPivot == 0u) { lower = dynmap[lowerPivot]; }
  if (x > val) {
    let mid = (upper + val) * 0.5;
    return select(pivot, upperPivot, x > mid);
  }
  let mid = (lower + val) * 0.5;
  return select(pivot, lowerPivot, x < mid);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let g = wg.y * p.groupsX + wg.x;
  let i = g * 256u + lid.x;
  let offset = divExact(total[0], f32(p.nb));
  var v = 0.0;
  if (i < p.nb) {
    v = absmax[i] - offset;
    if (abs(v) < MIN_NORMAL) { v = 0.0; }
  }
  red[lid.x] = abs(v);
  workgroupBarrier();
  for (var h = 128u; h > 0u; h >>= 1u) {
    if (lid.x < h) { red[lid.x] = max(red[lid.x], red[lid.x + h]); }
    workgroupBarrier();
  }
  let scale = red[0];
  let r = divExact(1.0, scale);
  var x = v * r;
  if (abs(x) < MIN_NORMAL) { x = 0.0; }
  var q = 0u;
  if (i < p.nb) { q = dynamicCode(x); }
  qs[lid.x] = q;
  workgroupBarrier();
  if (lid.x < 64u && g * 256u + lid.x * 4u < p.nb) {
    let l = lid.x * 4u;
    absmaxCodes[g * 64u + lid.x] = qs[l] | (qs[l + 1u] << 8u) | (qs[l + 2u] << 16u) | (qs[l + 3u] << 24u);
  }
  if (lid.x == 0u && g * 256u < p.nb) {
    nested[1u + g] = scale;
    if (g == 0u) { nested[0] = offset; }
  }
}
