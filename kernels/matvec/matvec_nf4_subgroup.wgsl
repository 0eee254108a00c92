// Matrix-vector product with an NF4 weight (kernels/nf4 layout), subgroup variant:
//   y[o] = alpha * sum_i W[o, i] x[i] + alpha2 * sum_k W2[o, k] x2[k] + beta * y[o]   (o < OUT)
// W NF4 [OUT, IN] with IN % 32 == 0, so every 16-byte word of codes (32 codes) starts a row or
// continues one, and lies inside one 64-block (one absmax per word):
//   absmax[b] = dynmap[absmax code b] * nested[1 + b / 256] + nested[0]; W[o, i] = NF4[code] * absmax.
// W2 f16 [OUT, K2] row-major (K2 = 0: no second product), x f16 [IN] (read 8 at a time), x2 f16 [K2].
// A lane group of 32 threads computes one row: lane l reads the code words l, l + 32, ... of the
// row (a group reads 512 contiguous bytes per step), f32 partial sums, reduced with subgroupAdd
// (subgroups of 4..32 invocations, consecutive in local_invocation_index, so a lane group is
// 32 / subgroup_size whole subgroups) and the subgroups' sums added through workgroup memory.
// Eight rows per workgroup of 256. beta 0 never reads y.
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
  pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> codes: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> absq: array<u32>;
@group(0) @binding(4) var<storage, read> nested: array<f32>;
@group(0) @binding(5) var<storage, read> dynmap: array<f32>;
@group(0) @binding(6) var<storage, read> w2: array<f16>;
@group(0) @binding(7) var<storage, read> x2: array<f16>;
@group(0) @binding(8) var<storage, read_write> y: array<{{OUT}}>;

const LANES = 32u;
const WG = 256u;
const ROWS = WG / LANES;

// NF4 codebook as f32 bit patterns.
const NF4 = array<u32, 16>(
  0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
  0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u);

var<workgroup> lut: array<f32, 16>;
var<workgroup> red: array<f32, WG>;

// Eight codes of one u32 (element 2k in the high nibble of byte k) times eight f16 of x.
fn dot8(c: u32, xv: vec4<u32>) -> f32 {
  let a = unpack2x16float(xv.x);
  let b = unpack2x16float(xv.y);
  let d = unpack2x16float(xv.z);
  let e = unpack2x16float(xv.w);
  var s = lut[(c >> 4u) & 15u] * a.x;
  s = fma(lut[c & 15u], a.y, s);
  s = fma(lut[(c >> 12u) & 15u], b.x, s);
  s = fma(lut[(c >> 8u) & 15u], b.y, s);
  s = fma(lut[(c >> 20u) & 15u], d.x, s);
  s = fma(lut[(c >> 16u) & 15u], d.y, s);
  s = fma(lut[(c >> 28u) & 15u], e.x, s);
  s = fma(lut[(c >> 24u) & 15u], e.y, s);
  return s;
}

// Code word g of the weight (32 codes, elements 32g..32g+31) against x elements 32j..32j+31.
fn word(g: u32, j: u32) -> f32 {
  let c = codes[g];
  let blk = g >> 1u;
  let aq = (absq[blk >> 2u] >> ((blk & 3u) * 8u)) & 0xffu;
  let am = dynmap[aq] * nested[1u + (blk >> 8u)] + nested[0];
  let xi = 4u * j;
  let s = dot8(c.x, x[xi]) + dot8(c.y, x[xi + 1u]) + dot8(c.z, x[xi + 2u]) + dot8(c.w, x[xi + 3u]);
  return s * am;
}

fn row_main(o: u32, lane: u32) -> f32 {
  let words = p.IN / 32u;
  let base = o * words;
  var a0 = 0.0;
  var a1 = 0.0;
  var j = lane;
  // Two independent words in flight per lane.
  for (; j + LANES < words; j += 2u * LANES) {
    a0 += word(base + j, j);
    a1 += word(base + j + LANES, j + LANES);
  }
  if (j < words) { a0 += word(base + j, j); }
  return a0 + a1;
}

fn row_second(o: u32, lane: u32) -> f32 {
  var acc = 0.0;
  let base = o * p.K2;
  for (var k = lane; k < p.K2; k += LANES) { acc = fma(f32(w2[base + k]), f32(x2[k]), acc); }
  return acc;
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
  @builtin(subgroup_size) sg: u32,
  @builtin(subgroup_invocation_id) sl: u32,
) {
  if (li < 16u) { lut[li] = bitcast<f32>(NF4[li]); }
  workgroupBarrier();
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
    if (p.beta != 0.0) { r += p.beta * f32(y[o]); }
    y[o] = {{OUT}}(r);
  }
}
