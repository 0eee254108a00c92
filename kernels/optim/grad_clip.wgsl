// Gradient clipping by the global norm, read from the GPU (no round trip to the CPU):
// grad *= min(1, max_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_.
//   stats: { norm f32, nonfinite u32 } from grad_stats_final.wgsl
//   grad[N] f32, read-write. Grid: workgroups in x then y, 256 elements each.
struct Params {
  n: u32,
  max_norm: f32,
}

struct Stats {
  norm: f32,
  nonfinite: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> stats: Stats;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;

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
  let factor = min(1.0, p.max_norm / (stats.norm + 1e-6));
  grad[i] = grad[i] * factor;
}
