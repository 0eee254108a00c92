// Flash attention forward on subgroup matrices (f16 x f16 -> f32, 16x16x16 tensor-core fragments).
// Same contract as flash_attention_fwd.wgsl:
//   q [B,T,H,D], k and v [B,T,KVH,D], o [B,T,H,D] all f16; lse [B,H,T] f32; g = h / (H / KVH).
// A workgroup of 8 subgroups of 32 takes BR = 128 query rows of one head, 16 rows per subgroup,
// with the rows' Q fragments in registers (staged in two rounds of 64 rows), and walks the
// key/value rows in blocks of BC = 32, staged in workgroup memory one block ahead (the next
// block's words are read from storage into registers while this block's products run;
// consecutive invocations write consecutive words, so the staging stores meet no bank
// conflicts). Per block: S = Q·K^T as fragments, stored to
// workgroup memory; two invocations per query row form P = exp(scale * S - m) in f16 and the
// row sum l; O += P·V accumulates in result fragments.
// Fragments cannot be scaled row by row, so the reference max m of a row is raised only when a
// score passes it by more than RESCALE_AT (P stays below e^RESCALE_AT, well inside f16): then,
// and only then, the workgroup takes O's fragments through workgroup memory to rescale them.
// Real attention rows rarely trigger it after their first block. O / l is formed on the way out.
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
@group(0) @binding(1) var<storage, read> q: array<u32>; // 2 halves per element
@group(0) @binding(2) var<storage, read> k: array<u32>;
@group(0) @binding(3) var<storage, read> v: array<u32>;
@group(0) @binding(4) var<storage, read_write> o: array<vec4<f16>>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;

const BR = 128u;
const BC = 32u;
const PAD = 8u;
const MAXD = 128u;
const NEG = -1.0e30;
const RESCALE_AT = 8.0;
const SS = BC + 4u; // row stride of S in f32 (16-byte multiple; two invocations per row hit distinct banks)
const PS = BC + PAD; // row stride of P in f16

// Q (64 rows at a time) before the walk; then K in rows 0..BC-1 and V in rows BC..2BC-1; row stride D + PAD.
var<workgroup> KV: array<f16, 2u * BC * (MAXD + PAD)>;
var<workgroup> S: array<f32, BR * SS>; // scores [query row][kv row]; at the end output pieces
var<workgroup> Ps: array<f16, BR * PS>; // P of the block, [query row][kv row]
var<workgroup> rowAlpha: array<f32, BR>; // exp(m_old - m_new) of each row in this block
var<workgroup> rescaleFlags: array<u32, 8>; // per subgroup: some row's m rose this block

const WORDS = BC * MAXD / 2u / 256u; // words of one staged K (or V) block per invocation, at most

// Word i (of D / 2 per row) of row r of the staging area, as two halves.
fn putWord(r: u32, i: u32, w: u32) {
  let h = bitcast<vec2<f16>>(w);
  let at = r * (D + PAD) + 2u * i;
  KV[at] = h.x;
  KV[at + 1u] = h.y;
}

// This invocation's words of K (or V) rows c0..c0+BC-1 of kv head g; zero past T.
fn fetchBlock(c0: u32, b: u32, g: u32, tid: u32, isV: bool) -> array<u32, WORDS> {
  var out: array<u32, WORDS>;
  let half = D / 2u;
  for (var j = 0u; j < BC * half / 256u; j++) {
    let w = tid + j * 256u;
    let t = c0 + w / half;
    var x = 0u;
    if (t < p.T) {
      let at = ((b * p.T + t) * p.KVH + g) * half + w % half;
      if (isV) { x = v[at]; } else { x = k[at]; }
    }
    out[j] = x;
  }
  return out;
}

// Writes fetched words to staging rows row0..row0+BC-1.
fn putBlock(words: array<u32, WORDS>, row0: u32, tid: u32) {
  let half = D / 2u;
  for (var j = 0u; j < BC * half / 256u; j++) {
    let w = tid + j * 256u;
    putWord(row0 + w / half, w % half, words[j]);
  }
}

// Scores of the subgroup's 16 query rows against staged K rows n0..n0+15: Q·K^T over D.
fn scores(
  n0: u32,
  f0: subgroup_matrix_left<f16, 16, 16>, f1: subgroup_matrix_left<f16, 16, 16>,
  f2: subgroup_matrix_left<f16, 16, 16>, f3: subgroup_matrix_left<f16, 16, 16>,
  f4: subgroup_matrix_left<f16, 16, 16>, f5: subgroup_matrix_left<f16, 16, 16>,
  f6: subgroup_matrix_left<f16, 16, 16>, f7: subgroup_matrix_left<f16, 16, 16>,
) -> subgroup_matrix_result<f32, 16, 16> {
  let stride = D + PAD;
  let at = n0 * stride;
  var s = subgroup_matrix_result<f32, 16, 16>();
  s = subgroupMatrixMultiplyAccumulate(f0, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&KV, at, stride), s);
  if (D > 16u) { s = subgroupMatrixMultiplyAccumulate(f1, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&KV, at + 16u, stride), s); }
  if (D > 32u) { s = subgroupMatrixMultiplyAccumulate(f2, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&KV, at + 32u, stride), s); }
  if (D > 48u) { s = subgroupMatrixMultiplyAccumulate(f3, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&KV, at + 48u, stride), s); }
  if (D > 64u) { s = subgroupMatrixMultiplyAccumulate(f4, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&KV, at + 64u, stride), s); }
  if (D > 80u) { s = subgroupMatrixMultiplyAccumulate(f5, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&KV, at + 80u, stride), s); }
  if (D > 96u) { s = subgroupMatrixMultiplyAccumulate(f6, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&KV, at + 96u, stride), s); }
  if (D > 112u) { s = subgroupMatrixMultiplyAccumulate(f7, subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&KV, at + 112u, stride), s); }
  return s;
}

// acc + P·V[:, dn*16 ..] over the block's BC = 32 staged V rows (p0: kv rows 0..15, p1: 16..31).
fn pv(
  acc: subgroup_matrix_result<f32, 16, 16>,
  dn: u32,
  p0: subgroup_matrix_left<f16, 16, 16>,
  p1: subgroup_matrix_left<f16, 16, 16>,
) -> subgroup_matrix_result<f32, 16, 16> {
  let stride = D + PAD;
  let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&KV, BC * stride + dn * 16u, stride);
  let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&KV, (BC + 16u) * stride + dn * 16u, stride);
  return subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, acc));
}

// The fragment with each of the subgroup's 16 rows multiplied by its rowAlpha, through the
// subgroup's part of S.
fn rescaled(a: subgroup_matrix_result<f32, 16, 16>, sg: u32, lane: u32) -> subgroup_matrix_result<f32, 16, 16> {
  subgroupMatrixStore<row_major>(&S, sg * 16u * SS, a, SS);
  workgroupBarrier();
  let lrow = sg * 16u + lane / 2u;
  let alpha = rowAlpha[lrow];
  for (var c = (lane % 2u) * 8u; c < (lane % 2u) * 8u + 8u; c++) { S[lrow * SS + c] *= alpha; }
  workgroupBarrier();
  let out = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&S, sg * 16u * SS, SS);
  workgroupBarrier();
  return out;
}

// Writes output columns j*32 .. j*32+31 of the subgroup's rows (fragments a, b) times inv as f16.
fn writePair(
  j: u32,
  a: subgroup_matrix_result<f32, 16, 16>,
  bf: subgroup_matrix_result<f32, 16, 16>,
  sg: u32,
  lrow: u32,
  half: u32,
  out: u32,
  inv: f32,
  live: bool,
) {
  subgroupMatrixStore<row_major>(&S, sg * 16u * SS, a, SS);
  if (D > j * 32u + 16u) { subgroupMatrixStore<row_major>(&S, sg * 16u * SS + 16u, bf, SS); }
  workgroupBarrier();
  if (live && j * 32u + half * 16u < D) {
    let at = lrow * SS + half * 16u;
    let base = (out + j * 32u + half * 16u) / 4u;
    for (var x = 0u; x < 4u; x++) {
      o[base + x] = vec4<f16>(vec4<f32>(S[at + 4u * x], S[at + 4u * x + 1u], S[at + 4u * x + 2u], S[at + 4u * x + 3u]) * inv);
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
  let stride = D + PAD;
  let h = wg.y;
  let b = wg.z;
  let g = h / (H / p.KVH);
  // Last query block first: under the causal mask it has the most keys to walk, so the
  // longest workgroups start earliest.
  let q0 = ((T + BR - 1u) / BR - 1u - wg.x) * BR;
  let rr = lane / 2u; // this invocation's query row within the subgroup's 16
  let half = lane % 2u; // and which of the row's interleaved columns it takes: half, half + 2, ...
  let lrow = sg * 16u + rr;
  let row = q0 + lrow;
  let causal = p.causal != 0u;

  let qa = (sg % 4u) * 16u * stride;
  var f0 = subgroup_matrix_left<f16, 16, 16>();
  var f1 = f0; var f2 = f0; var f3 = f0; var f4 = f0; var f5 = f0; var f6 = f0; var f7 = f0;
  for (var round = 0u; round < 2u; round++) {
    for (var i = tid; i < 64u * D / 2u; i += 256u) {
      let t = q0 + round * 64u + i / (D / 2u);
      var w = 0u;
      if (t < T) { w = q[((b * T + t) * H + h) * (D / 2u) + i % (D / 2u)]; }
      putWord(i / (D / 2u), i % (D / 2u), w);
    }
    workgroupBarrier();
    let e0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&KV, qa, stride);
    var e1 = e0; var e2 = e0; var e3 = e0; var e4 = e0; var e5 = e0; var e6 = e0; var e7 = e0;
    if (D > 16u) { e1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&KV, qa + 16u, stride); }
    if (D > 32u) { e2 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&KV, qa + 32u, stride); }
    if (D > 48u) { e3 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&KV, qa + 48u, stride); }
    if (D > 64u) { e4 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&KV, qa + 64u, stride); }
    if (D > 80u) { e5 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&KV, qa + 80u, stride); }
    if (D > 96u) { e6 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&KV, qa + 96u, stride); }
    if (D > 112u) { e7 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&KV, qa + 112u, stride); }
    if (sg / 4u == round) { f0 = e0; f1 = e1; f2 = e2; f3 = e3; f4 = e4; f5 = e5; f6 = e6; f7 = e7; }
    workgroupBarrier();
  }

  var kvEnd = T;
  if (causal) { kvEnd = min(q0 + BR, T); }
  let blocks = (kvEnd + BC - 1u) / BC;

  // K runs one block ahead of V in the staging area, so a block needs two barriers: after S (K
  // free: the next K and this block's V go in) and after P (the uniform load of the flags).
  var m = NEG;
  var l = 0.0; // this invocation's half of the row sum, relative to m
  var o0 = subgroup_matrix_result<f32, 16, 16>();
  var o1 = o0; var o2 = o0; var o3 = o0; var o4 = o0; var o5 = o0; var o6 = o0; var o7 = o0;
  putBlock(fetchBlock(0u, b, g, tid, false), 0u, tid);
  var nextK = fetchBlock(BC, b, g, tid, false);
  var nextV = fetchBlock(0u, b, g, tid, true);
  workgroupBarrier();
  for (var jb = 0u; jb < blocks; jb++) {
    let c0 = jb * BC;
    subgroupMatrixStore<row_major>(&S, sg * 16u * SS, scores(0u, f0, f1, f2, f3, f4, f5, f6, f7), SS);
    subgroupMatrixStore<row_major>(&S, sg * 16u * SS + 16u, scores(16u, f0, f1, f2, f3, f4, f5, f6, f7), SS);
    workgroupBarrier();
    if (jb + 1u < blocks) { putBlock(nextK, 0u, tid); }
    putBlock(nextV, BC, tid);
    var mx = NEG;
    for (var cc = 0u; cc < BC / 2u; cc++) {
      let c = half + 2u * cc;
      let t = c0 + c;
      if (t < T && !(causal && t > row)) { mx = max(mx, S[lrow * SS + c] * p.scale); }
    }
    mx = max(mx, subgroupShuffleXor(mx, 1u));
    var mNew = m;
    if (mx > m + RESCALE_AT) { mNew = mx; } // both invocations of the row agree
    let alpha = exp(m - mNew);
    var ls = 0.0;
    for (var cc = 0u; cc < BC / 2u; cc++) {
      let c = half + 2u * cc;
      let t = c0 + c;
      let masked = t >= T || (causal && t > row);
      let pr = select(exp(S[lrow * SS + c] * p.scale - mNew), 0.0, masked);
      ls += pr;
      Ps[lrow * PS + c] = f16(pr);
    }
    l = l * alpha + ls;
    // O is still zero while m is NEG, so only a raised m of a row that saw scores counts.
    let rescale = subgroupAny(m > NEG && mNew > m);
    m = mNew;
    if (half == 0u) { rowAlpha[lrow] = alpha; }
    if (lane == 0u) { rescaleFlags[sg] = select(0u, 1u, rescale); }
    let flags = workgroupUniformLoad(&rescaleFlags); // also publishes P, the next K and this V
    if (flags[0] + flags[1] + flags[2] + flags[3] + flags[4] + flags[5] + flags[6] + flags[7] != 0u) {
      o0 = rescaled(o0, sg, lane);
      if (D > 16u) { o1 = rescaled(o1, sg, lane); }
      if (D > 32u) { o2 = rescaled(o2, sg, lane); }
      if (D > 48u) { o3 = rescaled(o3, sg, lane); }
      if (D > 64u) { o4 = rescaled(o4, sg, lane); }
      if (D > 80u) { o5 = rescaled(o5, sg, lane); }
      if (D > 96u) { o6 = rescaled(o6, sg, lane); }
      if (D > 112u) { o7 = rescaled(o7, sg, lane); }
    }
    if (jb + 2u < blocks) { nextK = fetchBlock(c0 + 2u * BC, b, g, tid, false); }
    if (jb + 1u < blocks) { nextV = fetchBlock(c0 + BC, b, g, tid, true); }
    let p0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Ps, sg * 16u * PS, PS);
    let p1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&Ps, sg * 16u * PS + 16u, PS);
    o0 = pv(o0, 0u, p0, p1);
    if (D > 16u) { o1 = pv(o1, 1u, p0, p1); }
    if (D > 32u) { o2 = pv(o2, 2u, p0, p1); }
    if (D > 48u) { o3 = pv(o3, 3u, p0, p1); }
    if (D > 64u) { o4 = pv(o4, 4u, p0, p1); }
    if (D > 80u) { o5 = pv(o5, 5u, p0, p1); }
    if (D > 96u) { o6 = pv(o6, 6u, p0, p1); }
    if (D > 112u) { o7 = pv(o7, 7u, p0, p1); }
  }
  workgroupBarrier(); // the output pieces below reuse S
  let total = l + subgroupShuffleXor(l, 1u);
  let rowLse = m + log(total);

  let live = row < T;
  let out = ((b * T + row) * H + h) * D;
  writePair(0u, o0, o1, sg, lrow, half, out, 1.0 / total, live);
  if (D > 32u) { writePair(1u, o2, o3, sg, lrow, half, out, 1.0 / total, live); }
  if (D > 64u) { writePair(2u, o4, o5, sg, lrow, half, out, 1.0 / total, live); }
  if (D > 96u) { writePair(3u, o6, o7, sg, lrow, half, out, 1.0 / total, live); }
  if (live && half == 0u) { lse[(b * H + h) * T + row] = rowLse; }
}
