// Gradient statistics, first pass over one gradient tensor: each workgroup writes the sum of
// squares of its elements and whether any of them is non-finite (inf or NaN, tested on the bits).
//   grad[N] f32
//   partials[*] vec2<f32>: at p.offset + workgroup, (sum of squares, 1 if any non-finite else 0)
// Workgroup w reads elements w*256 + lane, stepping by all invocations: a fixed order. Each step
// loads UNROLL elements (one stride apart) before adding their squares, so several loads per
// invocation are in flight.
struct Params {
  n: u32,
  offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<vec2<f32>>;

const WG = 256u;
const UNROLL = 4u;

var<workgroup> wsum: array<f32, WG>;
var<workgroup> wbad: array<f32, WG>;

@compute @workgroup_size(256)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  var s = 0.0;
  var bad = 0.0;
  let stride = nwg.x * WG;
  var i = wg.x * WG + lid.x;
  for (; i + (UNROLL - 1u) * stride < p.n; i += UNROLL * stride) {
    var x: array<f32, UNROLL>;
    for (var k = 0u; k < UNROLL; k++) {
      x[k] = grad[i + k * stride];
    }
    for (var k = 0u; k < UNROLL; k++) {
      if ((bitcast<u32>(x[k]) & 0x7f800000u) == 0x7f800000u) {
        bad = 1.0;
      }
      s += x[k] * x[k];
    }
  }
  for (; i < p.n; i += stride) {
    let x = grad[i];
    if ((bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u) {
      bad = 1.0;
    }
    s += x * x;
  }
  wsum[lid.x] = s;
  wbad[lid.x] = bad;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half >>= 1u) {
    if (lid.x < half) {
      wsum[lid.x] += wsum[lid.x + half];
      wbad[lid.x] = max(wbad[lid.x], wbad[lid.x + half]);
    }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    partials[p.offset + wg.x] = vec2<f32>(wsum[0], wbad[0]);
  }
}
