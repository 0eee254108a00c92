// Portable tiled matrix product (no subgroups, no subgroup matrices).
//   C[M,N] = alpha * A[M,K] · B[K,N] + beta * C[M,N]
// with f16 inputs, {{ACC}} accumulation and {{OUT}} output. Operand layouts in memory:
//   A(m,k) = a[m*K + k]  (A_TRANS false)  or  a[k*M + m]  (A_TRANS true)
//   B(k,n) = b[k*N + n]  (B_TRANS false)  or  b[n*K + k]  (B_TRANS true)
// A workgroup of 16x16 threads computes a 64x64 tile of C; each thread a 4x4 block.
// Rows, columns and K beyond the matrix edges are read as zero and never written.
// Split K: workgroup z reduces K elements [z * KS, min(K, (z + 1) * KS)) (KS a multiple of 16;
// KS >= K: one split) and writes its C at element z * M * N of c (the launcher's f32 partials).
// C's rows are LDC elements apart (LDC = N but for a slice of a wider C's columns).
// Low-rank term (R > 0, one split, A not transposed): C = alpha * (A·B + s * U·F) + beta * C with U
// f16 [M, R] and F f16 [N, R] (B_TRANS) or [R, N] with rows LDF apart, run as more K steps on the
// same accumulators, F's elements scaled by s (in f32, then rounded to f16) as staged.
enable f16;

struct Params {
  M: u32,
  N: u32,
  K: u32,
  alpha: f32,
  beta: f32,
  KS: u32,
  LDC: u32,
  R: u32,
  s: f32,
  LDF: u32,
}

override A_TRANS: bool = false;
override B_TRANS: bool = true;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f16>;
@group(0) @binding(2) var<storage, read> b: array<f16>;
@group(0) @binding(3) var<storage, read_write> c: array<{{OUT}}>;
@group(0) @binding(4) var<storage, read> u: array<f16>; // low-rank U (R > 0)
@group(0) @binding(5) var<storage, read> f: array<f16>; // low-rank F (R > 0)

const BM = 64u;
const BN = 64u;
const BK = 16u;
const TM = 4u;
const TN = 4u;

var<workgroup> As: array<f16, BK * BM>; // [k][m]
var<workgroup> Bs: array<f16, BK * BN>; // [k][n]

fn loadA(m: u32, k: u32, ke: u32) -> f16 {
  if (m >= p.M || k >= ke) { return 0.0h; }
  if (A_TRANS) { return a[k * p.M + m]; }
  return a[m * p.K + k];
}

fn loadB(k: u32, n: u32, ke: u32) -> f16 {
  if (k >= ke || n >= p.N) { return 0.0h; }
  if (B_TRANS) { return b[n * p.K + k]; }
  return b[k * p.N + n];
}

// Element (m, j) of U and (j, n) of F times s, for the low-rank steps.
fn loadU(m: u32, j: u32) -> f16 {
  if (m >= p.M || j >= p.R) { return 0.0h; }
  return u[m * p.R + j];
}

fn loadF(j: u32, n: u32) -> f16 {
  if (j >= p.R || n >= p.N) { return 0.0h; }
  if (B_TRANS) { return f16(f32(f[n * p.R + j]) * p.s); }
  return f16(f32(f[j * p.LDF + n]) * p.s);
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let tid = lid.y * 16u + lid.x;
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;
  var acc: array<vec4<{{ACC}}>, TM>; // acc[i][j]: row i, column j of this thread's 4x4 block
  let kb = wg.z * p.KS;
  let ke = min(p.K, kb + p.KS);
  // K steps [kb, ke) run the product; with a low-rank term, [kr, kEnd) run it.
  let kr = ((ke + BK - 1u) / BK) * BK;
  let kEnd = select(ke, kr + ((p.R + BK - 1u) / BK) * BK, p.R > 0u);
  for (var k0 = kb; k0 < kEnd; k0 += BK) {
    // 256 threads stage a 64x16 tile of A and a 16x64 tile of B, walking the contiguous dimension.
    for (var i = 0u; i < 4u; i++) {
      let idx = tid + i * 256u;
      if (k0 >= kr) {
        let m = idx / BK; let k = idx % BK;
        As[k * BM + m] = loadU(m0 + m, k0 - kr + k);
        let j = idx / BN; let n = idx % BN;
        Bs[j * BN + n] = loadF(k0 - kr + j, n0 + n);
        continue;
      }
      if (A_TRANS) {
        let k = idx / BM; let m = idx % BM;
        As[k * BM + m] = loadA(m0 + m, k0 + k, ke);
      } else {
        let m = idx / BK; let k = idx % BK;
        As[k * BM + m] = loadA(m0 + m, k0 + k, ke);
      }
      if (B_TRANS) {
        let n = idx / BK; let k = idx % BK;
        Bs[k * BN + n] = loadB(k0 + k, n0 + n, ke);
      } else {
        let k = idx / BN; let n = idx % BN;
        Bs[k * BN + n] = loadB(k0 + k, n0 + n, ke);
      }
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k++) {
      let av = vec4<{{ACC}}>(vec4<f16>(As[k * BM + lid.y * TM], As[k * BM + lid.y * TM + 1u],
                                       As[k * BM + lid.y * TM + 2u], As[k * BM + lid.y * TM + 3u]));
      let bv = vec4<{{ACC}}>(vec4<f16>(Bs[k * BN + lid.x * TN], Bs[k * BN + lid.x * TN + 1u],
                                       Bs[k * BN + lid.x * TN + 2u], Bs[k * BN + lid.x * TN + 3u]));
      acc[0] = fma(vec4<{{ACC}}>(av.x), bv, acc[0]);
      acc[1] = fma(vec4<{{ACC}}>(av.y), bv, acc[1]);
      acc[2] = fma(vec4<{{ACC}}>(av.z), bv, acc[2]);
      acc[3] = fma(vec4<{{ACC}}>(av.w), bv, acc[3]);
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < TM; i++) {
    let m = m0 + lid.y * TM + i;
    if (m >= p.M) { continue; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid.x * TN + j;
      if (n >= p.N) { continue; }
      var v = p.alpha * f32(acc[i][j]);
      let o = wg.z * p.M * p.N + m * p.LDC + n;
      if (p.beta != 0.0) { v += p.beta * f32(c[o]); }
      c[o] = {{OUT}}(v);
    }
  }
}
