// A plain copy, the memory-bandwidth reference of the benchmarks: dst[i] = src[i] over n 16-byte
// words, eight per invocation (words base + k * 256, k < 8, so each load instruction of a
// workgroup covers 4 KB contiguous), all eight loaded before the first store.
@group(0) @binding(0) var<uniform> p: vec4<u32>; // n, gx
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

const WG = 256u;
const PER = 8u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let base = (wg.y * p.y + wg.x) * WG * PER + li;
  var v: array<vec4<u32>, PER>;
  for (var k = 0u; k < PER; k++) { v[k] = src[min(base + k * WG, p.x - 1u)]; }
  for (var k = 0u; k < PER; k++) {
    let i = base + k * WG;
    if (i < p.x) { dst[i] = v[k]; }
  }
}
