// Flash attention backward on subgroup matrices (f16 x f16 -> f32, 16x16x16 tensor-core fragments),
// two entry points with the contracts of the portable kernels:
//   dq  (flash_attention_bwd_dq.wgsl):  delta = rowsum(dO * o) and dq,
//   dkv (flash_attention_bwd_dkv.wgsl): dk and dv, summed over the H/KVH query heads of each kv head.
//   q, o, dO, dq [B,T,H,D] f16; k, v, dk, dv [B,T,KVH,D] f16; lse, delta [B,H,T] f32.
// A workgroup of 8 subgroups of 32 takes ROWS = 64 rows (dq: query rows of one head; dkv: kv rows
// of one kv head) and walks blocks of BLOCK = 32 rows of the other side (dq: kv blocks up to the
// diagonal; dkv: the query blocks of every query head of the group from the diagonal on). The
// subgroups pair up per 16 rows (rg = sg % 4) and split the work by hd = sg / 4:
//   hd 0 keeps its rows' Q (dkv: K) fragments in registers and forms S = Q·K^T (S^T = K·Q^T),
//   hd 1 keeps dO's (V's) and forms dP = dO·V^T (dP^T = V·dO^T),
// both to workgroup memory, where all invocations form dS = P * (dP - delta) (and P^T for dkv) in
// f16 with P = exp(scale S - lse); then each subgroup accumulates its half of D of dQ += dS·K
// (dV += P^T·dO and dK += dS^T·Q) in result fragments that live across the whole walk.
// The next block's two matrices are read from storage into registers while a block is computed,
// and staged as words (consecutive invocations, consecutive words: no bank conflicts).
// D is a multiple of 64, at most 128.
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
@group(0) @binding(6) var<storage, read_write> delta: array<f32>; // written by dq, read by dkv
// dq
@group(0) @binding(7) var<storage, read> dq_o: array<u32>;
@group(0) @binding(8) var<storage, read_write> dq_dq: array<vec4<f16>>;
// dkv
@group(0) @binding(7) var<storage, read_write> dkv_dk: array<vec4<f16>>;
@group(0) @binding(8) var<storage, read_write> dkv_dv: array<vec4<f16>>;

const ROWS = 64u;
const BLOCK = 32u;
const PAD = 8u;
const MAXD = 128u;
const XS = MAXD + PAD; // row stride of X in f16
const PS = BLOCK + PAD; // row stride of dS and P^T in f16
const WORDS = BLOCK * MAXD / 2u / 256u; // words of one staged 32-row matrix block per invocation, at most

// The workgroup's two matrices (64 rows) in turn before the walk; then the block's two: rows
// 0..BLOCK-1 and BLOCK..2BLOCK-1.
var<workgroup> X: array<f16, ROWS * XS>;
// [row][block row]: S (S^T) in the first ROWS * BLOCK, dP (dP^T) in the second; at the end
// output pieces, 16 rows x 32 columns per subgroup.
var<workgroup> SD: array<f32, 2u * ROWS * BLOCK>;
var<workgroup> dS: array<f16, ROWS * PS>; // dS (dS^T), [row][block row]
var<workgroup> Pt: array<f16, ROWS * PS>; // dkv: P^T, [kv row][query row]
var<workgroup> lseS: array<f32, ROWS>; // dq: per query row; dkv: per query row of the block
var<workgroup> deltaS: array<f32, ROWS>;
var<workgroup> part: array<f32, 256>; // dq: partial sums of delta

fn putWord(r: u32, i: u32, w: u32) {
  let h = bitcast<vec2<f16>>(w);
  let at = r * XS + 2u * i;
  X[at] = h.x;
  X[at + 1u] = h.y;
}

// This invocation's words of rows t0..t0+BLOCK-1 of head `head` (of `heads`) of q, k, v or dO
// (src 0, 1, 2, 3); zero past T.
fn fetchBlock(t0: u32, b: u32, head: u32, heads: u32, src: u32, tid: u32) -> array<u32, WORDS> {
  var out: array<u32, WORDS>;
  let half = D / 2u;
  for (var j = 0u; j < BLOCK * half / 256u; j++) {
    let w = tid + j * 256u;
    let t = t0 + w / half;
    var x = 0u;
    if (t < p.T) {
      let at = ((b * p.T + t) * heads + head) * half + w % half;
      switch src {
        case 0u: { x = q[at]; }
        case 1u: { x = k[at]; }
        case 2u: { x = v[at]; }
        default: { x = dO[at]; }
      }
    }
    out[j] = x;
  }
  return out;
}

// Writes fetched words to staging rows row0..row0+BLOCK-1.
fn putBlock(words: array<u32, WORDS>, row0: u32, tid: u32) {
  let half = D / 2u;
  for (var j = 0u; j < BLOCK * half / 256u; j++) {
    let w = tid + j * 256u;
    putWord(row0 + w / half, w % half, words[j]);
  }
}

// Stages rows t0..t0+ROWS-1 of one matrix (as fetchBlock) into X.
fn stageRows(t0: u32, b: u32, head: u32, heads: u32, src: u32, tid: u32) {
  putBlock(fetchBlock(t0, b, head, heads, src, tid), 0u, tid);
  putBlock(fetchBlock(t0 + BLOCK, b, head, heads, src, tid), BLOCK, tid);
}

fn fragment(at: u32) -> subgroup_matrix_left<f16, 16, 16> {
  return subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&X, at, XS);
}

// The subgroup's 16 rows (fragments f*) times Y^T for staged rows y0..y0+15, over D.
fn timesStagedT(
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

// Subgroup (rg, hd)'s 16 rows times the block's staged rows of its side (hd 0: rows 0..BLOCK-1,
// hd 1: rows BLOCK..), transposed: S (S^T) or dP (dP^T), 16 x BLOCK f32 into SD.
fn storeScores(
  hd: u32,
  rg: u32,
  f0: subgroup_matrix_left<f16, 16, 16>, f1: subgroup_matrix_left<f16, 16, 16>,
  f2: subgroup_matrix_left<f16, 16, 16>, f3: subgroup_matrix_left<f16, 16, 16>,
  f4: subgroup_matrix_left<f16, 16, 16>, f5: subgroup_matrix_left<f16, 16, 16>,
  f6: subgroup_matrix_left<f16, 16, 16>, f7: subgroup_matrix_left<f16, 16, 16>,
) {
  let sd = hd * ROWS * BLOCK + rg * 16u * BLOCK;
  subgroupMatrixStore<row_major>(&SD, sd, timesStagedT(hd * BLOCK, f0, f1, f2, f3, f4, f5, f6, f7), BLOCK);
  subgroupMatrixStore<row_major>(&SD, sd + 16u, timesStagedT(hd * BLOCK + 16u, f0, f1, f2, f3, f4, f5, f6, f7), BLOCK);
}

// acc + A·Y[:, col0 .. col0+15] over BLOCK = 32 staged rows y0.. (a0: rows 0..15, a1: 16..31).
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

// This invocation's 16 values of fragments a (columns 0..15) and bf (16..31) side by side: row
// lane / 2, columns (lane % 2) * 16 .., through the subgroup's part of SD.
fn pairRow(
  a: subgroup_matrix_result<f32, 16, 16>,
  bf: subgroup_matrix_result<f32, 16, 16>,
  sg: u32,
  lane: u32,
) -> array<vec4<f32>, 4> {
  subgroupMatrixStore<row_major>(&SD, sg * 512u, a, 32u);
  subgroupMatrixStore<row_major>(&SD, sg * 512u + 16u, bf, 32u);
  workgroupBarrier();
  let at = sg * 512u + (lane / 2u) * 32u + (lane % 2u) * 16u;
  var out: array<vec4<f32>, 4>;
  for (var x = 0u; x < 4u; x++) {
    out[x] = vec4<f32>(SD[at + 4u * x], SD[at + 4u * x + 1u], SD[at + 4u * x + 2u], SD[at + 4u * x + 3u]);
  }
  workgroupBarrier();
  return out;
}

@compute @workgroup_size(256)
fn dq(
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
  let q0 = ((T + ROWS - 1u) / ROWS - 1u - wg.x) * ROWS;
  let rg = sg % 4u; // the subgroup's 16 query rows
  let hd = sg / 4u; // 0: S and dq columns 0..D/2-1; 1: dP and columns D/2..D-1
  let DH = D / 2u;
  let causal = p.causal != 0u;

  // delta = rowsum(dO * o): four invocations per row, D/4 columns each.
  {
    let t = q0 + tid / 4u;
    var partial = 0.0;
    if (t < T) {
      let base = ((b * T + t) * H + h) * (D / 2u) + (tid % 4u) * (D / 8u);
      for (var e = 0u; e < D / 8u; e++) {
        partial += dot(vec2<f32>(bitcast<vec2<f16>>(dO[base + e])), vec2<f32>(bitcast<vec2<f16>>(dq_o[base + e])));
      }
    }
    part[tid] = partial;
    workgroupBarrier();
    if (tid < ROWS) {
      let dl = part[4u * tid] + part[4u * tid + 1u] + part[4u * tid + 2u] + part[4u * tid + 3u];
      var ls = 0.0;
      if (q0 + tid < T) {
        ls = lse[(b * H + h) * T + q0 + tid];
        delta[(b * H + h) * T + q0 + tid] = dl;
      }
      deltaS[tid] = dl;
      lseS[tid] = ls;
    }
  }

  // Q fragments (staged first), or dO's for the hd = 1 subgroups.
  let xa = rg * 16u * XS;
  var f0 = subgroup_matrix_left<f16, 16, 16>();
  var f1 = f0; var f2 = f0; var f3 = f0; var f4 = f0; var f5 = f0; var f6 = f0; var f7 = f0;
  for (var round = 0u; round < 2u; round++) {
    stageRows(q0, b, h, H, select(0u, 3u, round == 1u), tid);
    workgroupBarrier();
    // Columns past D read the stale rest of the rows; those fragments go unused when D = 64.
    let e0 = fragment(xa); let e1 = fragment(xa + 16u); let e2 = fragment(xa + 32u); let e3 = fragment(xa + 48u);
    let e4 = fragment(xa + 64u); let e5 = fragment(xa + 80u); let e6 = fragment(xa + 96u); let e7 = fragment(xa + 112u);
    if (hd == round) { f0 = e0; f1 = e1; f2 = e2; f3 = e3; f4 = e4; f5 = e5; f6 = e6; f7 = e7; }
    workgroupBarrier();
  }

  var kvEnd = T;
  if (causal) { kvEnd = min(q0 + ROWS, T); }
  let blocks = (kvEnd + BLOCK - 1u) / BLOCK;

  var a0 = subgroup_matrix_result<f32, 16, 16>();
  var a1 = a0; var a2 = a0; var a3 = a0;
  let colBase = hd * DH;
  var nextK = fetchBlock(0u, b, g, p.KVH, 1u, tid);
  var nextV = fetchBlock(0u, b, g, p.KVH, 2u, tid);
  for (var jb = 0u; jb < blocks; jb++) {
    let c0 = jb * BLOCK;
    putBlock(nextK, 0u, tid);
    putBlock(nextV, BLOCK, tid);
    workgroupBarrier();
    if (jb + 1u < blocks) {
      nextK = fetchBlock(c0 + BLOCK, b, g, p.KVH, 1u, tid);
      nextV = fetchBlock(c0 + BLOCK, b, g, p.KVH, 2u, tid);
    }
    // hd 0: S against K (staged rows 0..); hd 1: dP against V (staged rows BLOCK..).
    storeScores(hd, rg, f0, f1, f2, f3, f4, f5, f6, f7);
    workgroupBarrier();
    // dS: invocation tid takes kv column tid % BLOCK of query rows tid / BLOCK + 8i.
    let c = tid % BLOCK;
    let t = c0 + c;
    for (var i = 0u; i < ROWS / 8u; i++) {
      let r = tid / BLOCK + 8u * i;
      let row = q0 + r;
      let masked = row >= T || t >= T || (causal && t > row);
      let pr = select(exp(SD[r * BLOCK + c] * p.scale - lseS[r]), 0.0, masked);
      dS[r * PS + c] = f16(pr * (SD[ROWS * BLOCK + r * BLOCK + c] - deltaS[r]));
    }
    workgroupBarrier();
    let s0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&dS, rg * 16u * PS, PS);
    let s1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&dS, rg * 16u * PS + 16u, PS);
    a0 = times(a0, s0, s1, 0u, colBase);
    a1 = times(a1, s0, s1, 0u, colBase + 16u);
    if (DH > 32u) {
      a2 = times(a2, s0, s1, 0u, colBase + 32u);
      a3 = times(a3, s0, s1, 0u, colBase + 48u);
    }
    workgroupBarrier(); // the next block's staging overwrites K and V
  }

  let row = q0 + rg * 16u + lane / 2u;
  let base = (((b * T + row) * H + h) * D + colBase + (lane % 2u) * 16u) / 4u;
  let x0 = pairRow(a0, a1, sg, lane);
  if (row < T) {
    for (var i = 0u; i < 4u; i++) { dq_dq[base + i] = vec4<f16>(x0[i] * p.scale); }
  }
  if (DH > 32u) {
    let x1 = pairRow(a2, a3, sg, lane);
    if (row < T) {
      for (var i = 0u; i < 4u; i++) { dq_dq[base + 8u + i] = vec4<f16>(x1[i] * p.scale); }
    }
  }
}

@compute @workgroup_size(256)
fn dkv(
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
  let c0 = wg.x * ROWS;
  let rg = sg % 4u; // the subgroup's 16 kv rows
  let hd = sg / 4u; // 0: S^T and columns 0..D/2-1; 1: dP^T and columns D/2..D-1
  let DH = D / 2u;
  let causal = p.causal != 0u;

  // K fragments (staged first), or V's for the hd = 1 subgroups.
  let xa = rg * 16u * XS;
  var f0 = subgroup_matrix_left<f16, 16, 16>();
  var f1 = f0; var f2 = f0; var f3 = f0; var f4 = f0; var f5 = f0; var f6 = f0; var f7 = f0;
  for (var round = 0u; round < 2u; round++) {
    stageRows(c0, b, g, p.KVH, 1u + round, tid);
    workgroupBarrier();
    // Columns past D read the stale rest of the rows; those fragments go unused when D = 64.
    let e0 = fragment(xa); let e1 = fragment(xa + 16u); let e2 = fragment(xa + 32u); let e3 = fragment(xa + 48u);
    let e4 = fragment(xa + 64u); let e5 = fragment(xa + 80u); let e6 = fragment(xa + 96u); let e7 = fragment(xa + 112u);
    if (hd == round) { f0 = e0; f1 = e1; f2 = e2; f3 = e3; f4 = e4; f5 = e5; f6 = e6; f7 = e7; }
    workgroupBarrier();
  }

  var qbStart = 0u;
  if (causal) { qbStart = c0 / BLOCK; }
  let qbEnd = (T + BLOCK - 1u) / BLOCK;
  let blocksPerHead = qbEnd - qbStart;
  let steps = group * blocksPerHead;

  // dV (a*) and dK (d*) for columns hd * DH + 16 * i.
  var a0 = subgroup_matrix_result<f32, 16, 16>();
  var a1 = a0; var a2 = a0; var a3 = a0; var d0 = a0; var d1 = a0; var d2 = a0; var d3 = a0;
  let colBase = hd * DH;
  var nextQ = fetchBlock(qbStart * BLOCK, b, g * group, H, 0u, tid);
  var nextDo = fetchBlock(qbStart * BLOCK, b, g * group, H, 3u, tid);
  for (var step = 0u; step < steps; step++) {
    let h = g * group + step / blocksPerHead;
    let q0 = (qbStart + step % blocksPerHead) * BLOCK;
    putBlock(nextQ, 0u, tid);
    putBlock(nextDo, BLOCK, tid);
    if (tid < BLOCK) {
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
      let qn = (qbStart + (step + 1u) % blocksPerHead) * BLOCK;
      nextQ = fetchBlock(qn, b, hn, H, 0u, tid);
      nextDo = fetchBlock(qn, b, hn, H, 3u, tid);
    }
    // hd 0: S^T against Q (staged rows 0..); hd 1: dP^T against dO (staged rows BLOCK..).
    storeScores(hd, rg, f0, f1, f2, f3, f4, f5, f6, f7);
    workgroupBarrier();
    // P^T and dS^T: invocation tid takes query column tid % BLOCK of kv rows tid / BLOCK + 8i.
    let c = tid % BLOCK;
    let row = q0 + c;
    for (var i = 0u; i < ROWS / 8u; i++) {
      let r = tid / BLOCK + 8u * i;
      let kvRow = c0 + r;
      let masked = row >= T || kvRow >= T || (causal && kvRow > row);
      let pr = select(exp(SD[r * BLOCK + c] * p.scale - lseS[c]), 0.0, masked);
      Pt[r * PS + c] = f16(pr);
      dS[r * PS + c] = f16(pr * (SD[ROWS * BLOCK + r * BLOCK + c] - deltaS[c]));
    }
    workgroupBarrier();
    let pt0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Pt, rg * 16u * PS, PS);
    let pt1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Pt, rg * 16u * PS + 16u, PS);
    let ds0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&dS, rg * 16u * PS, PS);
    let ds1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&dS, rg * 16u * PS + 16u, PS);
    a0 = times(a0, pt0, pt1, BLOCK, colBase);
    d0 = times(d0, ds0, ds1, 0u, colBase);
    a1 = times(a1, pt0, pt1, BLOCK, colBase + 16u);
    d1 = times(d1, ds0, ds1, 0u, colBase + 16u);
    if (DH > 32u) {
      a2 = times(a2, pt0, pt1, BLOCK, colBase + 32u);
      d2 = times(d2, ds0, ds1, 0u, colBase + 32u);
      a3 = times(a3, pt0, pt1, BLOCK, colBase + 48u);
      d3 = times(d3, ds0, ds1, 0u, colBase + 48u);
    }
    workgroupBarrier(); // the next block's staging overwrites Q and dO
  }

  let kvRow = c0 + rg * 16u + lane / 2u;
  let base = (((b * T + kvRow) * p.KVH + g) * D + colBase + (lane % 2u) * 16u) / 4u;
  let v0 = pairRow(a0, a1, sg, lane);
  let k0 = pairRow(d0, d1, sg, lane);
  if (kvRow < T) {
    for (var i = 0u; i < 4u; i++) {
      dkv_dv[base + i] = vec4<f16>(v0[i]);
      dkv_dk[base + i] = vec4<f16>(k0[i] * p.scale);
    }
  }
  if (DH > 32u) {
    let v1 = pairRow(a2, a3, sg, lane);
    let k1 = pairRow(d2, d3, sg, lane);
    if (kvRow < T) {
      for (var i = 0u; i < 4u; i++) {
        dkv_dv[base + 8u + i] = vec4<f16>(v1[i]);
        dkv_dk[base + 8u + i] = vec4<f16>(k1[i] * p.scale);
      }
    }
  }
}
