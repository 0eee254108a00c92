// Decode attention, pass 2: merges the C chunk results of each query head into its output.
//   part f32: o [H,C,D] then lse [H,C] (from decode_attention_partial.wgsl); out f16 [H,D].
//   out[h] = sum_c w_c o[h,c] / sum_c w_c with w_c = exp(lse[h,c] - max_c lse[h,c]).
// Workgroup h: 128 invocations, one per output column (D at most 128).
enable f16;

struct Params {
  H: u32,
  KVH: u32,
  C: u32,
  scale: f32,
}

override D: u32 = 128u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f16>;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let h = wg.x;
  let C = p.C;
  let lse0 = p.H * C * D + h * C;
  var mx = -3.0e38;
  for (var c = 0u; c < C; c++) { mx = max(mx, part[lse0 + c]); }
  if (tid < D) {
    var num = 0.0;
    var den = 0.0;
    for (var c = 0u; c < C; c++) {
      let w = exp(part[lse0 + c] - mx);
      num += w * part[(h * C + c) * D + tid];
      den += w;
    }
    out[h * D + tid] = f16(num / den);
  }
}
