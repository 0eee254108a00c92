// SwiGLU gate of the Llama MLP on flat arrays of n = T * I elements, forward and backward.
//   forward:  h = silu(g) * u,  silu(g) = g * sigmoid(g)
//   backward: du = dh * silu(g);  dg = dh * u * s * (1 + g * (1 - s)),  s = sigmoid(g)
// f16 in and out, f32 inside, each result rounded once. One invocation handles one pair of
// elements (a vec2<f16>); where n is odd, the second half of the last pair of every output is
// left as it was. The workgroup grid may be 2D (flat index wg.y * num_workgroups.x + wg.x).
enable f16;

struct Params {
  n: u32,
}

const WG = 256u;

@group(0) @binding(0) var<uniform> p: Params;

// forward: g, u, h
@group(0) @binding(1) var<storage, read> f_g: array<vec2<f16>>;
@group(0) @binding(2) var<storage, read> f_u: array<vec2<f16>>;
@group(0) @binding(3) var<storage, read_write> f_h: array<vec2<f16>>;

// backward: dh, g, u, dg, du
@group(0) @binding(1) var<storage, read> b_dh: array<vec2<f16>>;
@group(0) @binding(2) var<storage, read> b_g: array<vec2<f16>>;
@group(0) @binding(3) var<storage, read> b_u: array<vec2<f16>>;
@group(0) @binding(4) var<storage, read_write> b_dg: array<vec2<f16>>;
@group(0) @binding(5) var<storage, read_write> b_du: array<vec2<f16>>;

fn sigmoid(x: vec2<f32>) -> vec2<f32> {
  return 1.0 / (1.0 + exp(-x));
}

/** `v`, or where only the first element of the pair is in range, `v` with the second element of
 * `old` (what the buffer already held). */
fn keepTail(v: vec2<f16>, old: vec2<f16>, i: u32) -> vec2<f16> {
  if (2u * i + 1u < p.n) {
    return v;
  }
  return vec2<f16>(v.x, old.y);
}

@compute @workgroup_size(WG)
fn forward(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wg.y * nwg.x + wg.x) * WG + lid.x;
  if (2u * i >= p.n) {
    return;
  }
  let g = vec2<f32>(f_g[i]);
  let u = vec2<f32>(f_u[i]);
  let h = vec2<f16>(g * sigmoid(g) * u);
  if (2u * i + 1u < p.n) {
    f_h[i] = h;
  } else {
    f_h[i] = keepTail(h, f_h[i], i);
  }
}

@compute @workgroup_size(WG)
fn backward(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let i = (wg.y * nwg.x + wg.x) * WG + lid.x;
  if (2u * i >= p.n) {
    return;
  }
  let dh = vec2<f32>(b_dh[i]);
  let g = vec2<f32>(b_g[i]);
  let u = vec2<f32>(b_u[i]);
  let s = sigmoid(g);
  let du = vec2<f16>(dh * g * s);
  let dg = vec2<f16>(dh * u * s * (1.0 + g * (1.0 - s)));
  if (2u * i + 1u < p.n) {
    b_dg[i] = dg;
    b_du[i] = du;
  } else {
    b_dg[i] = keepTail(dg, b_dg[i], i);
    b_du[i] = keepTail(du, b_du[i], i);
  }
}
