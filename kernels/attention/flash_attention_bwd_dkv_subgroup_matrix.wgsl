// Flash attention backward, second pass, on subgroup matrices (f16 x f16 -> f32, 16x16x16):
// dK and dV, same contract as flash_attention_bwd_dkv.wgsl:
//   q, dO [B,T,H,D] f16; k, v [B,T,KVH,D] f16; lse, delta [B,H,T] f32 -> dk, dv [B,T,KVH,D] f16,
//   summed over the H/KVH query heads of each kv head.
// A workgroup of 8 subgroups of 32 takes BC = 64 key/value rows of one kv head and, for every
// query head of the group, walks the query blocks of BR = 32 rows from the diagonal on. The
// subgroups pair up per 16 kv rows (rg = sg % 4) and split the work by hd = sg / 4:
//   hd 0 keeps its rows' K fragments in registers and forms S^T = K·Q^T,
//   hd 1 keeps V's and forms dP^T = V·dO^T,
// both to workgroup memory, where all invocations form P^T = exp(scale S^T - lse) and
// dS^T = P^T * (dP^T - delta) in f16; then each subgroup accumulates its half of the columns
// of dV += P^T·dO and dK += dS^T·Q in result fragments that live across the whole walk.
// The next block's Q and dO are read from storage into registers while a block is computed, and
// staged as words (consecutive invocations, consecutive words: no bank conflicts).
// D is a multiple of 32, at most 128.
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
@group(0) @binding(4) var<storage, read> dO: array<u32>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;
@group(0) @binding(6) var<storage, read> delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> dk: array<vec4<f16>>;
@group(0) @binding(8) var<storage, read_write> dv: array<vec4<f16>>;

const BC = 64u;
const BR = 32u;
const PAD = 8u;
const MAXD = 128u;
const XS = MAXD + PAD; // row stride of X in f16 (the launcher's D, padded)
const PS = BR + PAD; // row stride of P^T and dS^T in f16
const WORDS = 2u * BR * MAXD / 2u / 256u; // staged words per invocation per block, at most

// K, then V (64 rows) before the walk; then Q in rows 0..BR-1 and dO in rows BR..2BR-1.
var<workgroup> X: array<f16, BC * XS>;
// S^T [kv row][query row] in the first BC * BR, dP^T in the second; at the end output pieces.
var<workgroup> SD: array<f32, 2u * BC * BR>;
var<workgroup> Pt: array<f16, BC * PS>;
var<workgroup> dSt: array<f16, BC * PS>;
var<workgroup> lseS: array<f32, BR>;
var<workgroup> deltaS: array<f32, BR>;

fn putWord(r: u32, i: u32, w: u32) {
  let h = bitcast<vec2<f16>>(w);
  let at = r * XS + 2u * i;
  X[at] = h.x;
  X[at + 1u] = h.y;
}

// This invocation's words of Q rows q0..q0+BR-1 (staging rows 0..BR-1) and dO rows (BR..) of
// query head h; zero past T.
fn fetchBlock(q0: u32, b: u32, h: u32, tid: u32) -> array<u32, WORDS> {
  var out: array<u32, WORDS>;
  let half = D / 2u;
  for (var j = 0u; j < 2u * BR * half / 256u; j++) {
    let w = tid + j * 256u;
    let r = w / half;
    let t = q0 + r % BR;
    var x = 0u;
    if (t < p.T) {
      let at = ((b * p.T + t) * p.H + h) * half + w % half;
      if (r < BR) { x = q[at]; } else { x = dO[at]; }
    }
    out[j] = x;
  }
  return out;
}

fn putBlock(words: array<u32, WORDS>, tid: u32) {
  let half = D / 2u;
  for (var j = 0u; j < 2u * BR * half / 256u; j++) {
    let w = tid + j * 256u;
    putWord(w / half, w % half, words[j]);
  }
}

// Stages kv rows c0..c0+BC-1 of K (or V) into X.
fn stageKv(c0: u32, b: u32, g: u32, tid: u32, isV: bool) {
  let half = D / 2u;
  for (var w = tid; w < BC * half; w += 256u) {
    let t = c0 + w / half;
    var x = 0u;
    if (t < p.T) {
      let at = ((b * p.T + t) * p.KVH + g) * half + w % half;
      if (isV) { x = v[at]; } else { x = k[at]; }
    }
    putWord(w / half, w % half, x);
  }
}

// x · Y^T for the subgroup's 16 kv rows against staged rows y0..y0+15 (Q or dO), over D.
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
  if (D > 32u) { s = subgroupMatrixMultiplyAccumulate(f2, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 32u, XS), s); }
  if (D > 48u) { s = subgroupMatrixMultiplyAccumulate(f3, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 48u, XS), s); }
  if (D > 64u) { s = subgroupMatrixMultiplyAccumulate(f4, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 64u, XS), s); }
  if (D > 80u) { s = subgroupMatrixMultiplyAccumulate(f5, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 80u, XS), s); }
  if (D > 96u) { s = subgroupMatrixMultiplyAccumulate(f6, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 96u, XS), s); }
  if (D > 112u) { s = subgroupMatrixMultiplyAccumulate(f7, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&X, at + 112u, XS), s); }
  return s;
}

// acc + A·Y[:, col0 .. col0+15] over the block's BR = 32 staged rows y0.. (a0: rows 0..15, a1: 16..31).
fn times(
  acc: subgroup_matrix_result<f32, 16, 16>,
  a0: subgroup_matrix_left<f16, 16, 16>,
  a1: subgroup_matrix_left<f16, 16, 16>,
  y0: u32,
  col0: u32,
) -> subgroup_matrix_result<f32, 16, 16> {
  let y = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&X, y0 * XS + col0, XS);
  let z = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&X, (y0 + 16u) * XS + col0, XS);
  return subgroupMatrixMultiplyAccumulate(a1, z, subgroupMatrixMultiplyAccumulate(a0, y, acc));
}

// Writes columns c0 .. c0+31 of the subgroup's 16 rows (fragments a and b, columns c0 and
// c0 + 16) times `scale` into out (dk or dv), through the subgroup's part of SD.
fn writePair(
  a: subgroup_matrix_result<f32, 16, 16>,
  bf: subgroup_matrix_result<f32, 16, 16>,
  c0: u32,
  sg: u32,
  lane: u32,
  kvRow: u32,
  outBase: u32,
  scale: f32,
  toDk: bool,
) {
  subgroupMatrixStore<row_major>(&SD, sg * 512u, a, 32u);
  subgroupMatrixStore<row_major>(&SD, sg * 512u + 16u, bf, 32u);
  workgroupBarrier();
  if (kvRow < p.T) {
    let at = sg * 512u + (lane / 2u) * 32u + (lane % 2u) * 16u;
    let base = (outBase + c0 + (lane % 2u) * 16u) / 4u;
    for (var x = 0u; x < 4u; x++) {
      let val = vec4<f16>(vec4<f32>(SD[at + 4u * x], SD[at + 4u * x + 1u], SD[at + 4u * x + 2u], SD[at + 4u * x + 3u]) * scale);
      if (toDk) { dk[base + x] = val; } else { dv[base + x] = val; }
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
  let group = H / p.KVH;
  let g = wg.y;
  let b = wg.z;
  let c0 = wg.x * BC;
  let rg = sg % 4u; // the subgroup's 16 kv rows
  let hd = sg / 4u; // 0: S^T and columns 0..D/2-1; 1: dP^T and columns D/2..D-1
  let DH = D / 2u;
  let causal = p.causal != 0u;

  // K fragments, then V's for the hd = 1 subgroups.
  stageKv(c0, b, g, tid, false);
  workgroupBarrier();
  let xa = rg * 16u * XS;
  var f0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa, XS);
  var f1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 16u, XS);
  var f2 = f0; var f3 = f0; var f4 = f0; var f5 = f0; var f6 = f0; var f7 = f0;
  if (D > 32u) { f2 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 32u, XS); }
  if (D > 48u) { f3 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 48u, XS); }
  if (D > 64u) { f4 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 64u, XS); }
  if (D > 80u) { f5 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 80u, XS); }
  if (D > 96u) { f6 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 96u, XS); }
  if (D > 112u) { f7 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 112u, XS); }
  workgroupBarrier();
  stageKv(c0, b, g, tid, true);
  workgroupBarrier();
  let v0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa, XS);
  let v1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 16u, XS);
  var v2 = v0; var v3 = v0; var v4 = v0; var v5 = v0; var v6 = v0; var v7 = v0;
  if (D > 32u) { v2 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 32u, XS); }
  if (D > 48u) { v3 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 48u, XS); }
  if (D > 64u) { v4 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 64u, XS); }
  if (D > 80u) { v5 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 80u, XS); }
  if (D > 96u) { v6 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 96u, XS); }
  if (D > 112u) { v7 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, xa + 112u, XS); }
  if (hd == 1u) { f0 = v0; f1 = v1; f2 = v2; f3 = v3; f4 = v4; f5 = v5; f6 = v6; f7 = v7; }
  workgroupBarrier();

  var qbStart = 0u;
  if (causal) { qbStart = c0 / BR; }
  let qbEnd = (T + BR - 1u) / BR;
  let blocksPerHead = qbEnd - qbStart;
  let steps = group * blocksPerHead;

  // dV (a*) and dK (d*) for columns hd * DH + 16 * i.
  var a0 = subgroup_matrix_result<f32, 16, 16>();
  var a1 = a0; var a2 = a0; var a3 = a0; var d0 = a0; var d1 = a0; var d2 = a0; var d3 = a0;
  let colBase = hd * DH;
  var next = fetchBlock(qbStart * BR, b, g * group, tid);
  for (var step = 0u; step < steps; step++) {
    let h = g * group + step / blocksPerHead;
    let q0 = (qbStart + step % blocksPerHead) * BR;
    putBlock(next, tid);
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
    if (step + 1u < steps) {
      let hn = g * group + (step + 1u) / blocksPerHead;
      next = fetchBlock((qbStart + (step + 1u) % blocksPerHead) * BR, b, hn, tid);
    }
    // hd 0: S^T against Q (staged rows 0..); hd 1: dP^T against dO (staged rows BR..).
    let sd = hd * BC * BR + rg * 16u * BR;
    subgroupMatrixStore<row_major>(&SD, sd, rowsTimesStaged(hd * BR, f0, f1, f2, f3, f4, f5, f6, f7), BR);
    subgroupMatrixStore<row_major>(&SD, sd + 16u, rowsTimesStaged(hd * BR + 16u, f0, f1, f2, f3, f4, f5, f6, f7), BR);
    workgroupBarrier();
    // P^T and dS^T: invocation tid takes query column tid % BR of kv rows tid / BR + 8i.
    let c = tid % BR;
    let row = q0 + c;
    for (var i = 0u; i < BC / 8u; i++) {
      let r = tid / BR + 8u * i;
      let kvRow = c0 + r;
      let masked = row >= T || kvRow >= T || (causal && kvRow > row);
      let pr = select(exp(SD[r * BR + c] * p.scale - lseS[c]), 0.0, masked);
      Pt[r * PS + c] = f16(pr);
      dSt[r * PS + c] = f16(pr * (SD[BC * BR + r * BR + c] - deltaS[c]));
    }
    workgroupBarrier();
    let pt0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Pt, rg * 16u * PS, PS);
    let pt1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Pt, rg * 16u * PS + 16u, PS);
    let ds0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&dSt, rg * 16u * PS, PS);
    let ds1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&dSt, rg * 16u * PS + 16u, PS);
    a0 = times(a0, pt0, pt1, BR, colBase);
    d0 = times(d0, ds0, ds1, 0u, colBase);
    if (DH > 16u) {
      a1 = times(a1, pt0, pt1, BR, colBase + 16u);
      d1 = times(d1, ds0, ds1, 0u, colBase + 16u);
    }
    if (DH > 32u) {
      a2 = times(a2, pt0, pt1, BR, colBase + 32u);
      d2 = times(d2, ds0, ds1, 0u, colBase + 32u);
    }
    if (DH > 48u) {
      a3 = times(a3, pt0, pt1, BR, colBase + 48u);
      d3 = times(d3, ds0, ds1, 0u, colBase + 48u);
    }
    workgroupBarrier(); // the next block's staging overwrites Q and dO
  }

  let kvRow = c0 + rg * 16u + lane / 2u;
  let outBase = ((b * T + kvRow) * p.KVH + g) * D + colBase;
  writePair(a0, a1, 0u, sg, lane, kvRow, outBase, 1.0, false);
  writePair(d0, d1, 0u, sg, lane, kvRow, outBase, p.scale, true);
  if (DH > 32u) {
    writePair(a2, a3, 32u, sg, lane, kvRow, outBase, 1.0, false);
    writePair(d2, d3, 32u, sg, lane, kvRow, outBase, p.scale, true);
  }
}
