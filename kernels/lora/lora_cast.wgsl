// f16 copy of an f32 tensor (the LoRA factors A [R, in] and B [out, R] are f32 masters; every
// product runs on their f16 copies). One invocation per element; workgroups wg.y * groupsX + wg.x.
enable f16;

struct Params {
  n: u32,
  groupsX: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f16>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let i = (wg.y * p.groupsX + wg.x) * 256u + lid.x;
  if (i < p.n) { dst[i] = f16(src[i]); }
}
