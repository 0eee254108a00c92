// NF4 double quantization, pass 2: one level of the fixed-order f32 sum of the block absmax values.
// Group g of 256 values is summed by a pairwise tree (s[t] += s[t + h], h = 128, 64, .., 1) into
// dst[g]; the launcher repeats the level until one value is left (nf4TreeSum in nf4_ref.ts).

struct Params {
  L: u32,
  groupsX: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>; // [L]
@group(0) @binding(2) var<storage, read_write> dst: array<f32>; // [ceil(L/256)]

var<workgroup> s: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let g = wg.y * p.groupsX + wg.x;
  let i = g * 256u + lid.x;
  var x = 0.0;
  if (i < p.L) { x = src[i]; }
  s[lid.x] = x;
  workgroupBarrier();
  for (var h = 128u; h > 0u; h >>= 1u) {
    if (lid.x < h) { s[lid.x] = s[lid.x] + s[lid.x + h]; }
    workgroupBarrier();
  }
  if (lid.x == 0u && g * 256u < p.L) { dst[g] = s[0]; }
}
