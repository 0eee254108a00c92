// Portable flash attention forward (no subgroups, no subgroup matrices), f32 softmax and sums.
//   q [B,T,H,D], k and v [B,T,KVH,D], o [B,T,H,D] all f16; lse [B,H,T] f32.
//   o[t,h] = sum_j softmax_j(scale * q[t,h]·k[j,g]) v[j,g], g = h / (H / KVH), j <= t when causal;
//   lse[h,t] = log sum_j exp(scale * q[t,h]·k[j,g]) (natural log), kept for the backward.
// A workgroup of 128 invocations takes BR = 16 query rows of one head and walks the key/value
// rows in blocks of BC = 16 with an online softmax; 8 invocations share a query row, each owning
// D/32 groups of 4 output columns. D is a multiple of 8, at most 128. Rows past T are zero.
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
@group(0) @binding(4) var<storage, read_write> o: array<vec4<f16>>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;

const BR = 16u;
const BC = 16u;
const LANES = 8u; // invocations per query row
const MAXD4 = 32u; // D / 4 at most
const GROUPS = 4u; // MAXD4 / LANES: column groups per invocation
const NEG = -1.0e30; // score of a masked pair; exp(NEG - m) is 0 for any real m

var<workgroup> Qs: array<vec4<f16>, BR * MAXD4>; // [row][D/4]
var<workgroup> Ks: array<vec4<f16>, BC * MAXD4>;
var<workgroup> Vs: array<vec4<f16>, BC * MAXD4>;
var<workgroup> S: array<f32, BR * BC>; // scaled, masked scores of the block

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
    var x = vec4<f16>(0.0h);
    if (t < T) { x = q[((b * T + t) * H + h) * D4 + i % D4]; }
    Qs[(i / D4) * MAXD4 + i % D4] = x;
  }

  var kvEnd = T;
  if (p.causal != 0u) { kvEnd = min(q0 + BR, T); }
  let blocks = (kvEnd + BC - 1u) / BC;

  var m = NEG;
  var l = 0.0;
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
      for (var d = 0u; d < D4; d++) {
        s += dot(vec4<f32>(Qs[r * MAXD4 + d]), vec4<f32>(Ks[c * MAXD4 + d]));
      }
      let t = c0 + c;
      let masked = t >= T || (p.causal != 0u && t > row);
      S[r * BC + c] = select(s * p.scale, NEG, masked);
    }
    workgroupBarrier();
    var mx = m;
    for (var c = 0u; c < BC; c++) { mx = max(mx, S[r * BC + c]); }
    let alpha = exp(m - mx);
    l *= alpha;
    for (var j = 0u; j < GROUPS; j++) { acc[j] *= alpha; }
    for (var c = 0u; c < BC; c++) {
      let pc = exp(S[r * BC + c] - mx);
      l += pc;
      for (var j = 0u; j < GROUPS; j++) {
        let cg = lane + j * LANES;
        if (cg < D4) { acc[j] = fma(vec4<f32>(pc), vec4<f32>(Vs[c * MAXD4 + cg]), acc[j]); }
      }
    }
    m = mx;
    workgroupBarrier();
  }

  if (row < T) {
    let inv = 1.0 / l;
    for (var j = 0u; j < GROUPS; j++) {
      let cg = lane + j * LANES;
      if (cg < D4) { o[((b * T + row) * H + h) * D4 + cg] = vec4<f16>(acc[j] * inv); }
    }
    if (lane == 0u) { lse[(b * H + h) * T + row] = m + log(l); }
  }
}
