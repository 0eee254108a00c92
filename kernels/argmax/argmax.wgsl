// Index of the largest of n f32 values, as the sequential scan `best = 0; if (x[i] > x[best]) best = i`
// (torch.argmax on finite values): the first index on ties; a NaN never wins, and a NaN at index 0
// makes the answer 0 (nothing compares greater than it).
//   pass `partials`: workgroup g takes elements [g * SPAN, (g + 1) * SPAN), each invocation ITEMS of
//                   them (strided by WG, so a workgroup's loads are contiguous), and writes its best
//                   (value bits, index) to part[g]; a workgroup with no valid element writes (NaN, ~0).
//   pass `combine`:   one workgroup reduces part[0 .. groups) and writes the index to out[0] (i32).
// Reductions keep the better of two candidates: a non-NaN beats a NaN, a larger value beats a
// smaller, equal values go to the smaller index; so the order of the reduction does not matter.

struct Params {
  n: u32,
  groups: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> out: array<i32>;

const WG = 256u;
const ITEMS = 8u;
const SPAN = WG * ITEMS;
const NAN_BITS = 0x7fc00000u;
const NONE = 0xffffffffu;

var<workgroup> best_v: array<u32, WG>;
var<workgroup> best_i: array<u32, WG>;

// NaN from its bits (a test compilers cannot fold away as they may `v != v`).
fn is_nan(bits: u32) -> bool {
  return (bits & 0x7fffffffu) > 0x7f800000u;
}

// Whether candidate a = (bits, index) beats b.
fn better(av: u32, ai: u32, bv: u32, bi: u32) -> bool {
  if (is_nan(av)) { return false; }
  if (is_nan(bv)) { return true; }
  let a = bitcast<f32>(av);
  let b = bitcast<f32>(bv);
  return a > b || (a == b && ai < bi);
}

// Tree reduction of every invocation's candidate; the result in best_v[0], best_i[0].
fn reduce(li: u32, v: u32, i: u32) {
  best_v[li] = v;
  best_i[li] = i;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (li < s && better(best_v[li + s], best_i[li + s], best_v[li], best_i[li])) {
      best_v[li] = best_v[li + s];
      best_i[li] = best_i[li + s];
    }
    workgroupBarrier();
  }
}

@compute @workgroup_size(WG)
fn partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let base = wg.x * SPAN + li;
  // All loads first (ascending indices), then the scan.
  var vals: array<u32, ITEMS>;
  for (var k = 0u; k < ITEMS; k++) {
    let i = base + k * WG;
    vals[k] = select(NAN_BITS, bitcast<u32>(x[min(i, p.n - 1u)]), i < p.n);
  }
  var bv = NAN_BITS;
  var bi = NONE;
  for (var k = 0u; k < ITEMS; k++) {
    let i = base + k * WG;
    if (better(vals[k], i, bv, bi)) {
      bv = vals[k];
      bi = i;
    }
  }
  reduce(li, bv, bi);
  if (li == 0u) { part[wg.x] = vec2<u32>(best_v[0], best_i[0]); }
}

@compute @workgroup_size(WG)
fn combine(@builtin(local_invocation_index) li: u32) {
  var bv = NAN_BITS;
  var bi = NONE;
  for (var g = li; g < p.groups; g += WG) {
    let c = part[g];
    if (better(c.x, c.y, bv, bi)) {
      bv = c.x;
      bi = c.y;
    }
  }
  reduce(li, bv, bi);
  if (li == 0u) {
    var id = best_i[0];
    if (is_nan(bitcast<u32>(x[0])) || id == NONE) { id = 0u; }
    out[0] = i32(id);
  }
}
