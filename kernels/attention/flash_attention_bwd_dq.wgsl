// Portable flash attention backward, first pass: delta and dQ (no atomics, deterministic).
//   q, o, dO [B,T,H,D] f16; k, v [B,T,KVH,D] f16; lse [B,H,T] f32 from the forward.
//   delta[b,h,t] = sum_d dO[t,h,d] * o[t,h,d] (f32, [B,H,T]), read again by the dK/dV pass;
//   P = exp(scale * q·k^T - lse), dS = P * (dO·v^T - delta), dq[t,h] = scale * sum_j dS[t,j] k[j,g].
// A workgroup of 128 invocations takes BR = 16 query rows of one head and walks the key/value
// blocks of BC = 16 rows up to the diagonal, recomputing P; 8 invocations share a query row,
// each owning D/32 groups of 4 columns of dq. D is a multiple of 8, at most 128.
enable f16;

struct Params {
  B: u32,
  T: u32,
  H: u32,
  KVH: u32,
  causal: u32,
  scale: f32,
}

override D: u32 = 128u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read> dO: array<vec4<f16>>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;
@group(0) @binding(6) var<storage, read_write> delta: array<f32>;
@group(0) @binding(7) var<storage, read> o: array<vec4<f16>>;
@group(0) @binding(8) var<storage, read_write> dq: array<vec4<f16>>;

const BR = 16u;
const BC = 16u;
const LANES = 8u;
const MAXD4 = 32u;
const GROUPS = 4u;

var<workgroup> Qs: array<vec4<f16>, BR * MAXD4>;
var<workgroup> dOs: array<vec4<f16>, BR * MAXD4>;
var<workgroup> Ks: array<vec4<f16>, BC * MAXD4>;
var<workgroup> Vs: array<vec4<f16>, BC * MAXD4>;
var<workgroup> dS: array<f32, BR * BC>;
var<workgroup> part: array<f32, BR * LANES>; // partial sums of delta

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let T = p.T;
  let H = p.H;
  let KVH = p.KVH;
  let D4 = D / 4u;
  let h = wg.y;
  let b = wg.z;
  let g = h / (H / KVH);
  let q0 = wg.x * BR;
  let r = tid / LANES;
  let lane = tid % LANES;
  let row = q0 + r;

  for (var i = tid; i < BR * D4; i += 128u) {
    let t = q0 + i / D4;
    var qx = vec4<f16>(0.0h);
    var gx = vec4<f16>(0.0h);
    if (t < T) {
      let at = ((b * T + t) * H + h) * D4 + i % D4;
      qx = q[at];
      gx = dO[at];
    }
    Qs[(i / D4) * MAXD4 + i % D4] = qx;
    dOs[(i / D4) * MAXD4 + i % D4] = gx;
  }

  // delta of this row: 8 partial dot products, summed through workgroup memory.
  var rowLse = 0.0;
  var partial = 0.0;
  if (row < T) {
    rowLse = lse[(b * H + h) * T + row];
    for (var cg = lane; cg < D4; cg += LANES) {
      let at = ((b * T + row) * H + h) * D4 + cg;
      partial += dot(vec4<f32>(dO[at]), vec4<f32>(o[at]));
    }
  }
  part[tid] = partial;
  workgroupBarrier();
  var rowDelta = 0.0;
  for (var i = 0u; i < LANES; i++) { rowDelta += part[r * LANES + i]; }
  if (row < T && lane == 0u) { delta[(b * H + h) * T + row] = rowDelta; }

  var kvEnd = T;
  if (p.causal != 0u) { kvEnd = min(q0 + BR, T); }
  let blocks = (kvEnd + BC - 1u) / BC;

  var acc: array<vec4<f32>, GROUPS>;
  for (var jb = 0u; jb < blocks; jb++) {
    let c0 = jb * BC;
    for (var i = tid; i < BC * D4; i += 128u) {
      let t = c0 + i / D4;
      var kx = vec4<f16>(0.0h);
      var vx = vec4<f16>(0.0h);
      if (t < T) {
        let at = ((b * T + t) * KVH + g) * D4 + i % D4;
        kx = k[at];
        vx = v[at];
      }
      Ks[(i / D4) * MAXD4 + i % D4] = kx;
      Vs[(i / D4) * MAXD4 + i % D4] = vx;
    }
    workgroupBarrier();
    for (var c = lane; c < BC; c += LANES) {
      var s = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < D4; d++) {
        s += dot(vec4<f32>(Qs[r * MAXD4 + d]), vec4<f32>(Ks[c * MAXD4 + d]));
        dp += dot(vec4<f32>(dOs[r * MAXD4 + d]), vec4<f32>(Vs[c * MAXD4 + d]));
      }
      let t = c0 + c;
      let masked = row >= T || t >= T || (p.causal != 0u && t > row);
      let pr = select(exp(s * p.scale - rowLse), 0.0, masked);
      dS[r * BC + c] = pr * (dp - rowDelta);
    }
    workgroupBarrier();
    for (var c = 0u; c < BC; c++) {
      let ds = dS[r * BC + c];
      for (var j = 0u; j < GROUPS; j++) {
        let cg = lane + j * LANES;
        if (cg < D4) { acc[j] = fma(vec4<f32>(ds), vec4<f32>(Ks[c * MAXD4 + cg]), acc[j]); }
      }
    }
    workgroupBarrier();
  }

  if (row < T) {
    for (var j = 0u; j < GROUPS; j++) {
      let cg = lane + j * LANES;
      if (cg < D4) { dq[((b * T + row) * H + h) * D4 + cg] = vec4<f16>(acc[j] * p.scale); }
    }
  }
}
