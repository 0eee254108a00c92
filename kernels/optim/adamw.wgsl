// AdamW with f32 parameters, gradients and states, one element per invocation.
//   param[N], m[N], v[N] f32 (read-write), grad[N] f32
// 1 - beta1 and 1 - beta2 come from the launcher in double precision as torch computes them; so do
// the bias corrections: c1 = 1 - beta1^t, c2 = sqrt(1 - beta2^t),
// step_size = lr / c1, decay = 1 - lr * weight_decay. Two orders of the decoupled decay:
//   decay_after = 0 (torch.optim.AdamW): p *= decay; p -= step_size * m / (sqrt(v) / c2 + eps)
//   decay_after = 1 (bitsandbytes 32-bit state): p -= step_size * c2 * m / (sqrt(v) + eps * c2); p *= decay
// Grid: workgroups in x then y, 256 elements each.
struct Params {
  n: u32,
  decay_after: u32,
  beta1: f32,
  beta2: f32,
  one_minus_beta1: f32,
  one_minus_beta2: f32,
  eps: f32,
  step_size: f32,
  c2: f32,
  decay: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wg.y * nwg.x + wg.x) * 256u + lid.x;
  if (i >= p.n) {
    return;
  }
  let g = grad[i];
  let mi = p.beta1 * m[i] + p.one_minus_beta1 * g;
  let vi = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
  m[i] = mi;
  v[i] = vi;
  var w = param[i];
  if (p.decay_after == 0u) {
    w = w * p.decay;
    w = w - p.step_size * mi / (sqrt(vi) / p.c2 + p.eps);
  } else {
    w = w - p.step_size * p.c2 * mi / (sqrt(vi) + p.eps * p.c2);
    w = w * p.decay;
  }
  param[i] = w;
}
