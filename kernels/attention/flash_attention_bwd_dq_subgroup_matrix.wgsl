// Flash attention backward, first pass, on subgroup matrices (f16 x f16 -> f32, 16x16x16):
// delta and dQ, same contract as flash_attention_bwd_dq.wgsl:
//   q, o, dO [B,T,H,D] f16; k, v [B,T,KVH,D] f16; lse [B,H,T] f32 -> dq [B,T,H,D] f16, delta [B,H,T] f32.
// A workgroup of 4 subgroups of 32 takes BR = 64 query rows of one head (16 per subgroup) and
// walks the key/value blocks of BC = 32 rows up to the diagonal. Q and dO fragments stay in
// registers; per block S = Q·K^T and dP = dO·V^T as fragments go to workgroup memory, two
// invocations per query row form dS = P * (dP - delta) in f16, and dQ += dS·K accumulates in
// result fragments that live across the whole loop. D is a multiple of 16, at most 128.
enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;

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
@group(0) @binding(1) var<storage, read> q: array<vec4<u32>>; // 8 halves per element
@group(0) @binding(2) var<storage, read> k: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> o: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> dO: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> lse: array<f32>;
@group(0) @binding(7) var<storage, read_write> dq: array<vec4<f16>>;
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;

const BR = 64u;
const BC = 32u;
const PAD = 8u;
const MAXD = 128u;

// Q, then dO (64 rows each) before the loop; then K in rows 0..BC-1 and V in rows BC..2BC-1.
var<workgroup> X: array<f16, BR * (MAXD + PAD)>;
var<workgroup> Sw: array<f32, BR * BC>; // scores; at the end each subgroup's 16x16 dq pieces
var<workgroup> dPw: array<f32, BR * BC>;
var<workgroup> dSh: array<f16, BR * (BC + PAD)>;
var<workgroup> part: array<f32, 128>;

fn put8(s: u32, w: vec4<u32>) {
  let h0 = bitcast<vec2<f16>>(w.x);
  let h1 = bitcast<vec2<f16>>(w.y);
  let h2 = bitcast<vec2<f16>>(w.z);
  let h3 = bitcast<vec2<f16>>(w.w);
  X[s] = h0.x; X[s + 1u] = h0.y; X[s + 2u] = h1.x; X[s + 3u] = h1.y;
  X[s + 4u] = h2.x; X[s + 5u] = h2.y; X[s + 6u] = h3.x; X[s + 7u] = h3.y;
}

fn dot8(a: vec4<u32>, b: vec4<u32>) -> f32 {
  return dot(vec2<f32>(bitcast<vec2<f16>>(a.x)), vec2<f32>(bitcast<vec2<f16>>(b.x))) +
    dot(vec2<f32>(bitcast<vec2<f16>>(a.y)), vec2<f32>(bitcast<vec2<f16>>(b.y))) +
    dot(vec2<f32>(bitcast<vec2<f16>>(a.z)), vec2<f32>(bitcast<vec2<f16>>(b.z))) +
    dot(vec2<f32>(bitcast<vec2<f16>>(a.w)), vec2<f32>(bitcast<vec2<f16>>(b.w)));
}

@compute @workgroup_size(128)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
  @builtin(subgroup_id) sg: u32, // 0..3: subgroups of 32 (the launcher checks the size)
  @builtin(subgroup_invocation_id) lane: u32,
) {
  let T = p.T;
  let H = p.H;
  let KVH = p.KVH;
  let stride = D + PAD;
  let vecs = D / 8u;
  let h = wg.y;
  let b = wg.z;
  let g = h / (H / KVH);
  let q0 = wg.x * BR;
  let rr = lane / 2u; // this invocation's query row within the subgroup's 16
  let half = lane % 2u;
  let lrow = sg * 16u + rr;
  let row = q0 + lrow;

  // Q then dO fragments into registers.
  var qf: array<subgroup_matrix_left<f16, 16, 16>, 8>;
  var gf: array<subgroup_matrix_left<f16, 16, 16>, 8>;
  for (var which = 0u; which < 2u; which++) {
    for (var i = tid; i < BR * vecs; i += 128u) {
      let t = q0 + i / vecs;
      var w = vec4<u32>(0u);
      if (t < T) {
        let at = ((b * T + t) * H + h) * vecs + i % vecs;
        if (which == 0u) { w = q[at]; } else { w = dO[at]; }
      }
      put8((i / vecs) * stride + (i % vecs) * 8u, w);
    }
    workgroupBarrier();
    for (var kk = 0u; kk < D / 16u; kk++) {
      let f = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, sg * 16u * stride + kk * 16u, stride);
      if (which == 0u) { qf[kk] = f; } else { gf[kk] = f; }
    }
    workgroupBarrier();
  }

  // delta of this row: each of its two invocations takes half the columns.
  var partial = 0.0;
  var rowLse = 0.0;
  if (row < T) {
    rowLse = lse[(b * H + h) * T + row];
    let base = ((b * T + row) * H + h) * vecs;
    for (var e = half * (vecs / 2u); e < (half + 1u) * (vecs / 2u); e++) {
      partial += dot8(dO[base + e], o[base + e]);
    }
  }
  part[sg * 32u + lane] = partial;
  workgroupBarrier();
  let rowDelta = partial + part[sg * 32u + (lane ^ 1u)];
  if (row < T && half == 0u) { delta[(b * H + h) * T + row] = rowDelta; }

  var kvEnd = T;
  if (p.causal != 0u) { kvEnd = min(q0 + BR, T); }
  let blocks = (kvEnd + BC - 1u) / BC;

  var acc: array<subgroup_matrix_result<f32, 16, 16>, 8>;
  for (var jb = 0u; jb < blocks; jb++) {
    let c0 = jb * BC;
    for (var i = tid; i < 2u * BC * vecs; i += 128u) {
      let r = i / vecs;
      let t = c0 + r % BC;
      var w = vec4<u32>(0u);
      if (t < T) {
        let at = ((b * T + t) * KVH + g) * vecs + i % vecs;
        if (r < BC) { w = k[at]; } else { w = v[at]; }
      }
      put8(r * stride + (i % vecs) * 8u, w);
    }
    workgroupBarrier();

    for (var n = 0u; n < BC / 16u; n++) {
      var s = subgroup_matrix_result<f32, 16, 16>();
      var dp = subgroup_matrix_result<f32, 16, 16>();
      for (var kk = 0u; kk < D / 16u; kk++) {
        let kf = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, n * 16u * stride + kk * 16u, stride);
        s = subgroupMatrixMultiplyAccumulate(qf[kk], kf, s);
        let vf = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, (BC + n * 16u) * stride + kk * 16u, stride);
        dp = subgroupMatrixMultiplyAccumulate(gf[kk], vf, dp);
      }
      subgroupMatrixStore<row_major>(&Sw, sg * 16u * BC + n * 16u, s, BC);
      subgroupMatrixStore<row_major>(&dPw, sg * 16u * BC + n * 16u, dp, BC);
    }
    workgroupBarrier();

    for (var cc = 0u; cc < BC / 2u; cc++) {
      let c = half * (BC / 2u) + cc;
      let t = c0 + c;
      let masked = row >= T || t >= T || (p.causal != 0u && t > row);
      let pr = select(exp(Sw[lrow * BC + c] * p.scale - rowLse), 0.0, masked);
      dSh[lrow * (BC + PAD) + c] = f16(pr * (dPw[lrow * BC + c] - rowDelta));
    }
    workgroupBarrier();

    for (var kk = 0u; kk < BC / 16u; kk++) {
      let sf = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&dSh, sg * 16u * (BC + PAD) + kk * 16u, BC + PAD);
      for (var dn = 0u; dn < D / 16u; dn++) {
        let kf = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&X, kk * 16u * stride + dn * 16u, stride);
        acc[dn] = subgroupMatrixMultiplyAccumulate(sf, kf, acc[dn]);
      }
    }
    workgroupBarrier();
  }

  // Each 16x16 piece of dq goes through this subgroup's part of Sw, then out scaled, as f16.
  for (var dn = 0u; dn < D / 16u; dn++) {
    subgroupMatrixStore<row_major>(&Sw, sg * 16u * BC, acc[dn], 16u);
    workgroupBarrier();
    if (row < T) {
      let at = sg * 16u * BC + rr * 16u + half * 8u;
      let out = (((b * T + row) * H + h) * D + dn * 16u + half * 8u) / 4u;
      dq[out] = vec4<f16>(vec4<f32>(Sw[at], Sw[at + 1u], Sw[at + 2u], Sw[at + 3u]) * p.scale);
      dq[out + 1u] = vec4<f16>(vec4<f32>(Sw[at + 4u], Sw[at + 5u], Sw[at + 6u], Sw[at + 7u]) * p.scale);
    }
    workgroupBarrier();
  }
}
