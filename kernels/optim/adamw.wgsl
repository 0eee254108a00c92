// AdamW with f32 parameters, gradients and states.
//   param[N], m[N], v[N] f32 (read-write), grad[N] f32
// 1 - beta1 and 1 - beta2 come from the launcher in double precision as torch computes them; so do
// the bias corrections: c1 = 1 - beta1^t, c2 = sqrt(1 - beta2^t),
// step_size = lr / c1, decay = 1 - lr * weight_decay. Two orders of the decoupled decay:
//   decay_after = 0 (torch.optim.AdamW): p *= decay; p -= step_size * m / (sqrt(v) / c2 + eps)
//   decay_after = 1 (bitsandbytes 32-bit state): p -= step_size * c2 * m / (sqrt(v) + eps * c2); p *= decay
// `main` sees every buffer as vec4<f32> and covers the first p.n elements (a multiple of 4): each
// invocation handles UNITS vectors of 4 elements (lane l of workgroup w: vectors
// w * WG * UNITS + l + k * WG) and issues all 4 * UNITS loads before any math. Workgroups in x then
// y. `tail` handles the last p.n < 4 elements, starting at element p.start of its bindings (which
// begin at an aligned offset before them), one per invocation. Both leave everything unchanged when
// word 1 of `skip` is not 0 (the non-finite count of grad_stats_final.wgsl).
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
  start: u32,
}

const WG = 256u;
const UNITS = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> skip: array<u32>;

// The tail entry's views.
@group(0) @binding(1) var<storage, read_write> t_param: array<f32>;
@group(0) @binding(2) var<storage, read> t_grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> t_m: array<f32>;
@group(0) @binding(4) var<storage, read_write> t_v: array<f32>;

struct State {
  w: vec4<f32>,
  m: vec4<f32>,
  v: vec4<f32>,
}

fn adam(w: vec4<f32>, g: vec4<f32>, m0: vec4<f32>, v0: vec4<f32>) -> State {
  let mi = p.beta1 * m0 + p.one_minus_beta1 * g;
  let vi = p.beta2 * v0 + p.one_minus_beta2 * g * g;
  var x = w;
  if (p.decay_after == 0u) {
    x = x * p.decay;
    x = x - p.step_size * mi / (sqrt(vi) / p.c2 + p.eps);
  } else {
    x = x - p.step_size * p.c2 * mi / (sqrt(vi) + p.eps * p.c2);
    x = x * p.decay;
  }
  return State(x, mi, vi);
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  if (skip[1] != 0u) {
    return;
  }
  let i0 = (wg.y * nwg.x + wg.x) * (WG * UNITS) + lid.x;
  let quads = p.n / 4u;
  var w: array<vec4<f32>, UNITS>;
  var g: array<vec4<f32>, UNITS>;
  var m0: array<vec4<f32>, UNITS>;
  var v0: array<vec4<f32>, UNITS>;
  for (var k = 0u; k < UNITS; k++) {
    let i = i0 + k * WG;
    if (i < quads) {
      g[k] = grad[i];
      w[k] = param[i];
      m0[k] = m[i];
      v0[k] = v[i];
    }
  }
  for (var k = 0u; k < UNITS; k++) {
    let i = i0 + k * WG;
    if (i < quads) {
      let s = adam(w[k], g[k], m0[k], v0[k]);
      m[i] = s.m;
      v[i] = s.v;
      param[i] = s.w;
    }
  }
}

@compute @workgroup_size(4)
fn tail(@builtin(local_invocation_id) lid: vec3<u32>) {
  if (lid.x >= p.n || skip[1] != 0u) {
    return;
  }
  let i = p.start + lid.x;
  let s = adam(vec4<f32>(t_param[i]), vec4<f32>(t_grad[i]), vec4<f32>(t_m[i]), vec4<f32>(t_v[i]));
  t_m[i] = s.m.x;
  t_v[i] = s.v.x;
  t_param[i] = s.w.x;
}
