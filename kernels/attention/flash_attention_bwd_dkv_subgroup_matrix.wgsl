// Flash attention backward, second pass, on subgroup matrices (f16 x f16 -> f32, 16x16x16):
// dK and dV, same contract as flash_attention_bwd_dkv.wgsl:
//   q, dO [B,T,H,D] f16; k, v [B,T,KVH,D] f16; lse, delta [B,H,T] f32 -> dk, dv [B,T,KVH,D] f16,
//   summed over the H/KVH query heads of each kv head.
// A workgroup of 4 subgroups of 32 takes BC = 64 key/value rows of one kv head (16 per subgroup)
// and, for every query head of the group, walks the query blocks of BR = 32 rows from the
// diagonal on. K and V fragments stay in registers; per block S^T = K·Q^T and dP^T = V·dO^T as
// fragments go to workgroup memory, two invocations per kv row form P^T and
// dS^T = P^T * (dP^T - delta) in f16, and dV += P^T·dO, dK += dS^T·Q accumulate in result
// fragments that live across the whole walk. D is a multiple of 16, at most 128.
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
@group(0) @binding(4) var<storage, read> dO: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;
@group(0) @binding(6) var<storage, read> delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> dk: array<vec4<f16>>;
@group(0) @binding(8) var<storage, read_write> dv: array<vec4<f16>>;

const BC = 64u;
const BR = 32u;
const PAD = 8u;
const MAXD = 128u;

// K, then V (64 rows each) before the walk; then Q in rows 0..BR-1 and dO in rows BR..2BR-1.
var<workgroup> X: array<f16, BC * (MAXD + PAD)>;
var<workgroup> St: array<f32, BC * BR>; // [kv row][query row]; at the end 16x16 output pieces
var<workgroup> dPt: array<f32, BC * BR>;
var<workgroup> Pt: array<f16, BC * (BR + PAD)>;
var<workgroup> dSt: array<f16, BC * (BR + PAD)>;
var<workgroup> lseS: array<f32, BR>;
var<workgroup> deltaS: array<f32, BR>;

fn put8(s: u32, w: vec4<u32>) {
  let h0 = bitcast<vec2<f16>>(w.x);
  let h1 = bitcast<vec2<f16>>(w.y);
  let h2 = bitcast<vec2<f16>>(w.z);
  let h3 = bitcast<vec2<f16>>(w.w);
  X[s] = h0.x; X[s + 1u] = h0.y; X[s + 2u] = h1.x; X[s + 3u] = h1.y;
  X[s + 4u] = h2.x; X[s + 5u] = h2.y; X[s + 6u] = h3.x; X[s + 7u] = h3.y;
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
  let group = H / KVH;
  let stride = D + PAD;
  let vecs = D / 8u;
  let g = wg.y;
  let b = wg.z;
  let c0 = wg.x * BC;
  let rr = lane / 2u; // this invocation's kv row within the subgroup's 16
  let half = lane % 2u;
  let lrow = sg * 16u + rr;
  let kvRow = c0 + lrow;

  var kf: array<subgroup_matrix_left<f16, 16, 16>, 8>;
  var vf: array<subgroup_matrix_left<f16, 16, 16>, 8>;
  for (var which = 0u; which < 2u; which++) {
    for (var i = tid; i < BC * vecs; i += 128u) {
      let t = c0 + i / vecs;
      var w = vec4<u32>(0u);
      if (t < T) {
        let at = ((b * T + t) * KVH + g) * vecs + i % vecs;
        if (which == 0u) { w = k[at]; } else { w = v[at]; }
      }
      put8((i / vecs) * stride + (i % vecs) * 8u, w);
    }
    workgroupBarrier();
    for (var kk = 0u; kk < D / 16u; kk++) {
      let f = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, sg * 16u * stride + kk * 16u, stride);
      if (which == 0u) { kf[kk] = f; } else { vf[kk] = f; }
    }
    workgroupBarrier();
  }

  var qbStart = 0u;
  if (p.causal != 0u) { qbStart = c0 / BR; }
  let qbEnd = (T + BR - 1u) / BR;

  var accK: array<subgroup_matrix_result<f32, 16, 16>, 8>;
  var accV: array<subgroup_matrix_result<f32, 16, 16>, 8>;
  for (var hh = 0u; hh < group; hh++) {
    let h = g * group + hh;
    for (var qb = qbStart; qb < qbEnd; qb++) {
      let q0 = qb * BR;
      for (var i = tid; i < 2u * BR * vecs; i += 128u) {
        let r = i / vecs;
        let t = q0 + r % BR;
        var w = vec4<u32>(0u);
        if (t < T) {
          let at = ((b * T + t) * H + h) * vecs + i % vecs;
          if (r < BR) { w = q[at]; } else { w = dO[at]; }
        }
        put8(r * stride + (i % vecs) * 8u, w);
      }
      if (tid < BR) {
        let t = q0 + tid;
        var ls = 0.0;
        var dl = 0.0;
        if (t < T) {
          ls = lse[(b * H + h) * T + t];
          dl = delta[(b * H + h) * T + t];
        }
        lseS[tid] = ls;
        deltaS[tid] = dl;
      }
      workgroupBarrier();

      for (var n = 0u; n < BR / 16u; n++) {
        var s = subgroup_matrix_result<f32, 16, 16>();
        var dp = subgroup_matrix_result<f32, 16, 16>();
        for (var kk = 0u; kk < D / 16u; kk++) {
          let qt = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, n * 16u * stride + kk * 16u, stride);
          s = subgroupMatrixMultiplyAccumulate(kf[kk], qt, s);
          let gt = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, (BR + n * 16u) * stride + kk * 16u, stride);
          dp = subgroupMatrixMultiplyAccumulate(vf[kk], gt, dp);
        }
        subgroupMatrixStore<row_major>(&St, sg * 16u * BR + n * 16u, s, BR);
        subgroupMatrixStore<row_major>(&dPt, sg * 16u * BR + n * 16u, dp, BR);
      }
      workgroupBarrier();

      for (var cc = 0u; cc < BR / 2u; cc++) {
        let c = half * (BR / 2u) + cc;
        let row = q0 + c;
        let masked = row >= T || kvRow >= T || (p.causal != 0u && kvRow > row);
        let pr = select(exp(St[lrow * BR + c] * p.scale - lseS[c]), 0.0, masked);
        Pt[lrow * (BR + PAD) + c] = f16(pr);
        dSt[lrow * (BR + PAD) + c] = f16(pr * (dPt[lrow * BR + c] - deltaS[c]));
      }
      workgroupBarrier();

      for (var kk = 0u; kk < BR / 16u; kk++) {
        let pf = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Pt, sg * 16u * (BR + PAD) + kk * 16u, BR + PAD);
        let sf = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&dSt, sg * 16u * (BR + PAD) + kk * 16u, BR + PAD);
        for (var dn = 0u; dn < D / 16u; dn++) {
          let gfr = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&X, (BR + kk * 16u) * stride + dn * 16u, stride);
          accV[dn] = subgroupMatrixMultiplyAccumulate(pf, gfr, accV[dn]);
          let qfr = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&X, kk * 16u * stride + dn * 16u, stride);
          accK[dn] = subgroupMatrixMultiplyAccumulate(sf, qfr, accK[dn]);
        }
      }
      workgroupBarrier();
    }
  }

  // Each 16x16 piece goes through this subgroup's part of St, then out as f16 (dk scaled).
  for (var which = 0u; which < 2u; which++) {
    for (var dn = 0u; dn < D / 16u; dn++) {
      if (which == 0u) {
        subgroupMatrixStore<row_major>(&St, sg * 16u * BR, accK[dn], 16u);
      } else {
        subgroupMatrixStore<row_major>(&St, sg * 16u * BR, accV[dn], 16u);
      }
      workgroupBarrier();
      if (kvRow < T) {
        let at = sg * 16u * BR + rr * 16u + half * 8u;
        let x0 = vec4<f32>(St[at], St[at + 1u], St[at + 2u], St[at + 3u]);
        let x1 = vec4<f32>(St[at + 4u], St[at + 5u], St[at + 6u], St[at + 7u]);
        let out = (((b * T + kvRow) * KVH + g) * D + dn * 16u + half * 8u) / 4u;
        if (which == 0u) {
          dk[out] = vec4<f16>(x0 * p.scale);
          dk[out + 1u] = vec4<f16>(x1 * p.scale);
        } else {
          dv[out] = vec4<f16>(x0);
          dv[out + 1u] = vec4<f16>(x1);
        }
      }
      workgroupBarrier();
    }
  }
}
