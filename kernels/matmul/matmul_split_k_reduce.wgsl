// The last pass of a split-K matrix product: the S partial products of the splits (f32, each
// [M,N] row-major, one after another in `part`) summed into C:
//   C[i] = alpha * sum_z part[z * MN + i] + beta * C[i]      (i < MN = M * N)
// One invocation per element; the splits are summed in order z = 0, 1, ... . beta 0 never reads C.
enable f16;

struct Params {
  MN: u32,
  S: u32,
  alpha: f32,
  beta: f32,
  gx: u32, // workgroups along x; element i is at workgroup (i / 256) % gx, (i / 256) / gx
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<{{OUT}}>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wg.y * p.gx + wg.x) * 256u + li;
  if (i >= p.MN) { return; }
  var sum = 0.0;
  for (var z = 0u; z < p.S; z++) { sum += part[z * p.MN + i]; }
  var v = p.alpha * sum;
  if (p.beta != 0.0) { v += p.beta * f32(c[i]); }
  c[i] = {{OUT}}(v);
}
