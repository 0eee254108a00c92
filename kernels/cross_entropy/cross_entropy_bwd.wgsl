// Cross-entropy backward, one vocabulary chunk: the gradient of the loss with respect to the
// chunk's logits, dlogits = (softmax - onehot(label)) * scale, in f16 for the dHidden matmul.
//   logits[T, n] f32 (recomputed), labels[T] i32, lse[T] f32 from the forward
//   totals: { sum, count } from the forward; with p.mean_by_count = 1 the scale is divided by
//     max(count, 1), so the gradient of the mean loss needs no readback of the count
//   dlogits[T, n] f16; rows of ignored tokens (-100) are 0
// Grid: x over columns (256 per workgroup), y over rows.
enable f16;

struct Params {
  T: u32,
  n: u32,
  v0: u32,
  mean_by_count: u32,
  scale: f32,
}

struct Totals {
  sum: f32,
  count: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> totals: Totals;
@group(0) @binding(5) var<storage, read_write> dlogits: array<f16>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let t = wg.y;
  let j = wg.x * 256u + lid.x;
  if (j >= p.n) {
    return;
  }
  let label = labels[t];
  var g = 0.0;
  if (label != -100) {
    var scale = p.scale;
    if (p.mean_by_count != 0u) {
      scale = scale / f32(max(totals.count, 1u));
    }
    let prob = exp(logits[t * p.n + j] - lse[t]);
    let onehot = select(0.0, 1.0, label >= 0 && u32(label) == p.v0 + j);
    g = (prob - onehot) * scale;
  }
  dlogits[t * p.n + j] = f16(g);
}
