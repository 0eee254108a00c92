// Gradient statistics, second pass: one workgroup folds the partials of every tensor.
//   partials[p.count] vec2<f32> from grad_stats_partial.wgsl
//   stats: { L2 norm of all gradients (f32), 1 if any element is non-finite else 0 (u32) }
struct Params {
  count: u32,
}

struct Stats {
  norm: f32,
  nonfinite: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> stats: Stats;

const WG = 256u;

var<workgroup> wsum: array<f32, WG>;
var<workgroup> wbad: array<f32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  var s = 0.0;
  var bad = 0.0;
  // Four loads in flight per step, then the rest one by one; a fixed order.
  var i = lid.x;
  for (; i + 3u * WG < p.count; i += 4u * WG) {
    let q0 = partials[i];
    let q1 = partials[i + WG];
    let q2 = partials[i + 2u * WG];
    let q3 = partials[i + 3u * WG];
    s += (q0.x + q1.x) + (q2.x + q3.x);
    bad = max(bad, max(max(q0.y, q1.y), max(q2.y, q3.y)));
  }
  for (; i < p.count; i += WG) {
    let q = partials[i];
    s += q.x;
    bad = max(bad, q.y);
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
    stats.norm = sqrt(wsum[0]);
    stats.nonfinite = select(0u, 1u, wbad[0] > 0.0);
  }
}
