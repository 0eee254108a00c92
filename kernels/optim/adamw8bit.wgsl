// AdamW with 8-bit blockwise states, as bitsandbytes' kOptimizerStatic8bit2StateBlockwise (ADAM):
// blocks of 256 elements; m as codes of the signed dynamic map, v as codes of the unsigned one,
// each with one f32 absmax per block (value = map[code] * absmax).
//   param[N] f32 (read-write), grad[N] f32
//   m_codes, v_codes: N bytes, 4 per u32 (element 4w+k in byte k of word w), read-write
//   m_absmax, v_absmax: f32 [ceil(N / 256)], read-write
//   maps: f32 [512], the signed map then the unsigned map
// Per element, in f32: with a finite gradient g,
//   v = beta2 v + (1 - beta2) g^2;  m = beta1 m + (1 - beta1) g;
//   p += step_size * m / (sqrt(v) + c2 eps)   (step_size = -lr c2 / c1, c1 = 1 - beta1^t, c2 = sqrt(1 - beta2^t))
//   p *= decay                               (decay = 1 - lr wd)
// A non-finite gradient leaves p alone and sets that element's m and v to 0 (as bitsandbytes).
// The new absmax is the block's max |m| (|v|) over its elements; codes are requantized against it
// with bitsandbytes' search (nearest map entry, ties to the pivot it ends on), and an m code whose
// sign disagrees with m moves one step toward m's sign. A block whose new absmax is 0 stores m code
// 255 and v code 0, the codes bitsandbytes' search gives there.
// One workgroup of 256 invocations per BLOCKS_PER_WG consecutive blocks, four blocks at a time
// (64 invocations per block, 4 elements, one code word, each); the two maps are loaded into
// workgroup memory once per workgroup. Workgroups in x then y.

struct Params {
  n: u32,
  beta1: f32,
  beta2: f32,
  step_size: f32,
  c2eps: f32,
  decay: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m_codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_codes: array<u32>;
@group(0) @binding(5) var<storage, read_write> m_absmax: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_absmax: array<f32>;
@group(0) @binding(7) var<storage, read> maps: array<f32>;

var<workgroup> map_m: array<f32, 256>;
var<workgroup> map_v: array<f32, 256>;
var<workgroup> red_m: array<f32, 256>;
var<workgroup> red_v: array<f32, 256>;

// Blocks per workgroup, a multiple of 4.
const BLOCKS_PER_WG = 16u;

fn finite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn sign_bit(x: f32) -> u32 {
  return bitcast<u32>(x) >> 31u;
}

// bitsandbytes' quantize_2D: binary search over the sorted map from index 127, then the nearer of
// the final pivot and its bracketing neighbour. `lower` starts at -1 (signed) or 0 (unsigned).
fn quantize_m(x: f32) -> u32 {
  var pivot = 127u;
  var upper_pivot = 255u;
  var lower_pivot = 0u;
  var lower = -1.0;
  var upper = 1.0;
  var val = map_m[pivot];
  for (var i = 64u; i > 0u; i >>= 1u) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = map_m[pivot];
  }
  if (x > val) {
    return select(pivot, upper_pivot, x > (upper + val) * 0.5);
  }
  return select(pivot, lower_pivot, x < (lower + val) * 0.5);
}

fn quantize_v(x: f32) -> u32 {
  var pivot = 127u;
  var upper_pivot = 255u;
  var lower_pivot = 0u;
  var lower = 0.0;
  var upper = 1.0;
  var val = map_v[pivot];
  for (var i = 64u; i > 0u; i >>= 1u) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = map_v[pivot];
  }
  if (x > val) {
    return select(pivot, upper_pivot, x > (upper + val) * 0.5);
  }
  return select(pivot, lower_pivot, x < (lower + val) * 0.5);
}

@compute @workgroup_size(256)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let first = (wg.y * nwg.x + wg.x) * BLOCKS_PER_WG;
  if (first * 256u >= p.n) {
    return;
  }
  map_m[lid.x] = maps[lid.x];
  map_v[lid.x] = maps[256u + lid.x];
  workgroupBarrier();
  let sub = lid.x / 64u;
  let lane = lid.x % 64u;
  for (var step = 0u; step < BLOCKS_PER_WG / 4u; step++) {
    let block = first + 4u * step + sub;
    let base = block * 256u + lane * 4u;
    let word = block * 64u + lane;
    var am = 0.0;
    var av = 0.0;
    var cm = 0u;
    var cv = 0u;
    if (block * 256u < p.n) {
      am = m_absmax[block];
      av = v_absmax[block];
    }
    if (base < p.n) {
      cm = m_codes[word];
      cv = v_codes[word];
    }
    var g = vec4<f32>();
    for (var k = 0u; k < 4u; k++) {
      if (base + k < p.n) {
        g[k] = grad[base + k];
      }
    }
    var s1 = vec4<f32>();
    var s2 = vec4<f32>();
    var ok = vec4<bool>();
    var local_m = 0.0;
    var local_v = 0.0;
    for (var k = 0u; k < 4u; k++) {
      if (base + k < p.n) {
        ok[k] = finite(g[k]);
        if (ok[k]) {
          let gk = g[k];
          s2[k] = map_v[(cv >> (8u * k)) & 255u] * av;
          s2[k] = s2[k] * p.beta2 + (1.0 - p.beta2) * gk * gk;
          s1[k] = map_m[(cm >> (8u * k)) & 255u] * am;
          s1[k] = s1[k] * p.beta1 + (1.0 - p.beta1) * gk;
        }
        local_m = max(local_m, abs(s1[k]));
        local_v = max(local_v, abs(s2[k]));
      }
    }
    red_m[lid.x] = local_m;
    red_v[lid.x] = local_v;
    workgroupBarrier();
    for (var half = 32u; half > 0u; half >>= 1u) {
      if (lane < half) {
        red_m[lid.x] = max(red_m[lid.x], red_m[lid.x + half]);
        red_v[lid.x] = max(red_v[lid.x], red_v[lid.x + half]);
      }
      workgroupBarrier();
    }
    let new_m = red_m[sub * 64u];
    let new_v = red_v[sub * 64u];
    // The next step rewrites red_m and red_v.
    workgroupBarrier();
    if (base < p.n) {
      if (lane == 0u) {
        m_absmax[block] = new_m;
        v_absmax[block] = new_v;
      }
      var out_m = 0u;
      var out_v = 0u;
      for (var k = 0u; k < 4u; k++) {
        let i = base + k;
        if (i >= p.n) {
          break;
        }
        if (ok[k]) {
          var w = param[i];
          w = w + p.step_size * (s1[k] / (sqrt(s2[k]) + p.c2eps));
          param[i] = w * p.decay;
        }
        var qm = 255u;
        var qv = 0u;
        if (new_m > 0.0) {
          qm = quantize_m(s1[k] / new_m);
          if (sign_bit(map_m[qm]) != sign_bit(s1[k])) {
            qm = select(qm - 1u, qm + 1u, s1[k] > 0.0) & 255u;
          }
        }
        if (new_v > 0.0) {
          qv = quantize_v(s2[k] / new_v);
        }
        out_m |= qm << (8u * k);
        out_v |= qv << (8u * k);
      }
      m_codes[word] = out_m;
      v_codes[word] = out_v;
    }
  }
}
