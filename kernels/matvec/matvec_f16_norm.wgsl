// The folded RMSNorm of the f16 matvec kernels (entry `normed`), appended by the launcher to
// matvec_f16.wgsl and matvec_f16_subgroup.wgsl, whose Params (eps), x, red and WG it uses:
// x is a row of the residual stream and the product reads its RMSNorm instead,
//   h = f16(f16(x * r) * nw) with r = inverseSqrt(mean(x^2) + eps)
// (kernels/norm's forward, with its order of the f32 sums), which every workgroup computes into
// workgroup memory and workgroup 0 also writes to hout (f16 [IN]); IN <= 4 * HV.

@group(0) @binding(6) var<storage, read> nw: array<vec4<f16>>; // the norm's weight [IN]
@group(0) @binding(7) var<storage, read_write> hout: array<vec4<f16>>; // h [IN]

override NORMED: bool = false;
// vec4s of h held in workgroup memory (IN / 4 when NORMED).
override HV: u32 = 1u;

var<workgroup> hs: array<vec2<u32>, HV>; // h, 4 halves per element

// Four halves of x (vec4 j of the row), as f32.
fn x4(j: u32) -> vec4<f32> {
  let wv = x[j / 2u];
  let pair = select(wv.xy, wv.zw, (j & 1u) == 1u);
  return vec4<f32>(unpack2x16float(pair.x), unpack2x16float(pair.y));
}

// NORMED: h of the whole row into hs (and hout from workgroup 0). Every invocation calls it.
fn normed_input(li: u32, first: bool) {
  let n4 = p.IN / 4u;
  var ss = 0.0;
  for (var j = li; j < n4; j += WG) {
    let v = x4(j);
    ss += dot(v, v);
  }
  red[li] = ss;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (li < s) { red[li] = red[li] + red[li + s]; }
    workgroupBarrier();
  }
  let r = inverseSqrt(red[0] / f32(p.IN) + p.eps);
  for (var j = li; j < n4; j += WG) {
    let h = vec4<f16>(x4(j) * r) * nw[j];
    hs[j] = vec2<u32>(pack2x16float(vec2<f32>(h.xy)), pack2x16float(vec2<f32>(h.zw)));
    if (first) { hout[j] = h; }
  }
  workgroupBarrier();
}

// Word j (8 halves) of the product's input: x, or h when NORMED.
fn in8(j: u32) -> vec4<u32> {
  if (NORMED) { return vec4<u32>(hs[2u * j], hs[2u * j + 1u]); }
  return x[j];
}
