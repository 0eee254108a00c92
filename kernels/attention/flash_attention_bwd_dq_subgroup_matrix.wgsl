// Flash attention backward, first pass, on subgroup matrices (f16 x f16 -> f32, 16x16x16):
// delta and dQ, same contract as flash_attention_bwd_dq.wgsl:
//   q, o, dO [B,T,H,D] f16; k, v [B,T,KVH,D] f16; lse [B,H,T] f32 -> dq [B,T,H,D] f16, delta [B,H,T] f32.
// A workgroup of 8 subgroups of 32 takes BR = 64 query rows of one head and walks the key/value
// blocks of BC = 32 rows up to the diagonal. The subgroups pair up per 16 query rows
// (rg = sg % 4) and split the work by hd = sg / 4:
//   hd 0 keeps its rows' Q fragments in registers and forms S = Q·K^T,
//   hd 1 keeps dO's and forms dP = dO·V^T,
// both to workgroup memory, where all invocations form dS = P * (dP - delta) in f16 with
// P = exp(scale S - lse); then each subgroup accumulates its half of the columns of dQ += dS·K
// in result fragments that live across the whole walk. The next block's K and V are read from
// storage into registers while a block is computed, and staged as words (consecutive
// invocations, consecutive words: no bank conflicts). D is a multiple of 64, at most 128.
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
@group(0) @binding(1) var<storage, read> q: array<u32>; // 2 halves per element
@group(0) @binding(2) var<storage, read> k: array<u32>;
@group(0) @binding(3) var<storage, read> v: array<u32>;
@group(0) @binding(4) var<storage, read> o: array<u32>;
@group(0) @binding(5) var<storage, read> dO: array<u32>;
@group(0) @binding(6) var<storage, read> lse: array<f32>;
@group(0) @binding(7) var<storage, read_write> dq: array<vec4<f16>>;
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;

const BR = 64u;
const BC = 32u;
const PAD = 8u;
const MAXD = 128u;
const XS = MAXD + PAD; // row stride of X in f16
const PS = BC + PAD; // row stride of dS in f16
const WORDS = 2u * BC * MAXD / 2u / 256u; // staged words per invocation per block, at most

// Q, then dO (64 rows) before the walk; then K in rows 0..BC-1 and V in rows BC..2BC-1.
var<workgroup> X: array<f16, BR * XS>;
// S [query row][kv row] in the first BR * BC, dP in the second; at the end output pieces.
var<workgroup> SD: array<f32, 2u * BR * BC>;
var<workgroup> dSh: array<f16, BR * PS>;
var<workgroup> rowLse: array<f32, BR>;
var<workgroup> rowDelta: array<f32, BR>;
var<workgroup> part: array<f32, 256>;

fn putWord(r: u32, i: u32, w: u32) {
  let h = bitcast<vec2<f16>>(w);
  let at = r * XS + 2u * i;
  X[at] = h.x;
  X[at + 1u] = h.y;
}

// This invocation's words of K rows c0..c0+BC-1 (staging rows 0..BC-1) and V rows (BC..) of
// kv head g; zero past T.
fn fetchBlock(c0: u32, b: u32, g: u32, tid: u32) -> array<u32, WORDS> {
  var out: array<u32, WORDS>;
  let half = D / 2u;
  for (var j = 0u; j < 2u * BC * half / 256u; j++) {
    let w = tid + j * 256u;
    let r = w / half;
    let t = c0 + r % BC;
    var x = 0u;
    if (t < p.T) {
      let at = ((b * p.T + t) * p.KVH + g) * half + w % half;
      if (r < BC) { x = k[at]; } else { x = v[at]; }
    }
    out[j] = x;
  }
  return out;
}

fn putBlock(words: array<u32, WORDS>, tid: u32) {
  let half = D / 2u;
  for (var j = 0u; j < 2u * BC * half / 256u; j++) {
    let w = tid + j * 256u;
    putWord(w / half, w % half, words[j]);
  }
}

// Stages query rows q0..q0+BR-1 of Q (or dO) of head h into X.
fn stageRows(q0: u32, b: u32, h: u32, tid: u32, isDo: bool) {
  let half = D / 2u;
  for (var w = tid; w < BR * half; w += 256u) {
    let t = q0 + w / half;
    var x = 0u;
    if (t < p.T) {
      let at = ((b * p.T + t) * p.H + h) * half + w % half;
      if (isDo) { x = dO[at]; } else { x = q[at]; }
    }
    putWord(w / half, w % half, x);
  }
}

// x · Y^T for the subgroup's 16 query rows against staged rows y0..y0+15 (K or V), over D.
fn rowsTimesStaged(
  y0: u32,
  f0: subgroup_matrix_left<f16, 16, 16>, f1: subgroup_matrix_left<f16, 16, 16>,
  f2: subgroup_matrix_left<f16, 16, 16>, f3: subgroup_matrix_left<f16, 16, 16>,
  f4: subgroup_matrix_left<f16, 16, 16>, f5: subgroup_matrix_left<f16, 16, 16>,
  f6: subgroup_matrix_left<f16, 16, 16>, f7: subgroup_matrix_left<f16, 16, 16>,
) -> subgroup_matrix_result<f32, 16, 16> {
  let at = y0 * XS;
  var s = subgroup_matrix_result<f32, 16, 16>();
  s = subgroupMatrixMultiplyAccumulate(f0, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at, XS), s);
  s = subgroupMatrixMultiplyAccumulate(f1, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 16u, XS), s);
  s = subgroupMatrixMultiplyAccumulate(f2, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 32u, XS), s);
  s = subgroupMatrixMultiplyAccumulate(f3, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 48u, XS), s);
  if (D > 64u) {
    s = subgroupMatrixMultiplyAccumulate(f4, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 64u, XS), s);
    s = subgroupMatrixMultiplyAccumulate(f5, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 80u, XS), s);
    s = subgroupMatrixMultiplyAccumulate(f6, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 96u, XS), s);
    s = subgroupMatrixMultiplyAccumulate(f7, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 112u, XS), s);
  }
  return s;
}

// acc + dS·K[:, col0 .. col0+15] over the block's BC = 32 staged K rows (a0: kv rows 0..15, a1: 16..31).
fn times(
  acc: subgroup_matrix_result<f32, 16, 16>,
  a0: subgroup_matrix_left<f16, 16, 16>,
  a1: subgroup_matrix_left<f16, 16, 16>,
  col0: u32,
) -> subgroup_matrix_result<f32, 16, 16> {
  let y = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&X, col0, XS);
  let z = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&X, 16u * XS + col0, XS);
  return subgroupMatrixMultiplyAccumulate(a1, z, subgroupMatrixMultiplyAccumulate(a0, y, acc));
}

// Writes dq columns c0 .. c0+31 of the subgroup's 16 rows (fragments a and b, columns c0 and
// c0 + 16) times scale, through the subgroup's part of SD.
fn writePair(
  a: subgroup_matrix_result<f32, 16, 16>,
  bf: subgroup_matrix_result<f32, 16, 16>,
  c0: u32,
  sg: u32,
  lane: u32,
  row: u32,
  outBase: u32,
) {
  subgroupMatrixStore<row_major>(&SD, sg * 512u, a, 32u);
  subgroupMatrixStore<row_major>(&SD, sg * 512u + 16u, bf, 32u);
  workgroupBarrier();
  if (row < p.T) {
    let at = sg * 512u + (lane / 2u) * 32u + (lane % 2u) * 16u;
    let base = (outBase + c0 + (lane % 2u) * 16u) / 4u;
    for (var x = 0u; x < 4u; x++) {
      dq[base + x] = vec4<f16>(vec4<f32>(SD[at + 4u * x], SD[at + 4u * x + 1u], SD[at + 4u * x + 2u], SD[at + 4u * x + 3u]) * p.scale);
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
  let T = p.T;
  let H = p.H;
  let h = wg.y;
  let b = wg.z;
  let g = h / (H / p.KVH);
  // Last query block first: under the causal mask it has the most keys to walk, so the
  // longest workgroups start earliest.
  let q0 = ((T + BR - 1u) / BR - 1u - wg.x) * BR;
  let rg = sg % 4u; // the subgroup's 16 query rows
  let hd = sg / 4u; // 0: S and dq columns 0..D/2-1; 1: dP and columns D/2..D-1
  let DH = D / 2u;
  let causal = p.causal != 0u;

  // delta = rowsum(dO * o): four invocations per row, D/4 columns each.
  {
    let r = tid / 4u;
    let t = q0 + r;
    var partial = 0.0;
    if (t < T) {
      let base = ((b * T + t) * H + h) * (D / 2u) + (tid % 4u) * (D / 8u);
      for (var e = 0u; e < D / 8u; e++) {
        partial += dot(vec2<f32>(bitcast<vec2<f16>>(dO[base + e])), vec2<f32>(bitcast<vec2<f16>>(o[base + e])));
      }
    }
    part[tid] = partial;
    workgroupBarrier();
    if (tid < BR) {
      let dl = part[4u * tid] + part[4u * tid + 1u] + part[4u * tid + 2u] + part[4u * tid + 3u];
      var ls = 0.0;
      if (q0 + tid < T) {
        ls = lse[(b * H + h) * T + q0 + tid];
        delta[(b * H + h) * T + q0 + tid] = dl;
      }
      rowDelta[tid] = dl;
      rowLse[tid] = ls;
    }
  }

  // Q fragments, then dO's for the hd = 1 subgroups.
  stageRows(q0, b, h, tid, false);
  workgroupBarrier();
  let xa = rg * 16u * XS;
  var f0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa, XS);
  var f1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 16u, XS);
  var f2 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 32u, XS);
  var f3 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 48u, XS);
  var f4 = f0; var f5 = f0; var f6 = f0; var f7 = f0;
  if (D > 64u) {
    f4 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 64u, XS);
    f5 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 80u, XS);
    f6 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 96u, XS);
    f7 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 112u, XS);
  }
  workgroupBarrier();
  stageRows(q0, b, h, tid, true);
  workgroupBarrier();
  let g0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa, XS);
  let g1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 16u, XS);
  let g2 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 32u, XS);
  let g3 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 48u, XS);
  var g4 = g0; var g5 = g0; var g6 = g0; var g7 = g0;
  if (D > 64u) {
    g4 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 64u, XS);
    g5 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 80u, XS);
    g6 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 96u, XS);
    g7 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 112u, XS);
  }
  if (hd == 1u) { f0 = g0; f1 = g1; f2 = g2; f3 = g3; f4 = g4; f5 = g5; f6 = g6; f7 = g7; }
  workgroupBarrier();

  var kvEnd = T;
  if (causal) { kvEnd = min(q0 + BR, T); }
  let blocks = (kvEnd + BC - 1u) / BC;

  var a0 = subgroup_matrix_result<f32, 16, 16>();
  var a1 = a0; var a2 = a0; var a3 = a0;
  let colBase = hd * DH;
  var next = fetchBlock(0u, b, g, tid);
  for (var jb = 0u; jb < blocks; jb++) {
    let c0 = jb * BC;
    putBlock(next, tid);
    workgroupBarrier();
    if (jb + 1u < blocks) { next = fetchBlock(c0 + BC, b, g, tid); }
    // hd 0: S against K (staged rows 0..); hd 1: dP against V (staged rows BC..).
    let sd = hd * BR * BC + rg * 16u * BC;
    subgroupMatrixStore<row_major>(&SD, sd, rowsTimesStaged(hd * BC, f0, f1, f2, f3, f4, f5, f6, f7), BC);
    subgroupMatrixStore<row_major>(&SD, sd + 16u, rowsTimesStaged(hd * BC + 16u, f0, f1, f2, f3, f4, f5, f6, f7), BC);
    workgroupBarrier();
    // dS: invocation tid takes kv column tid % BC of query rows tid / BC + 8i.
    let c = tid % BC;
    let t = c0 + c;
    for (var i = 0u; i < BR / 8u; i++) {
      let r = tid / BC + 8u * i;
      let row = q0 + r;
      let masked = row >= T || t >= T || (causal && t > row);
      let pr = select(exp(SD[r * BC + c] * p.scale - rowLse[r]), 0.0, masked);
      dSh[r * PS + c] = f16(pr * (SD[BR * BC + r * BC + c] - rowDelta[r]));
    }
    workgroupBarrier();
    let s0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&dSh, rg * 16u * PS, PS);
    let s1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&dSh, rg * 16u * PS + 16u, PS);
    a0 = times(a0, s0, s1, colBase);
    a1 = times(a1, s0, s1, colBase + 16u);
    if (DH > 32u) {
      a2 = times(a2, s0, s1, colBase + 32u);
      a3 = times(a3, s0, s1, colBase + 48u);
    }
    workgroupBarrier(); // the next block's staging overwrites K and V
  }

  let row = q0 + rg * 16u + lane / 2u;
  let outBase = ((b * T + row) * H + h) * D + colBase;
  writePair(a0, a1, 0u, sg, lane, row, outBase);
  if (DH > 32u) { writePair(a2, a3, 32u, sg, lane, row, outBase); }
}
