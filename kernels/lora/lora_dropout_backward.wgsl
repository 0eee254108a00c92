// Backward of the LoRA input dropout, accumulated into the input gradient:
//   dx[e] += keep(e) ? g[e] * scale : 0
// with the same keep(e) as lora_dropout.wgsl (regenerated from the seed), g = dU · A (f32).
enable f16;

struct Params {
  n: u32,
  groupsX: u32,
  seed: u32,
  threshold: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<{{OUT}}>;

fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let i = (wg.y * p.groupsX + wg.x) * 256u + lid.x;
  if (i >= p.n) { return; }
  if (pcg(i + pcg(p.seed)) >= p.threshold) {
    dx[i] = {{OUT}}(f32(dx[i]) + g[i] * p.scale);
  }
}
