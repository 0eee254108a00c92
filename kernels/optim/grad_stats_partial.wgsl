// Gradient statistics, first pass over one gradient tensor: each workgroup writes the sum of
// squares of its elements and whether any of them is non-finite (inf or NaN, tested on the bits).
//   grad[N] f32
//   partials[*] vec2<f32>: at p.offset + workgroup, (sum of squares, 1 if any non-finite else 0)
// `main` sees grad as vec4<f32> and covers the first p.n elements (a multiple of 4): workgroup w
// reads vectors w * WG + lane, stepping by all invocations (a fixed order); each step loads UNROLL
// vectors (one stride apart) before adding their squares, so UNROLL 16-byte loads per invocation
// are in flight. `tail` (one invocation) writes the partial of the last p.n < 4 elements, which
// start at element p.start of its binding.
struct Params {
  n: u32,
  offset: u32,
  start: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> partials: array<vec2<f32>>;
// The tail entry's view of grad.
@group(0) @binding(1) var<storage, read> t_grad: array<f32>;

const WG = 256u;
const UNROLL = 4u;

var<workgroup> wsum: array<f32, WG>;
var<workgroup> wbad: array<f32, WG>;

fn nonfinite(x: vec4<f32>) -> bool {
  return any((bitcast<vec4<u32>>(x) & vec4<u32>(0x7f800000u)) == vec4<u32>(0x7f800000u));
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let quads = p.n / 4u;
  var s = vec4<f32>(0.0);
  var bad = false;
  let stride = nwg.x * WG;
  var i = wg.x * WG + lid.x;
  for (; i + (UNROLL - 1u) * stride < quads; i += UNROLL * stride) {
    var x: array<vec4<f32>, UNROLL>;
    for (var k = 0u; k < UNROLL; k++) {
      x[k] = grad[i + k * stride];
    }
    for (var k = 0u; k < UNROLL; k++) {
      bad = bad || nonfinite(x[k]);
      s += x[k] * x[k];
    }
  }
  for (; i < quads; i += stride) {
    let x = grad[i];
    bad = bad || nonfinite(x);
    s += x * x;
  }
  wsum[lid.x] = (s.x + s.y) + (s.z + s.w);
  wbad[lid.x] = select(0.0, 1.0, bad);
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

@compute @workgroup_size(1)
fn tail() {
  var s = 0.0;
  var bad = 0.0;
  for (var k = 0u; k < p.n; k++) {
    let x = t_grad[p.start + k];
    if ((bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u) {
      bad = 1.0;
    }
    s += x * x;
  }
  partials[p.offset] = vec2<f32>(s, bad);
}
