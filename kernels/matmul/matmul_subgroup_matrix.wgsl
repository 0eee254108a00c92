// Tensor-core matrix product on subgroup matrices (f16 x f16 -> {{ACC}}, 16x16x16 fragments).
//   C[M,N] = alpha * A[M,K] · B[K,N] + beta * C[M,N]
// Operand layouts as in matmul_tiled.wgsl (A_TRANS, B_TRANS). The dimension that is contiguous
// in memory (K or M for A, N or K for B) must be a multiple of 8: tiles are staged 8 halves at a
// time. Other edges are ragged: rows and K beyond the matrix read as zero and are never written.
// A workgroup of 4 subgroups of 32 computes a 128x128 tile of C, each subgroup 64x64 (4x4
// fragments), over K in steps of 32 staged in workgroup memory with the contiguous dimension
// innermost, so the fragments load row-major or column-major straight from there. The tiles of
// the next K step are read from storage into registers while the current step's products run.
// Split K: workgroup z reduces K elements [z * KS, min(K, (z + 1) * KS)) (KS a multiple of 32;
// KS >= K: one split) and writes its C at element z * M * N of c (the launcher's f32 partials).
// C's rows are LDC elements apart (LDC = N but for a slice of a wider C's columns).
// Low-rank term (LOW_RANK, one split, A not transposed, R > 0): C = alpha * (A·B + s * U·F) + beta * C with U
// f16 [M, R] and F f16 [N, R] (B_TRANS) or [R, N] with rows LDF apart, run as ceil(R / 32) more K
// steps on the same accumulators, before the product's own (their loads then overlap the first
// products instead of adding a step whose loads nothing hides; H100, 4096^3: 2-4% of the product
// instead of 5-9% at the end), F's tiles scaled by s (in f32, then rounded to f16) as staged.
enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;

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
// The low-rank term's K steps (a pipeline of their own, so that plain products keep the code and
// registers of the kernel without them).
override LOW_RANK: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>; // 8 halves per element
@group(0) @binding(2) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> c: array<{{OUT}}>;
@group(0) @binding(4) var<storage, read> u: array<vec4<u32>>; // low-rank U (R > 0)
@group(0) @binding(5) var<storage, read> f: array<vec4<u32>>; // low-rank F (R > 0)

const BM = 128u;
const BN = 128u;
const BK = 32u;
const PAD = 8u;
const TILE = 5120u; // max(128 * (32 + 8), 32 * (128 + 8)) halves

var<workgroup> As: array<f16, TILE>;
var<workgroup> Bs: array<f16, TILE>;
var<workgroup> Cs: array<{{ACC}}, 1024>; // one 16x16 fragment per subgroup for the epilogue

// Staging of one K step: A is a [BM x BK] tile ([BK x BM] when A_TRANS), B a [BK x BN] tile
// ([BN x BK] when B_TRANS), each 512 vectors of 8 halves, 4 per invocation. `fetch` reads vector
// `v` of a tile from storage into registers (zero beyond the matrix), `put` writes it to
// workgroup memory with row stride inner + PAD, contiguous dimension innermost.
const VECS = 4u; // vectors of each tile per invocation: 128 * 32 / 8 / 128

// Row and first column of vector v in a staged tile whose rows are `inner` halves (rows of BK
// halves: slot32, appended by the launcher, which spreads each 16-byte store over the banks).
fn slot(v: u32, inner: u32) -> vec2<u32> {
  if (inner == BK) { return slot32(v); }
  return vec2<u32>(v / (inner / 8u), (v % (inner / 8u)) * 8u);
}

// Elements of K that the product's own steps cover (the low-rank steps come first, L of them).
fn mainSteps() -> u32 {
  return ((p.K + BK - 1u) / BK) * BK;
}

// Eight f16 of F times s.
fn scaled(w: vec4<u32>) -> vec4<u32> {
  return vec4<u32>(
    bitcast<u32>(vec2<f16>(unpack2x16float(w.x) * p.s)), bitcast<u32>(vec2<f16>(unpack2x16float(w.y) * p.s)),
    bitcast<u32>(vec2<f16>(unpack2x16float(w.z) * p.s)), bitcast<u32>(vec2<f16>(unpack2x16float(w.w) * p.s)));
}

// Vector v of the low-rank step at column j0 of U (row j0 of F): U's tile as A's, F's as B's.
fn fetchLow(isA: bool, v: u32, m0: u32, n0: u32, j0: u32) -> vec4<u32> {
  if (isA) {
    let at = slot32(v);
    let o = at.x;
    let i = at.y;
    if (m0 + o < p.M && j0 + i < p.R) { return u[((m0 + o) * p.R + j0 + i) / 8u]; }
    return vec4<u32>(0u);
  }
  if (B_TRANS) {
    let at = slot32(v);
    let o = at.x;
    let i = at.y;
    if (n0 + o < p.N && j0 + i < p.R) { return scaled(f[((n0 + o) * p.R + j0 + i) / 8u]); }
    return vec4<u32>(0u);
  }
  let o = v / (BN / 8u);
  let i = (v % (BN / 8u)) * 8u;
  if (j0 + o < p.R && n0 + i < p.N) { return scaled(f[((j0 + o) * p.LDF + n0 + i) / 8u]); }
  return vec4<u32>(0u);
}

fn fetch(isA: bool, v: u32, m0: u32, n0: u32, k0: u32) -> vec4<u32> {
  // Rows of the tile in memory (outer) and their contiguous extent (inner).
  let inner = select(select(BN, BK, B_TRANS), select(BK, BM, A_TRANS), isA);
  let outer0 = select(select(k0, n0, B_TRANS), select(m0, k0, A_TRANS), isA);
  let inner0 = select(select(n0, k0, B_TRANS), select(k0, m0, A_TRANS), isA);
  let outerLen = select(select(p.K, p.N, B_TRANS), select(p.M, p.K, A_TRANS), isA);
  let rowLen = select(select(p.N, p.K, B_TRANS), select(p.K, p.M, A_TRANS), isA);
  let at = slot(v, inner);
  let o = at.x;
  let i = at.y;
  if (outer0 + o < outerLen && inner0 + i < rowLen) {
    let g = ((outer0 + o) * rowLen + inner0 + i) / 8u;
    if (isA) { return a[g]; }
    return b[g];
  }
  return vec4<u32>(0u);
}

fn put(isA: bool, v: u32, w: vec4<u32>) {
  let inner = select(select(BN, BK, B_TRANS), select(BK, BM, A_TRANS), isA);
  let at = slot(v, inner);
  let s = at.x * (inner + PAD) + at.y;
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

// Writes one 16x16 result fragment at rows r0.., columns c0.. of C through the subgroup's scratch.
fn writeFragment(frag: subgroup_matrix_result<{{ACC}}, 16, 16>, r0: u32, c0: u32, sg: u32, lane: u32, base: u32) {
  subgroupMatrixStore<row_major>(&Cs, sg * 256u, frag, 16u);
  workgroupBarrier();
  for (var e = lane; e < 256u; e += 32u) {
    let m = r0 + e / 16u;
    let n = c0 + e % 16u;
    if (m < p.M && n < p.N) {
      var v = p.alpha * f32(Cs[sg * 256u + e]);
      if (p.beta != 0.0) { v += p.beta * f32(c[base + m * p.LDC + n]); }
      c[base + m * p.LDC + n] = {{OUT}}(v);
    }
  }
  workgroupBarrier();
}

@compute @workgroup_size(128)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
  @builtin(subgroup_id) sg: u32, // 0..3: subgroups of 32 (the launcher checks the size)
  @builtin(subgroup_invocation_id) lane: u32,
) {
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;
  let sm = (sg / 2u) * 64u; // this subgroup's rows within the tile
  let sn = (sg % 2u) * 64u; // and columns

  // 16 accumulators as named values: an array of them indexed in loops may live in local memory.
  var c00: subgroup_matrix_result<{{ACC}}, 16, 16>; var c01: subgroup_matrix_result<{{ACC}}, 16, 16>; var c02: subgroup_matrix_result<{{ACC}}, 16, 16>; var c03: subgroup_matrix_result<{{ACC}}, 16, 16>;
  var c10: subgroup_matrix_result<{{ACC}}, 16, 16>; var c11: subgroup_matrix_result<{{ACC}}, 16, 16>; var c12: subgroup_matrix_result<{{ACC}}, 16, 16>; var c13: subgroup_matrix_result<{{ACC}}, 16, 16>;
  var c20: subgroup_matrix_result<{{ACC}}, 16, 16>; var c21: subgroup_matrix_result<{{ACC}}, 16, 16>; var c22: subgroup_matrix_result<{{ACC}}, 16, 16>; var c23: subgroup_matrix_result<{{ACC}}, 16, 16>;
  var c30: subgroup_matrix_result<{{ACC}}, 16, 16>; var c31: subgroup_matrix_result<{{ACC}}, 16, 16>; var c32: subgroup_matrix_result<{{ACC}}, 16, 16>; var c33: subgroup_matrix_result<{{ACC}}, 16, 16>;
  // Fragment offsets in the staged tiles (see put()): A is [m][k] or [k][m], B is [k][n] or [n][k].
  let aStride = select(BK + PAD, BM + PAD, A_TRANS);
  let bStride = select(BN + PAD, BK + PAD, B_TRANS);
  // The next K step's tiles are read into registers while this one's products run.
  let kb = wg.z * p.KS;
  let L = select(0u, ((p.R + BK - 1u) / BK) * BK, LOW_RANK);
  let ke = select(min(p.K, kb + p.KS), L + mainSteps(), LOW_RANK);
  var ra: array<vec4<u32>, VECS>;
  var rb: array<vec4<u32>, VECS>;
  if (LOW_RANK) {
    for (var i = 0u; i < VECS; i++) {
      ra[i] = fetchLow(true, tid + i * 128u, m0, n0, 0u);
      rb[i] = fetchLow(false, tid + i * 128u, m0, n0, 0u);
    }
  } else {
    for (var i = 0u; i < VECS; i++) {
      ra[i] = fetch(true, tid + i * 128u, m0, n0, kb);
      rb[i] = fetch(false, tid + i * 128u, m0, n0, kb);
    }
  }
  for (var k0 = kb; k0 < ke; k0 += BK) {
    for (var i = 0u; i < VECS; i++) {
      put(true, tid + i * 128u, ra[i]);
      put(false, tid + i * 128u, rb[i]);
    }
    workgroupBarrier();
    if (LOW_RANK && k0 + BK < L) {
      for (var i = 0u; i < VECS; i++) {
        ra[i] = fetchLow(true, tid + i * 128u, m0, n0, k0 + BK);
        rb[i] = fetchLow(false, tid + i * 128u, m0, n0, k0 + BK);
      }
    } else if (k0 + BK < ke) {
      for (var i = 0u; i < VECS; i++) {
        ra[i] = fetch(true, tid + i * 128u, m0, n0, k0 + BK - L);
        rb[i] = fetch(false, tid + i * 128u, m0, n0, k0 + BK - L);
      }
    }
    for (var kk = 0u; kk < BK; kk += 16u) {
      let a0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, {{A_LAYOUT}}>(&As, select((sm + 0u) * aStride + kk, kk * aStride + sm + 0u, A_TRANS), aStride);
      let a1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, {{A_LAYOUT}}>(&As, select((sm + 16u) * aStride + kk, kk * aStride + sm + 16u, A_TRANS), aStride);
      let a2 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, {{A_LAYOUT}}>(&As, select((sm + 32u) * aStride + kk, kk * aStride + sm + 32u, A_TRANS), aStride);
      let a3 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, {{A_LAYOUT}}>(&As, select((sm + 48u) * aStride + kk, kk * aStride + sm + 48u, A_TRANS), aStride);
      let b0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, {{B_LAYOUT}}>(&Bs, select(kk * bStride + sn + 0u, (sn + 0u) * bStride + kk, B_TRANS), bStride);
      let b1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, {{B_LAYOUT}}>(&Bs, select(kk * bStride + sn + 16u, (sn + 16u) * bStride + kk, B_TRANS), bStride);
      let b2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, {{B_LAYOUT}}>(&Bs, select(kk * bStride + sn + 32u, (sn + 32u) * bStride + kk, B_TRANS), bStride);
      let b3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, {{B_LAYOUT}}>(&Bs, select(kk * bStride + sn + 48u, (sn + 48u) * bStride + kk, B_TRANS), bStride);
      c00 = subgroupMatrixMultiplyAccumulate(a0, b0, c00);
      c01 = subgroupMatrixMultiplyAccumulate(a0, b1, c01);
      c02 = subgroupMatrixMultiplyAccumulate(a0, b2, c02);
      c03 = subgroupMatrixMultiplyAccumulate(a0, b3, c03);
      c10 = subgroupMatrixMultiplyAccumulate(a1, b0, c10);
      c11 = subgroupMatrixMultiplyAccumulate(a1, b1, c11);
      c12 = subgroupMatrixMultiplyAccumulate(a1, b2, c12);
      c13 = subgroupMatrixMultiplyAccumulate(a1, b3, c13);
      c20 = subgroupMatrixMultiplyAccumulate(a2, b0, c20);
      c21 = subgroupMatrixMultiplyAccumulate(a2, b1, c21);
      c22 = subgroupMatrixMultiplyAccumulate(a2, b2, c22);
      c23 = subgroupMatrixMultiplyAccumulate(a2, b3, c23);
      c30 = subgroupMatrixMultiplyAccumulate(a3, b0, c30);
      c31 = subgroupMatrixMultiplyAccumulate(a3, b1, c31);
      c32 = subgroupMatrixMultiplyAccumulate(a3, b2, c32);
      c33 = subgroupMatrixMultiplyAccumulate(a3, b3, c33);
    }
    workgroupBarrier();
  }

  // Epilogue: each fragment goes through this subgroup's 16x16 scratch, then every lane writes
  // 8 elements with scaling, accumulation and edge checks.
  let base = wg.z * p.M * p.N;
  writeFragment(c00, m0 + sm + 0u, n0 + sn + 0u, sg, lane, base);
  writeFragment(c01, m0 + sm + 0u, n0 + sn + 16u, sg, lane, base);
  writeFragment(c02, m0 + sm + 0u, n0 + sn + 32u, sg, lane, base);
  writeFragment(c03, m0 + sm + 0u, n0 + sn + 48u, sg, lane, base);
  writeFragment(c10, m0 + sm + 16u, n0 + sn + 0u, sg, lane, base);
  writeFragment(c11, m0 + sm + 16u, n0 + sn + 16u, sg, lane, base);
  writeFragment(c12, m0 + sm + 16u, n0 + sn + 32u, sg, lane, base);
  writeFragment(c13, m0 + sm + 16u, n0 + sn + 48u, sg, lane, base);
  writeFragment(c20, m0 + sm + 32u, n0 + sn + 0u, sg, lane, base);
  writeFragment(c21, m0 + sm + 32u, n0 + sn + 16u, sg, lane, base);
  writeFragment(c22, m0 + sm + 32u, n0 + sn + 32u, sg, lane, base);
  writeFragment(c23, m0 + sm + 32u, n0 + sn + 48u, sg, lane, base);
  writeFragment(c30, m0 + sm + 48u, n0 + sn + 0u, sg, lane, base);
  writeFragment(c31, m0 + sm + 48u, n0 + sn + 16u, sg, lane, base);
  writeFragment(c32, m0 + sm + 48u, n0 + sn + 32u, sg, lane, base);
  writeFragment(c33, m0 + sm + 48u, n0 + sn + 48u, sg, lane, base);
}
