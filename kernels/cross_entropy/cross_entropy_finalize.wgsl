// Cross-entropy forward, after the last chunk: per-token loss and log-sum-exp, and the sum of the
// losses of the valid tokens with their count. One workgroup; a fixed reduction order.
//   labels[T] i32 (-100: ignored), state[T] vec4<f32> from cross_entropy_fwd.wgsl
//   loss[T] f32: lse - label logit, 0 for ignored tokens, p.invalid (NaN) for a label outside the vocabulary
//   lse[T] f32: log(sum_v exp(logit_v))
//   totals: { sum of loss over valid tokens, number of valid tokens }
struct Params {
  T: u32,
  invalid: f32,
}

struct Totals {
  sum: f32,
  count: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> labels: array<i32>;
@group(0) @binding(2) var<storage, read> state: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> totals: Totals;

const WG = 256u;

var<workgroup> wsum: array<f32, WG>;
var<workgroup> wcount: array<u32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  var sum = 0.0;
  var count = 0u;
  for (var t = lid.x; t < p.T; t += WG) {
    let st = state[t];
    let l = st.x + log(st.y);
    lse[t] = l;
    var value = 0.0;
    if (labels[t] != -100) {
      value = select(p.invalid, l - st.z, st.w > 0.5);
      sum += value;
      count += 1u;
    }
    loss[t] = value;
  }
  wsum[lid.x] = sum;
  wcount[lid.x] = count;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (lid.x < half) {
      wsum[lid.x] += wsum[lid.x + half];
      wcount[lid.x] += wcount[lid.x + half];
    }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    totals.sum = wsum[0];
    totals.count = wcount[0];
  }
}
