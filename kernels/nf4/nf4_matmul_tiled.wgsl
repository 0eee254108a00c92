// Portable NF4 dequant-matmul (no subgroups, no subgroup matrices).
//   C[M,N] = alpha * (A[M,K] · B[K,N] + s * U[M,R] · F[R,N]) + beta * C[M,N]
// A is f16 activations [M,K] row-major; B is the NF4 weight W[out,in] (rows of IN elements),
// dequantized tile by tile into workgroup memory as f16, never whole:
//   W_TRANS true  (forward, Y = X W^T):  B(k,n) = W[n, k], N = out, K = in;
//   W_TRANS false (input gradient, dX = dY W): B(k,n) = W[k, n], N = in, K = out.
// Element (o, i) of W is flat index f = o * IN + i: code = nibble of byte f/2 (high nibble for even
// f), block f/64, absmax = dynmap[absmax code] * nested[1 + block/256] + nested[0] (offset),
// w = NF4[code] * absmax. f32 accumulation, {{OUT}} output.
// The low-rank term (R = 0: none) is a fused LoRA path, f16 U [M,R] row-major and F:
//   W_TRANS true:  F(j,n) = f[n * R + j]  (LoRA B [out, R]: Y = X W^T + s U B^T);
//   W_TRANS false: F(j,n) = f[j * N + n]  (LoRA A [R, in]: dX = dY W + dU A, s = 1);
// it runs as more K steps on the same accumulators (F times s rounded to f16 when staged).
// A workgroup of 16x16 threads computes a 64x64 tile of C; each thread a 4x4 block. Any shape.
enable f16;

struct Params {
  M: u32,
  N: u32,
  K: u32,
  alpha: f32,
  beta: f32,
  IN: u32,
  R: u32,
  s: f32,
}

override W_TRANS: bool = true;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f16>;
@group(0) @binding(2) var<storage, read> codes: array<u32>;
@group(0) @binding(3) var<storage, read> absq: array<u32>;
@group(0) @binding(4) var<storage, read> nested: array<f32>;
@group(0) @binding(5) var<storage, read> dynmap: array<f32>;
@group(0) @binding(6) var<storage, read> u: array<f16>;
@group(0) @binding(7) var<storage, read> f: array<f16>;
@group(0) @binding(8) var<storage, read_write> c: array<{{OUT}}>;

const BM = 64u;
const BN = 64u;
const BK = 16u;
const TM = 4u;
const TN = 4u;

// NF4 (array<u32, 16>, the codebook's f32 bit patterns) is appended by the launcher (NF4_CODEBOOK_WGSL).

var<workgroup> As: array<f16, BK * BM>; // [k][m]
var<workgroup> Bs: array<f16, BK * BN>; // [k][n]
var<workgroup> lut: array<f32, 16>;

// K steps [0, kw) read A and W, [kw, kw + R) U and F (kw: K rounded up to whole steps).
fn loadA(m: u32, k: u32, kw: u32) -> f16 {
  if (k >= kw) {
    if (m >= p.M || k - kw >= p.R) { return 0.0h; }
    return u[m * p.R + k - kw];
  }
  if (m >= p.M || k >= p.K) { return 0.0h; }
  return a[m * p.K + k];
}

fn deq(f: u32) -> f16 {
  let byte = (codes[f >> 3u] >> (((f >> 1u) & 3u) * 8u)) & 0xffu;
  let q = select(byte & 0xfu, byte >> 4u, (f & 1u) == 0u);
  let blk = f >> 6u;
  let aq = (absq[blk >> 2u] >> ((blk & 3u) * 8u)) & 0xffu;
  let am = dynmap[aq] * nested[1u + (blk >> 8u)] + nested[0];
  return f16(lut[q] * am);
}

fn loadB(k: u32, n: u32, kw: u32) -> f16 {
  if (k >= kw) {
    let j = k - kw;
    if (j >= p.R || n >= p.N) { return 0.0h; }
    return f16(p.s * f32(f[select(j * p.N + n, n * p.R + j, W_TRANS)]));
  }
  if (k >= p.K || n >= p.N) { return 0.0h; }
  if (W_TRANS) { return deq(n * p.IN + k); }
  return deq(k * p.IN + n);
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let tid = lid.y * 16u + lid.x;
  if (tid < 16u) { lut[tid] = bitcast<f32>(NF4[tid]); }
  workgroupBarrier();
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;
  var acc: array<vec4<f32>, TM>;
  let kw = ((p.K + BK - 1u) / BK) * BK;
  for (var k0 = 0u; k0 < kw + p.R; k0 += BK) {
    for (var i = 0u; i < 4u; i++) {
      let idx = tid + i * 256u;
      {
        let m = idx / BK; let k = idx % BK;
        As[k * BM + m] = loadA(m0 + m, k0 + k, kw);
      }
      if (W_TRANS) {
        let n = idx / BK; let k = idx % BK;
        Bs[k * BN + n] = loadB(k0 + k, n0 + n, kw);
      } else {
        let k = idx / BN; let n = idx % BN;
        Bs[k * BN + n] = loadB(k0 + k, n0 + n, kw);
      }
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k++) {
      let av = vec4<f32>(vec4<f16>(As[k * BM + lid.y * TM], As[k * BM + lid.y * TM + 1u],
                                       As[k * BM + lid.y * TM + 2u], As[k * BM + lid.y * TM + 3u]));
      let bv = vec4<f32>(vec4<f16>(Bs[k * BN + lid.x * TN], Bs[k * BN + lid.x * TN + 1u],
                                       Bs[k * BN + lid.x * TN + 2u], Bs[k * BN + lid.x * TN + 3u]));
      acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
      acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
      acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
      acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < TM; i++) {
    let m = m0 + lid.y * TM + i;
    if (m >= p.M) { continue; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid.x * TN + j;
      if (n >= p.N) { continue; }
      var v = p.alpha * acc[i][j];
      if (p.beta != 0.0) { v += p.beta * f32(c[m * p.N + n]); }
      c[m * p.N + n] = {{OUT}}(v);
    }
  }
}
