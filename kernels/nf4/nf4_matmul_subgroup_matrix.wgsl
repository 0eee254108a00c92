// Tensor-core NF4 dequant-matmul on subgroup matrices (f16 x f16 -> f32, 16x16x16 fragments).
//   C[M,N] = alpha * (A[M,K] · B[K,N] + s * U[M,R] · F[R,N]) + beta * C[M,N]
// Operands, the low-rank term and W_TRANS as in nf4_matmul_tiled.wgsl; R % 8 == 0. A (f16
// activations [M,K]) is staged 8 halves at a time, so K must be a multiple of 8; the weight is
// staged one code word (8 consecutive elements of a row of W, all in one 64-block) at a time, so IN
// must be a multiple of 8. A workgroup of 8 subgroups of 32 computes a 256x128 tile of C, each
// subgroup 64x64 (4x4 fragments), over K in steps of 32. Both tiles sit in workgroup memory
// K-innermost (As [m][k], Bs [n][k], row stride 40 halves, vectors placed by slot32 from the
// launcher), so every fragment loads in its native layout. Each W tile is dequantized there as f16
// (the weight is never whole in memory), two elements per lookup of a code-byte table; with W_TRANS
// false (dX = dY W) the tile is transposed on the way, the 32 lanes of a subgroup taking 32
// consecutive k. The reads of K step k + 1 (A vectors, code words and their block scales) are in
// flight while the products of step k run. The low-rank term runs as ceil(R / 32) more K steps on
// the same accumulators: U tiles staged as A tiles, F tiles (times s, as f16) placed as the W words
// would be.
// Other edges are ragged: rows and K beyond the matrix read as zero and are never written.
enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;

struct Params { M: u32, N: u32, K: u32, alpha: f32, beta: f32, IN: u32, R: u32, s: f32, }

override W_TRANS: bool = true;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> codes: array<u32>;
@group(0) @binding(3) var<storage, read> absq: array<u32>;
@group(0) @binding(4) var<storage, read> nested: array<f32>;
@group(0) @binding(5) var<storage, read> dynmap: array<f32>;
@group(0) @binding(6) var<storage, read> u: array<vec4<u32>>; // f16 [M, R]
@group(0) @binding(7) var<storage, read> f: array<vec4<u32>>; // f16 [N, R] (W_TRANS) or [R, N]
@group(0) @binding(8) var<storage, read_write> c: array<{{OUT}}>;

const BM = 256u;
const BN = 128u;
const BK = 32u;
const STRIDE = 40u;

// NF4 (array<u32, 16>, the codebook's f32 bit patterns) is appended by the launcher (NF4_CODEBOOK_WGSL).

var<workgroup> As: array<f16, BM * STRIDE>; // [m][k]
var<workgroup> Bs: array<f16, BN * STRIDE>; // [n][k]
var<workgroup> Cs: array<f32, 2048>; // one 16x16 fragment per subgroup for the epilogue
var<workgroup> lut2: array<vec2<f32>, 256>; // code byte -> NF4 values of (high nibble, low nibble)
var<workgroup> dmap: array<f32, 256>;

// A tile [BM x BK]: 1024 vectors of 8 halves, 4 per invocation.
fn fetchA(v: u32, m0: u32, k0: u32) -> vec4<u32> {
  let at = slot32(v);
  let o = at.x;
  let i = at.y;
  if (m0 + o < p.M && k0 + i < p.K) { return a[((m0 + o) * p.K + k0 + i) / 8u]; }
  return vec4<u32>(0u);
}

// The U tile [BM x BK] of the low-rank step at column j0 of U, as fetchA.
fn fetchU(v: u32, m0: u32, j0: u32) -> vec4<u32> {
  let at = slot32(v);
  let o = at.x;
  let i = at.y;
  if (m0 + o < p.M && j0 + i < p.R) { return u[((m0 + o) * p.R + j0 + i) / 8u]; }
  return vec4<u32>(0u);
}

fn putA(v: u32, w: vec4<u32>) {
  let at = slot32(v);
  let s = at.x * STRIDE + at.y;
  let h0 = bitcast<vec2<f16>>(w.x);
  let h1 = bitcast<vec2<f16>>(w.y);
  let h2 = bitcast<vec2<f16>>(w.z);
  let h3 = bitcast<vec2<f16>>(w.w);
  As[s] = h0.x; As[s + 1u] = h0.y; As[s + 2u] = h1.x; As[s + 3u] = h1.y;
  As[s + 4u] = h2.x; As[s + 5u] = h2.y; As[s + 6u] = h3.x; As[s + 7u] = h3.y;
}

// One code word of the W tile with what its block scale needs.
struct WordFetch {
  word: u32,
  absq: u32, // the 4 absmax codes that hold this block's
  nested: f32, // the double-quantization scale of this block's group of 256
  shift: u32, // bit offset of this block's absmax code in `absq`
  valid: bool,
}

// Word v of the W tile (512 words of 8 elements, 2 per invocation). W_TRANS: 8 consecutive k of row n of W
// (4 words per row). Otherwise 8 consecutive n of row k of W; the 32 lanes take 32 consecutive k.
// Returns (row of W, first column, first Bs offset, Bs step between the 8 elements).
fn wordPlace(v: u32, n0: u32, k0: u32) -> vec4<u32> {
  if (W_TRANS) {
    let at = slot32(v);
    let r = at.x;
    let cc = at.y;
    return vec4<u32>(n0 + r, k0 + cc, r * STRIDE + cc, 1u);
  }
  let k = v % BK;
  let n = (v / BK) * 8u;
  return vec4<u32>(k0 + k, n0 + n, n * STRIDE + k, STRIDE);
}

fn fetchW(v: u32, n0: u32, k0: u32) -> WordFetch {
  let at = wordPlace(v, n0, k0);
  let valid = select(at.x < p.K && at.y < p.N, at.x < p.N && at.y < p.K, W_TRANS);
  if (!valid) { return WordFetch(0u, 0u, 0.0, 0u, false); }
  let f = at.x * p.IN + at.y;
  let blk = f >> 6u;
  return WordFetch(codes[f >> 3u], absq[blk >> 2u], nested[1u + (blk >> 8u)], (blk & 3u) * 8u, true);
}

// Eight elements of the B tile from Bs offset at.z, at.w apart (at from wordPlace).
fn putB8(at: vec4<u32>, e0: vec2<f16>, e1: vec2<f16>, e2: vec2<f16>, e3: vec2<f16>) {
  let s = at.z;
  let d = at.w;
  Bs[s] = e0.x; Bs[s + d] = e0.y; Bs[s + 2u * d] = e1.x; Bs[s + 3u * d] = e1.y;
  Bs[s + 4u * d] = e2.x; Bs[s + 5u * d] = e2.y; Bs[s + 6u * d] = e3.x; Bs[s + 7u * d] = e3.y;
}

fn putW(v: u32, n0: u32, k0: u32, w: WordFetch) {
  let at = wordPlace(v, n0, k0);
  if (w.valid) {
    let am = dmap[(w.absq >> w.shift) & 0xffu] * w.nested + nested[0];
    putB8(at, vec2<f16>(lut2[w.word & 0xffu] * am), vec2<f16>(lut2[(w.word >> 8u) & 0xffu] * am),
          vec2<f16>(lut2[(w.word >> 16u) & 0xffu] * am), vec2<f16>(lut2[w.word >> 24u] * am));
  } else {
    let z = vec2<f16>(0.0h);
    putB8(at, z, z, z, z);
  }
}

// Vector v of the F tile of the low-rank step at row j0 of F (as the W words: 8 consecutive
// elements of a row of F), times s.
fn putF(v: u32, n0: u32, j0: u32) {
  let at = wordPlace(v, n0, j0);
  let valid = select(at.x < p.R && at.y < p.N, at.x < p.N && at.y < p.R, W_TRANS);
  var w = vec4<u32>(0u);
  if (valid) { w = f[(at.x * select(p.N, p.R, W_TRANS) + at.y) / 8u]; }
  putB8(at, vec2<f16>(vec2<f32>(bitcast<vec2<f16>>(w.x)) * p.s), vec2<f16>(vec2<f32>(bitcast<vec2<f16>>(w.y)) * p.s),
        vec2<f16>(vec2<f32>(bitcast<vec2<f16>>(w.z)) * p.s), vec2<f16>(vec2<f32>(bitcast<vec2<f16>>(w.w)) * p.s));
}

// Writes one 16x16 result fragment at rows r0.., columns c0.. of C through the subgroup's scratch.
fn writeFragment(frag: subgroup_matrix_result<f32, 16, 16>, r0: u32, c0: u32, sg: u32, lane: u32) {
  subgroupMatrixStore<row_major>(&Cs, sg * 256u, frag, 16u);
  workgroupBarrier();
  for (var e = lane; e < 256u; e += 32u) {
    let m = r0 + e / 16u;
    let n = c0 + e % 16u;
    if (m < p.M && n < p.N) {
      var v = p.alpha * Cs[sg * 256u + e];
      if (p.beta != 0.0) { v += p.beta * f32(c[m * p.N + n]); }
      c[m * p.N + n] = {{OUT}}(v);
    }
  }
  workgroupBarrier();
}

@compute @workgroup_size(256)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
  @builtin(subgroup_id) sg: u32, // 0..7: subgroups of 32 (the launcher checks the size)
  @builtin(subgroup_invocation_id) lane: u32,
) {
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;
  let sm = (sg / 2u) * 64u;
  let sn = (sg % 2u) * 64u;
  lut2[tid] = vec2<f32>(bitcast<f32>(NF4[tid >> 4u]), bitcast<f32>(NF4[tid & 15u]));
  dmap[tid] = dynmap[tid];
  workgroupBarrier();

  // 16 accumulators as named values: an array of them indexed in loops may live in local memory.
  var c00: subgroup_matrix_result<f32, 16, 16>; var c01: subgroup_matrix_result<f32, 16, 16>; var c02: subgroup_matrix_result<f32, 16, 16>; var c03: subgroup_matrix_result<f32, 16, 16>;
  var c10: subgroup_matrix_result<f32, 16, 16>; var c11: subgroup_matrix_result<f32, 16, 16>; var c12: subgroup_matrix_result<f32, 16, 16>; var c13: subgroup_matrix_result<f32, 16, 16>;
  var c20: subgroup_matrix_result<f32, 16, 16>; var c21: subgroup_matrix_result<f32, 16, 16>; var c22: subgroup_matrix_result<f32, 16, 16>; var c23: subgroup_matrix_result<f32, 16, 16>;
  var c30: subgroup_matrix_result<f32, 16, 16>; var c31: subgroup_matrix_result<f32, 16, 16>; var c32: subgroup_matrix_result<f32, 16, 16>; var c33: subgroup_matrix_result<f32, 16, 16>;
  var ra: array<vec4<u32>, 4>;
  var rw: array<WordFetch, 2>;
  for (var i = 0u; i < 4u; i++) { ra[i] = fetchA(tid + i * 256u, m0, 0u); }
  for (var i = 0u; i < 2u; i++) { rw[i] = fetchW(tid + i * 256u, n0, 0u); }
  // K steps [0, kw) read A and W; [kw, kEnd) U and F.
  let kw = ((p.K + BK - 1u) / BK) * BK;
  let kEnd = kw + ((p.R + BK - 1u) / BK) * BK;
  for (var k0 = 0u; k0 < kEnd; k0 += BK) {
    if (k0 < kw) {
      for (var i = 0u; i < 4u; i++) { putA(tid + i * 256u, ra[i]); }
      for (var i = 0u; i < 2u; i++) { putW(tid + i * 256u, n0, k0, rw[i]); }
    } else {
      for (var i = 0u; i < 4u; i++) { putA(tid + i * 256u, fetchU(tid + i * 256u, m0, k0 - kw)); }
      for (var i = 0u; i < 2u; i++) { putF(tid + i * 256u, n0, k0 - kw); }
    }
    workgroupBarrier();
    if (k0 + BK < kw) {
      for (var i = 0u; i < 4u; i++) { ra[i] = fetchA(tid + i * 256u, m0, k0 + BK); }
      for (var i = 0u; i < 2u; i++) { rw[i] = fetchW(tid + i * 256u, n0, k0 + BK); }
    }
    for (var kk = 0u; kk < BK; kk += 16u) {
      let a0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&As, (sm + 0u) * STRIDE + kk, STRIDE);
      let a1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&As, (sm + 16u) * STRIDE + kk, STRIDE);
      let a2 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&As, (sm + 32u) * STRIDE + kk, STRIDE);
      let a3 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&As, (sm + 48u) * STRIDE + kk, STRIDE);
      let b0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&Bs, (sn + 0u) * STRIDE + kk, STRIDE);
      let b1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&Bs, (sn + 16u) * STRIDE + kk, STRIDE);
      let b2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&Bs, (sn + 32u) * STRIDE + kk, STRIDE);
      let b3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&Bs, (sn + 48u) * STRIDE + kk, STRIDE);
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
  writeFragment(c00, m0 + sm + 0u, n0 + sn + 0u, sg, lane);
  writeFragment(c01, m0 + sm + 0u, n0 + sn + 16u, sg, lane);
  writeFragment(c02, m0 + sm + 0u, n0 + sn + 32u, sg, lane);
  writeFragment(c03, m0 + sm + 0u, n0 + sn + 48u, sg, lane);
  writeFragment(c10, m0 + sm + 16u, n0 + sn + 0u, sg, lane);
  writeFragment(c11, m0 + sm + 16u, n0 + sn + 16u, sg, lane);
  writeFragment(c12, m0 + sm + 16u, n0 + sn + 32u, sg, lane);
  writeFragment(c13, m0 + sm + 16u, n0 + sn + 48u, sg, lane);
  writeFragment(c20, m0 + sm + 32u, n0 + sn + 0u, sg, lane);
  writeFragment(c21, m0 + sm + 32u, n0 + sn + 16u, sg, lane);
  writeFragment(c22, m0 + sm + 32u, n0 + sn + 32u, sg, lane);
  writeFragment(c23, m0 + sm + 32u, n0 + sn + 48u, sg, lane);
  writeFragment(c30, m0 + sm + 48u, n0 + sn + 0u, sg, lane);
  writeFragment(c31, m0 + sm + 48u, n0 + sn + 16u, sg, lane);
  writeFragment(c32, m0 + sm + 48u, n0 + sn + 32u, sg, lane);
  writeFragment(c33, m0 + sm + 48u, n0 + sn + 48u, sg, lane);
}
