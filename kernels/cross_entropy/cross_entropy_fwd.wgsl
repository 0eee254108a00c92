// Cross-entropy forward, one vocabulary chunk: folds the chunk's logits into each row's running
// (max, sum of exp(logit - max)) and picks the label's logit when the label lies in the chunk.
//   logits[T, n] f32: the chunk's logits, columns v0 .. v0+n-1 of the vocabulary
//   labels[T] i32: token ids, -100 for ignored tokens
//   state[T] vec4<f32>: (running max, running sum of exp, label logit, 1 where the label was seen)
// One workgroup per row; the first chunk (p.first = 1) starts the state afresh.
struct Params {
  T: u32,
  n: u32,
  v0: u32,
  first: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> state: array<vec4<f32>>;

const WG = 256u;
// Stands for -infinity: exp(x - NEG_BIG) stays finite for every logit that f16 x f16 products make,
// and exp(NEG_BIG - m) is 0.
const NEG_BIG = -3.0e38;

var<workgroup> wmax: array<f32, WG>;
var<workgroup> wsum: array<f32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let t = wg.x;
  let row = t * p.n;
  var m = NEG_BIG;
  var s = 0.0;
  for (var j = lid.x; j < p.n; j += WG) {
    let x = logits[row + j];
    if (x > m) {
      s = s * exp(m - x) + 1.0;
      m = x;
    } else {
      s += exp(x - m);
    }
  }
  wmax[lid.x] = m;
  wsum[lid.x] = s;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (lid.x < half) {
      let m1 = wmax[lid.x];
      let m2 = wmax[lid.x + half];
      let mm = max(m1, m2);
      wsum[lid.x] = wsum[lid.x] * exp(m1 - mm) + wsum[lid.x + half] * exp(m2 - mm);
      wmax[lid.x] = mm;
    }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    var st = state[t];
    if (p.first != 0u) {
      st = vec4<f32>(NEG_BIG, 0.0, 0.0, 0.0);
    }
    let cm = wmax[0];
    let mm = max(st.x, cm);
    st.y = st.y * exp(st.x - mm) + wsum[0] * exp(cm - mm);
    st.x = mm;
    let label = labels[t];
    if (label >= 0) {
      let j = u32(label) - p.v0;
      if (u32(label) >= p.v0 && j < p.n) {
        st.z = logits[row + j];
        st.w = 1.0;
      }
    }
    state[t] = st;
  }
}
