// Dropout of the LoRA input: xd[e] = keep(e) ? f16(x[e] * scale) : 0, scale = 1 / (1 - p).
// keep(e) = pcg(e + pcg(seed)) >= threshold (threshold = p * 2^32): a counter-based hash of the
// element index, so the backward regenerates the same mask and nothing is stored.
enable f16;

struct Params {
  n: u32,
  groupsX: u32,
  seed: u32,
  threshold: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f16>;
@group(0) @binding(2) var<storage, read_write> xd: array<f16>;

fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let i = (wg.y * p.groupsX + wg.x) * 256u + lid.x;
  if (i >= p.n) { return; }
  let keep = pcg(i + pcg(p.seed)) >= p.threshold;
  xd[i] = select(0.0h, f16(f32(x[i]) * p.scale), keep);
}
