// Tensor-core matrix product on subgroup matrices (f16 x f16 -> {{ACC}}, 16x16x16 fragments).
//   C[M,N] = alpha * A[M,K] · B[K,N] + beta * C[M,N]
// Operand layouts as in matmul_tiled.wgsl (A_TRANS, B_TRANS). The dimension that is contiguous
// in memory (K or M for A, N or K for B) must be a multiple of 8: tiles are staged 8 halves at a
// time. Other edges are ragged: rows and K beyond the matrix read as zero and are never written.
// A workgroup of 4 subgroups of 32 computes a 128x128 tile of C, each subgroup 64x64 (4x4
// fragments), over K in steps of 32 staged in workgroup memory with the contiguous dimension
// innermost, so the fragments load row-major or column-major straight from there.
enable f16;
enable chromium_experimental_subgroup_matrix;

struct Params {
  M: u32,
  N: u32,
  K: u32,
  alpha: f32,
  beta: f32,
}

override A_TRANS: bool = false;
override B_TRANS: bool = true;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>; // 8 halves per element
@group(0) @binding(2) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> c: array<{{OUT}}>;

const BM = 128u;
const BN = 128u;
const BK = 32u;
const PAD = 8u;
const TILE = 5120u; // max(128 * (32 + 8), 32 * (128 + 8)) halves

var<workgroup> As: array<f16, TILE>;
var<workgroup> Bs: array<f16, TILE>;
var<workgroup> Cs: array<{{ACC}}, 1024>; // one 16x16 fragment per subgroup for the epilogue

// Copies one [outer x inner] tile (inner contiguous in memory, rows of rowLen halves) into
// workgroup memory with row stride inner + PAD; 128 threads move 8 halves each per step.
fn stage(tid: u32, isA: bool, outer: u32, inner: u32, outer0: u32, inner0: u32, outerLen: u32, rowLen: u32) {
  let vecsPerRow = inner / 8u;
  for (var v = tid; v < outer * vecsPerRow; v += 128u) {
    let o = v / vecsPerRow;
    let i = (v % vecsPerRow) * 8u;
    var w = vec4<u32>(0u);
    if (outer0 + o < outerLen && inner0 + i < rowLen) {
      let g = ((outer0 + o) * rowLen + inner0 + i) / 8u;
      if (isA) { w = a[g]; } else { w = b[g]; }
    }
    let s = o * (inner + PAD) + i;
    let h0 = bitcast<vec2<f16>>(w.x);
    let h1 = bitcast<vec2<f16>>(w.y);
    let h2 = bitcast<vec2<f16>>(w.z);
    let h3 = bitcast<vec2<f16>>(w.w);
    if (isA) {
      As[s] = h0.x; As[s + 1u] = h0.y; As[s + 2u] = h1.x; As[s + 3u] = h1.y;
      As[s + 4u] = h2.x; As[s + 5u] = h2.y; As[s + 6u] = h3.x; As[s + 7u] = h3.y;
    } else {
      Bs[s] = h0.x; Bs[s + 1u] = h0.y; Bs[s + 2u] = h1.x; Bs[s + 3u] = h1.y;
      Bs[s + 4u] = h2.x; Bs[s + 5u] = h2.y; Bs[s + 6u] = h3.x; Bs[s + 7u] = h3.y;
    }
  }
}

@compute @workgroup_size(128)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  let sg = tid / 32u; // subgroups of 32 are consecutive invocations (the launcher checks the size)
  let lane = tid % 32u;
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;
  let sm = (sg / 2u) * 64u; // this subgroup's rows within the tile
  let sn = (sg % 2u) * 64u; // and columns

  var acc: array<subgroup_matrix_result<{{ACC}}, 16, 16>, 16>;
  for (var k0 = 0u; k0 < p.K; k0 += BK) {
    if (A_TRANS) { stage(tid, true, BK, BM, k0, m0, p.K, p.M); } else { stage(tid, true, BM, BK, m0, k0, p.M, p.K); }
    if (B_TRANS) { stage(tid, false, BN, BK, n0, k0, p.N, p.K); } else { stage(tid, false, BK, BN, k0, n0, p.K, p.N); }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk += 16u) {
      var left: array<subgroup_matrix_left<f16, 16, 16>, 4>;
      var right: array<subgroup_matrix_right<f16, 16, 16>, 4>;
      for (var i = 0u; i < 4u; i++) {
        if (A_TRANS) { // As[k][m]: column-major fragments
          left[i] = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, col_major>(&As, kk * (BM + PAD) + sm + i * 16u, BM + PAD);
        } else { // As[m][k]: row-major fragments
          left[i] = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&As, (sm + i * 16u) * (BK + PAD) + kk, BK + PAD);
        }
      }
      for (var j = 0u; j < 4u; j++) {
        if (B_TRANS) { // Bs[n][k]
          right[j] = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&Bs, (sn + j * 16u) * (BK + PAD) + kk, BK + PAD);
        } else { // Bs[k][n]
          right[j] = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&Bs, kk * (BN + PAD) + sn + j * 16u, BN + PAD);
        }
      }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
          acc[i * 4u + j] = subgroupMatrixMultiplyAccumulate(left[i], right[j], acc[i * 4u + j]);
        }
      }
    }
    workgroupBarrier();
  }

  // Epilogue: each fragment goes through this subgroup's 16x16 scratch, then every lane writes
  // 8 elements with scaling, accumulation and edge checks.
  for (var f = 0u; f < 16u; f++) {
    subgroupMatrixStore<row_major>(&Cs, sg * 256u, acc[f], 16u);
    workgroupBarrier();
    let r0 = m0 + sm + (f / 4u) * 16u;
    let c0 = n0 + sn + (f % 4u) * 16u;
    for (var e = lane; e < 256u; e += 32u) {
      let m = r0 + e / 16u;
      let n = c0 + e % 16u;
      if (m < p.M && n < p.N) {
        var v = p.alpha * f32(Cs[sg * 256u + e]);
        if (p.beta != 0.0) { v += p.beta * f32(c[m * p.N + n]); }
        c[m * p.N + n] = {{OUT}}(v);
      }
    }
    workgroupBarrier();
  }
}
