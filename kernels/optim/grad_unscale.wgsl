// Loss-scale removal: grad *= factor (1 / loss scale).
//   grad[N] f32, read-write. Grid: workgroups in x then y, 256 elements each.
struct Params {
  n: u32,
  factor: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;

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
  grad[i] = grad[i] * p.factor;
}
