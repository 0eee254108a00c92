// Flash attention forward on subgroup matrices (f16 x f16 -> f32, 16x16x16 tensor-core fragments).
// Same contract as flash_attention_fwd.wgsl:
//   q [B,T,H,D], k and v [B,T,KVH,D], o [B,T,H,D] all f16; lse [B,H,T] f32; g = h / (H / KVH).
// A workgroup of 4 subgroups of 32 takes BR = 64 query rows of one head, 16 rows per subgroup,
// and walks the key/value rows in blocks of BC = 32. Per block: S = Q·K^T as fragments (Q's
// fragments stay in registers), stored to workgroup memory; the online softmax runs two
// invocations per query row (each the full row's max, half the row's exponentials), writing
// P in f16; P·V as fragments, four 16x16 pieces at a time staged through workgroup memory and
// added into the invocations' f32 output registers after the rescale by exp(m_old - m_new).
// D is a multiple of 16, at most 128. Rows past T are zero and never written.
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
@group(0) @binding(4) var<storage, read_write> o: array<vec4<f16>>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;

const BR = 64u;
const BC = 32u;
const PAD = 8u;
const MAXD = 128u;
const NEG = -1.0e30;

// Q (64 rows) before the loop; then K in rows 0..BC-1 and V in rows BC..2BC-1; row stride D + PAD.
var<workgroup> KV: array<f16, BR * (MAXD + PAD)>;
var<workgroup> Ps: array<f16, BR * (BC + PAD)>; // P of the block, [query row][kv row]
// Scores [query row][kv row] (the first BR * BC); then each subgroup's four 16x16 P·V pieces.
var<workgroup> S: array<f32, 4096>;
var<workgroup> rowSum: array<f32, 128>;

fn put8(s: u32, w: vec4<u32>) {
  let h0 = bitcast<vec2<f16>>(w.x);
  let h1 = bitcast<vec2<f16>>(w.y);
  let h2 = bitcast<vec2<f16>>(w.z);
  let h3 = bitcast<vec2<f16>>(w.w);
  KV[s] = h0.x; KV[s + 1u] = h0.y; KV[s + 2u] = h1.x; KV[s + 3u] = h1.y;
  KV[s + 4u] = h2.x; KV[s + 5u] = h2.y; KV[s + 6u] = h3.x; KV[s + 7u] = h3.y;
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

  for (var i = tid; i < BR * vecs; i += 128u) {
    let t = q0 + i / vecs;
    var w = vec4<u32>(0u);
    if (t < T) { w = q[((b * T + t) * H + h) * vecs + i % vecs]; }
    put8((i / vecs) * stride + (i % vecs) * 8u, w);
  }
  workgroupBarrier();
  var qf: array<subgroup_matrix_left<f16, 16, 16>, 8>;
  for (var kk = 0u; kk < D / 16u; kk++) {
    qf[kk] = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&KV, sg * 16u * stride + kk * 16u, stride);
  }
  workgroupBarrier();

  var kvEnd = T;
  if (p.causal != 0u) { kvEnd = min(q0 + BR, T); }
  let blocks = (kvEnd + BC - 1u) / BC;

  var m = NEG;
  var l = 0.0; // this invocation's half of the row sum
  var acc: array<vec4<f32>, 16>; // [fragment dn][2]: row rr, columns dn*16 + half*8 .. +8
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
      for (var kk = 0u; kk < D / 16u; kk++) {
        let kf = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&KV, n * 16u * stride + kk * 16u, stride);
        s = subgroupMatrixMultiplyAccumulate(qf[kk], kf, s);
      }
      subgroupMatrixStore<row_major>(&S, sg * 16u * BC + n * 16u, s, BC);
    }
    workgroupBarrier();

    var mx = m;
    for (var c = 0u; c < BC; c++) {
      let t = c0 + c;
      let masked = t >= T || (p.causal != 0u && t > row);
      mx = max(mx, select(S[lrow * BC + c] * p.scale, NEG, masked));
    }
    let alpha = exp(m - mx);
    var ls = 0.0;
    for (var cc = 0u; cc < BC / 2u; cc++) {
      let c = half * (BC / 2u) + cc;
      let t = c0 + c;
      let masked = t >= T || (p.causal != 0u && t > row);
      let pr = exp(select(S[lrow * BC + c] * p.scale, NEG, masked) - mx);
      ls += pr;
      Ps[lrow * (BC + PAD) + c] = f16(pr);
    }
    l = l * alpha + ls;
    m = mx;
    for (var j = 0u; j < 2u * D / 16u; j++) { acc[j] *= alpha; }
    workgroupBarrier();

    let pf0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Ps, sg * 16u * (BC + PAD), BC + PAD);
    let pf1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Ps, sg * 16u * (BC + PAD) + 16u, BC + PAD);
    // P·V in passes of four 16-column pieces: all four go to this subgroup's scratch, then one
    // barrier, then the invocations add their row's halves into their registers.
    for (var d0 = 0u; d0 < D / 16u; d0 += 4u) {
      for (var f = 0u; f < 4u; f++) {
        let dn = d0 + f;
        if (dn < D / 16u) {
          var pv = subgroup_matrix_result<f32, 16, 16>();
          let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&KV, BC * stride + dn * 16u, stride);
          pv = subgroupMatrixMultiplyAccumulate(pf0, v0, pv);
          let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&KV, (BC + 16u) * stride + dn * 16u, stride);
          pv = subgroupMatrixMultiplyAccumulate(pf1, v1, pv);
          subgroupMatrixStore<row_major>(&S, (sg * 4u + f) * 256u, pv, 16u);
        }
      }
      workgroupBarrier();
      for (var f = 0u; f < 4u; f++) {
        let dn = d0 + f;
        if (dn < D / 16u) {
          let at = (sg * 4u + f) * 256u + rr * 16u + half * 8u;
          acc[dn * 2u] += vec4<f32>(S[at], S[at + 1u], S[at + 2u], S[at + 3u]);
          acc[dn * 2u + 1u] += vec4<f32>(S[at + 4u], S[at + 5u], S[at + 6u], S[at + 7u]);
        }
      }
      workgroupBarrier();
    }
  }

  rowSum[sg * 32u + lane] = l;
  workgroupBarrier();
  let total = l + rowSum[sg * 32u + (lane ^ 1u)];
  if (row < T) {
    let inv = 1.0 / total;
    let base = (((b * T + row) * H + h) * D + half * 8u) / 4u;
    for (var dn = 0u; dn < D / 16u; dn++) {
      o[base + dn * 4u] = vec4<f16>(acc[dn * 2u] * inv);
      o[base + dn * 4u + 1u] = vec4<f16>(acc[dn * 2u + 1u] * inv);
    }
    if (half == 0u) { lse[(b * H + h) * T + row] = m + log(total); }
  }
}
