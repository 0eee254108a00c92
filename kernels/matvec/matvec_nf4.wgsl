// Matrix-vector product with an NF4 weight (kernels/nf4 layout), portable (no subgroups):
//   y[p.y_off + o] = alpha * sum_i W[o, i] x[i] + alpha2 * sum_k W2[o, k] x2[p.x2_off + k] + beta * y[p.y_off + o]   (o < OUT)
// W NF4 [OUT, IN] with IN % 32 == 0: row o is the 16-byte code words o*NW .. o*NW + NW - 1
// (NW = IN / 32, 32 codes each, element 2k in the HIGH nibble of byte k), and a word lies inside
// one 64-block: absmax[b] = dynmap[absmax code b] * nested[1 + b / 256] + nested[0];
// W[o, i] = NF4[code] * absmax. W2 f16 [OUT, K2] row-major (K2 = 0: no second product),
// x f16 [IN], x2 f16 [x2_off + K2].
//
// Work split: a team of TEAM threads (a power of two, 32..256) computes RPT = 4 consecutive rows;
// 256 / TEAM teams per workgroup. Thread t of a team owns the word pairs (2q, 2q + 1) of every row
// for q = t, t + TEAM, ...: it reads those 64 elements of x once (as f16 pairs, divided by 4) and
// keeps them in registers for its 4 rows, issues the 8 code-word loads of the 4 rows (32 contiguous
// bytes per row, so a team reads whole contiguous spans of each row) before the arithmetic, and
// computes the block scale once per pair where IN % 64 == 0 (both words in one block). Products in
// packed f16: each code byte (two codes) decodes through a 256-entry table of f16 pairs in
// workgroup memory (the codebook rounded to f16, NF4_F16), multiplies the matching pair of x in one
// vec2<f16> operation, and four such products are summed in f16 before the f32 sums. x enters
// divided by 4 (exact but for f16 subnormals) and the block scale is multiplied by 4 (exact), so no
// sum of four products can overflow f16 for any finite x: |code| <= 1. Rounding: each product and
// partial sum to f16 (relative 2^-11 of the terms, the precision of an f16-dequantized weight),
// which halves the instructions per weight against f32 products (H100 decode step: bench/NOTES.md).
// The absmax codes decode through the dynamic map in workgroup memory. f32 partial sums of the 4
// rows as one vec4, reduced through workgroup memory: a tree within each 32 invocations, then the
// team's TEAM / 32 sums in order. Rows past OUT load row OUT - 1 and are never written; every load
// is in bounds. beta 0 never reads y.
//
// Entry `qkv`: the q, k and v projections of an attention layer at one position in one pass, q and
// k with their rotary embedding (as `rope`), k and v into their KV-cache rows:
//   q rows 0 .. OUT-1        -> y[row], rotated
//   k rows 0 .. kv_rows-1    -> kc[pos * kv_rows + row], rotated
//   v rows 0 .. kv_rows-1    -> vc[pos * kv_rows + row]
// where pos = position[0], read when the dispatch runs (so one recorded dispatch serves every
// position), and nothing is written to the caches when pos >= cache_rows.
// each value computed by the operations, in the order, of `rope` (q, k) or `main` (v) for its
// projection alone (the same bits where the compiler contracts alike). The projections keep
// their code words (codes, codes_k, codes_v); absq holds their absmax codes one after another in
// row order (q, k, v), nested their nested scales the same way (without the mean offsets), and
// dynmap their three dynamic maps then their three mean offsets (771 f32), so that a block's index
// among all three rows locates its scale; every projection's blocks are a multiple of 256. LoRA: w2
// the three B factors stacked [OUT + 2 kv_rows, K2] (zero rows for one without LoRA), reading x2 from
// x2_off (q), x2_off_k and x2_off_v, scaled by alpha2, alpha2_k and alpha2_v. IN % 64 == 0; OUT and
// kv_rows are multiples of D. alpha 1, beta 0.
//
// Entry `swiglu`: the gate and up projections of a Llama MLP in one pass, and their SwiGLU:
//   g = f16(sum_i G[o, i] x[i] + alpha2 * sum_k BG[o, k] x2[p.x2_off + k])
//   u = f16(sum_i U[o, i] x[i] + alpha2 * sum_k BU[o, k] x2[p.x2_off_u + k])
//   y[p.y_off + o] = f16(g * sigmoid(g) * u)        (f32 inside, as kernels/swiglu; o < OUT)
// G (codes, absq, nested, dynmap) and U (codes_u, absq_u, nested_u, dynmap_u) NF4 [OUT, IN],
// BG (w2) and BU (w2_u) f16 [OUT, K2] (K2 = 0: no LoRA products). A team of TEAM threads computes
// RPT rows of both weights; thread t owns the code words t, t + TEAM, ... of its rows and converts
// each 32-element slice of x once for the 2 * RPT rows. alpha and beta are not used.
//
// NORMED (entries `qkv` and `swiglu`, without LoRA products: K2 = 0): the products read the RMSNorm
// h = res * r * nw of a residual row res (r = inverseSqrt(mean(res^2) + eps), nw the norm's weight) by
// linearity: y[o] = r * sum_i W[o, i] (res[i] * nw[i]). x holds xw = f16(res * nw * 2^-k / 4), which
// the product that wrote res wrote beside it (entry `scaled`), so the products read it as they read
// x / 4 otherwise: nw * 2^-k / 4 (k >= 0 with max |nw| * 2^-k <= 1) stands in for x's division by
// 4 and the bound on the f16 sums of four products holds as above; norm_mul = 2^k. The sum of
// squares of res (binding resid) is taken by the workgroup's invocations, each vec4 word once, and
// reduced with the row sums, so the norm needs no dispatch of its own. Rounding: one f16 rounding of
// res * nw * 2^-k / 4 per element where the separate norm rounds res * r and then its product with
// nw to f16 (both 2^-11 relative), and r from this workgroup's order of the f32 sum of squares.
//
// Entry `scaled`: `main` into an f16 residual stream (beta 1) that also writes the weighted input of
// the norm that reads it next: xw[o] = f16(y[o]) * nwn[o] (f16), nwn the next norm's weight times
// 2^-k / 4 as above.
enable f16;

struct Params {
  OUT: u32,
  IN: u32,
  K2: u32,
  gx: u32,
  alpha: f32,
  alpha2: f32,
  beta: f32,
  y_off: u32, // elements of y before row 0
  x2_off: u32, // elements of x2 before its first
  x2_off_u: u32, // swiglu: elements of x2 before the up projection's first
  D: u32, // rope, qkv: head dimension (a multiple of 4)
  kv_rows: u32, // qkv: rows of k and of v (each); OUT is q's
  x2_off_k: u32, // qkv: elements of x2 before k's and v's LoRA inputs (x2_off: q's)
  x2_off_v: u32,
  cache_rows: u32, // qkv: rows of the k and v caches
  alpha2_k: f32, // qkv: LoRA scales of k and v (alpha2: q's)
  alpha2_v: f32,
  norm_eps: f32, // NORMED: the RMSNorm's epsilon
  norm_mul: f32, // NORMED: 2^k of the scaled norm weight
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> codes: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> absq: array<u32>;
@group(0) @binding(4) var<storage, read> nested: array<f32>;
@group(0) @binding(5) var<storage, read> dynmap: array<f32>;
@group(0) @binding(6) var<storage, read> w2: array<f16>;
@group(0) @binding(7) var<storage, read> x2: array<f16>;
@group(0) @binding(8) var<storage, read_write> y: array<{{OUT}}>;
// swiglu: the up projection's weight and LoRA factor.
@group(0) @binding(9) var<storage, read> codes_u: array<vec4<u32>>;
@group(0) @binding(10) var<storage, read> absq_u: array<u32>;
@group(0) @binding(11) var<storage, read> nested_u: array<f32>;
@group(0) @binding(12) var<storage, read> w2_u: array<f16>;
@group(0) @binding(13) var<storage, read> dynmap_u: array<f32>;
// qkv, swiglu: the residual row whose norm x holds weighted (NORMED; otherwise bound to x and not
// read), f16 [IN].
@group(0) @binding(14) var<storage, read> resid: array<vec4<u32>>;

/** Threads per team (one team per RPT rows): a power of two, 32..256. */
override TEAM: u32 = 64u;
/** qkv, swiglu: x holds the weighted residual row xw and the products read its RMSNorm (see above). */
override NORMED: bool = false;

const WG = 256u;
const RPT = 4u;

// NF4_F16 (array<f16, 16>, the codebook rounded to f16) is appended by the launcher (NF4_F16_WGSL).

// Code byte -> (value of its high nibble, value of its low nibble): element 2k of a row (the high
// nibble) meets x's element 2k.
var<workgroup> lut2: array<vec2<f16>, 256>;
var<workgroup> dyn: array<f32, 256>;
var<workgroup> dyn_u: array<f32, 256>; // swiglu: the up projection's map
// One vec4 (the 4 rows) per invocation; swiglu: the up rows in red_u.
var<workgroup> red: array<vec4<f32>, WG>;
var<workgroup> red_u: array<vec4<f32>, WG>;
// NORMED: each invocation's share of the sum of squares of resid, reduced with red.
var<workgroup> ssq: array<f32, WG>;
// The factor of the row sums: r * norm_mul when NORMED (set after the reduction), else 1.
var<private> row_scale: f32 = 1.0;

// An f16 pair held in a u32 (the low half first). {{F16_PAIR}} is `bitcast<vec2<f16>>(u)`, or
// the same value through unpack2x16float on Deno's WebGPU, whose WGSL compiler (naga) types a
// bitcast to vec2<f16> as f32. The bitcast matters: x read as vec4<f16> instead of vec4<u32>
// words made the H100's decode step 0.46 ms slower (bench/NOTES.md).
fn f16_pair(u: u32) -> vec2<f16> {
  return {{F16_PAIR}};
}

// Eight elements of x, divided by 4, as four f16 pairs (element 2k in the low half of pair k).
struct X8 {
  a: vec2<f16>,
  b: vec2<f16>,
  c: vec2<f16>,
  d: vec2<f16>,
}

fn quarter(u: vec4<u32>) -> X8 {
  let q = vec2<f16>(0.25h);
  return X8(f16_pair(u.x) * q, f16_pair(u.y) * q, f16_pair(u.z) * q, f16_pair(u.w) * q);
}

// 32 elements of x, divided by 4.
struct X32 {
  p0: X8,
  p1: X8,
  p2: X8,
  p3: X8,
}

// x elements 32w .. 32w + 31, divided by 4.
fn load_x(w: u32) -> X32 {
  let i = 4u * w;
  return X32(quarter(x[i]), quarter(x[i + 1u]), quarter(x[i + 2u]), quarter(x[i + 3u]));
}

// Eight elements of x as they are (NORMED: x holds xw, already scaled).
fn pairs(u: vec4<u32>) -> X8 {
  return X8(f16_pair(u.x), f16_pair(u.y), f16_pair(u.z), f16_pair(u.w));
}

// The products' input elements 32w .. 32w + 31: x / 4, or xw when NORMED.
fn load_in(w: u32) -> X32 {
  if (!NORMED) { return load_x(w); }
  let i = 4u * w;
  return X32(pairs(x[i]), pairs(x[i + 1u]), pairs(x[i + 2u]), pairs(x[i + 3u]));
}

// NORMED: invocation li's share of sum(res^2), f32 (the vec4 words li, li + WG, ... of resid), into
// ssq.
fn square_share(li: u32) {
  if (!NORMED) { return; }
  var s = 0.0;
  for (var j = li; j < p.IN / 8u; j += WG) {
    let u = resid[j];
    let a = unpack2x16float(u.x);
    let b = unpack2x16float(u.y);
    let c = unpack2x16float(u.z);
    let d = unpack2x16float(u.w);
    s += (dot(a, a) + dot(b, b)) + (dot(c, c) + dot(d, d));
  }
  ssq[li] = s;
}

// NORMED, after the reduction: the row sums' factor r * norm_mul, the same in every workgroup.
fn set_row_scale() {
  if (!NORMED) { return; }
  var s = 0.0;
  for (var k = 0u; k < WG; k += 32u) { s += ssq[k]; }
  row_scale = p.norm_mul * inverseSqrt(s / f32(p.IN) + p.norm_eps);
}

// Eight codes of one u32 (byte k: elements 2k, 2k + 1) times eight elements of x: f16 products,
// each half summing four, then f32.
fn dot8(c: u32, v: X8) -> f32 {
  var s = lut2[c & 255u] * v.a;
  s = fma(lut2[(c >> 8u) & 255u], v.b, s);
  s = fma(lut2[(c >> 16u) & 255u], v.c, s);
  s = fma(lut2[c >> 24u], v.d, s);
  return f32(s.x) + f32(s.y);
}

// One code word (32 codes) against 32 elements of x / 4, without the block scale.
fn dot32(c: vec4<u32>, v: X32) -> f32 {
  return (dot8(c.x, v.p0) + dot8(c.y, v.p1)) + (dot8(c.z, v.p2) + dot8(c.w, v.p3));
}

// The block scale times 4 (x enters divided by 4).
fn absmax(blk: u32) -> f32 {
  let q = (absq[blk >> 2u] >> ((blk & 3u) * 8u)) & 0xffu;
  return 4.0 * (dyn[q] * nested[1u + (blk >> 8u)] + nested[0]);
}

fn absmax4(blk: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(absmax(blk.x), absmax(blk.y), absmax(blk.z), absmax(blk.w));
}

fn absmax_u(blk: u32) -> f32 {
  let q = (absq_u[blk >> 2u] >> ((blk & 3u) * 8u)) & 0xffu;
  return 4.0 * (dyn_u[q] * nested_u[1u + (blk >> 8u)] + nested_u[0]);
}

fn absmax4_u(blk: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(absmax_u(blk.x), absmax_u(blk.y), absmax_u(blk.z), absmax_u(blk.w));
}

// alpha * (W x) + alpha2 * (W2 x2) for rows r, this thread's share.
fn rows4(r: vec4<u32>, t: u32) -> vec4<f32> {
  let nw = p.IN / 32u;
  let pairs = (nw + 1u) / 2u;
  let oneBlock = (nw & 1u) == 0u;
  var acc = vec4<f32>(0.0);
  for (var q = t; q < pairs; q += TEAM) {
    let w0 = 2u * q;
    let w1 = min(w0 + 1u, nw - 1u);
    let g0 = r * nw + w0;
    let g1 = r * nw + w1;
    let c0x = codes[g0.x];
    let c0y = codes[g0.y];
    let c0z = codes[g0.z];
    let c0w = codes[g0.w];
    let c1x = codes[g1.x];
    let c1y = codes[g1.y];
    let c1z = codes[g1.z];
    let c1w = codes[g1.w];
    let xa = load_x(w0);
    let xb = load_x(w1);
    let am0 = absmax4(g0 >> vec4<u32>(1u));
    var am1 = am0;
    if (!oneBlock) { am1 = absmax4(g1 >> vec4<u32>(1u)); }
    // An odd word count: the last pair has one word (w1 repeats w0 and counts 0).
    if (w0 + 1u >= nw) { am1 = vec4<f32>(0.0); }
    let s0 = vec4<f32>(dot32(c0x, xa), dot32(c0y, xa), dot32(c0z, xa), dot32(c0w, xa));
    let s1 = vec4<f32>(dot32(c1x, xb), dot32(c1y, xb), dot32(c1z, xb), dot32(c1w, xb));
    acc = fma(am0, s0, fma(am1, s1, acc));
  }
  acc *= p.alpha;
  if (p.K2 > 0u) {
    var s2 = vec4<f32>(0.0);
    let b = r * p.K2;
    for (var k = t; k < p.K2; k += TEAM) {
      let w = vec4<f32>(f32(w2[b.x + k]), f32(w2[b.y + k]), f32(w2[b.z + k]), f32(w2[b.w + k]));
      s2 = fma(w, vec4<f32>(f32(x2[p.x2_off + k])), s2);
    }
    acc = fma(vec4<f32>(p.alpha2), s2, acc);
  }
  return acc;
}

// Code byte li's f16 pair (needs WG == 256).
fn fill_pairs(li: u32) {
  lut2[li] = vec2<f16>(NF4_F16[li >> 4u], NF4_F16[li & 15u]);
}

// Code-byte table and dynamic map into workgroup memory (call first, from uniform control flow).
fn load_tables(li: u32) {
  fill_pairs(li);
  dyn[li] = dynmap[li];
  workgroupBarrier();
}

// Sums acc over each 32-invocation slice of red (the result in the slice's first invocation).
fn reduce_slices(li: u32, acc: vec4<f32>) {
  red[li] = acc;
  workgroupBarrier();
  for (var s = 16u; s > 0u; s >>= 1u) {
    if (li % 32u < s) {
      red[li] += red[li + s];
      if (NORMED) { ssq[li] += ssq[li + s]; }
    }
    workgroupBarrier();
  }
  set_row_scale();
}

// After reduce_slices: the team's total of row slot `slot` (0..RPT-1) of team `team`, times
// row_scale.
fn team_total(team: u32, slot: u32) -> f32 {
  var v = 0.0;
  for (var k = 0u; k < TEAM; k += 32u) { v += red[team * TEAM + k][slot]; }
  return v * row_scale;
}

// main's work for invocation li: its team's rows, the reduction, and for one invocation per row of
// the workgroup (`has`) the value of row `o`, beta * y added.
struct MainRow {
  o: u32,
  has: bool,
  v: f32,
}

fn main_row(wg: vec3<u32>, li: u32) -> MainRow {
  load_tables(li);
  let rowsPerWg = (WG / TEAM) * RPT;
  let first = (wg.y * p.gx + wg.x) * rowsPerWg;
  let row0 = first + (li / TEAM) * RPT;
  var acc = vec4<f32>(0.0);
  if (row0 < p.OUT) {
    let last = p.OUT - 1u;
    let r = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
    acc = rows4(r, li % TEAM);
  }
  reduce_slices(li, acc);
  // Row first + li is row li % RPT of team li / RPT.
  var row = MainRow(first + li, li < rowsPerWg && first + li < p.OUT, 0.0);
  if (row.has) {
    row.v = team_total(li / RPT, li % RPT);
    if (p.beta != 0.0) { row.v += p.beta * f32(y[p.y_off + row.o]); }
  }
  return row;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let row = main_row(wg, li);
  if (row.has) { y[p.y_off + row.o] = {{OUT}}(row.v); }
}

// Entry `scaled` (see the top): the next norm's weight scaled (nwn) and the weighted copy (xw), f16 [OUT].
@group(0) @binding(9) var<storage, read> next_norm_w: array<f16>;
@group(0) @binding(10) var<storage, read_write> xw: array<f16>;

@compute @workgroup_size(WG)
fn scaled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let row = main_row(wg, li);
  if (row.has) {
    let h = f16(row.v);
    y[p.y_off + row.o] = {{OUT}}(h);
    xw[row.o] = h * next_norm_w[row.o];
  }
}

// Entry `rope`: the q or k projection followed by its rotary embedding (kernels/rope, rotate-half
// form) at one position; OUT = heads * p.D. With v = f16(main's row value) for row h * D + i:
//   y[h*D + i]       = v[i] * c_i - v[i + D/2] * s_i        (i < D/2)
//   y[h*D + i + D/2] = v[i + D/2] * c_i + v[i] * s_i
// where rot[i] = (c_i, s_i), the cosine and sine of the position's angle for frequency i; f32
// inside, one rounding. A team computes rows (j, j + 1, j + D/2, j + D/2 + 1) of one head (j even),
// so each rotated pair lies in one team. alpha 1, beta 0.
@group(0) @binding(9) var<storage, read> rot: array<vec2<f32>>;

// Row slot `slot` of team `team` after its rotary embedding: the row's value and its partner (slot
// ^ 2, half a head away) rounded to f16 as the unrotated product would be, then rotated by
// cs = (cos, sin) of their frequency, f32 inside (kernels/rope's rotate-half form).
fn rotated(team: u32, slot: u32, cs: vec2<f32>) -> f32 {
  let v = f32(f16(team_total(team, slot)));
  let partner = f32(f16(team_total(team, slot ^ 2u)));
  if (slot >= 2u) { return v * cs.x + partner * cs.y; }
  return v * cs.x - partner * cs.y;
}

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  load_tables(li);
  let teamsPerWg = WG / TEAM;
  let quarter = p.D / 4u;
  let team0 = (wg.y * p.gx + wg.x) * teamsPerWg;
  let team = team0 + li / TEAM;
  var acc = vec4<f32>(0.0);
  if (team * RPT < p.OUT) {
    let base = (team / quarter) * p.D + 2u * (team % quarter);
    let half = p.D / 2u;
    acc = rows4(vec4<u32>(base, base + 1u, base + half, base + half + 1u), li % TEAM);
  }
  reduce_slices(li, acc);
  let t = team0 + li / RPT;
  if (li < teamsPerWg * RPT && t * RPT < p.OUT) {
    let slot = li % RPT;
    let i = 2u * (t % quarter) + (slot & 1u);
    let row = (t / quarter) * p.D + i + select(0u, p.D / 2u, slot >= 2u);
    y[p.y_off + row] = {{OUT}}(rotated(li / RPT, slot, rot[i]));
  }
}

// team_total of red (x) and of red_u (y): the swiglu entry's gate and up rows.
fn team_totals(team: u32, slot: u32) -> vec2<f32> {
  var v = vec2<f32>(0.0);
  for (var k = 0u; k < TEAM; k += 32u) { v += vec2<f32>(red[team * TEAM + k][slot], red_u[team * TEAM + k][slot]); }
  return v * row_scale;
}

@compute @workgroup_size(WG)
fn swiglu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  dyn_u[li] = dynmap_u[li];
  load_tables(li);
  let rowsPerWg = (WG / TEAM) * RPT;
  let first = (wg.y * p.gx + wg.x) * rowsPerWg;
  let row0 = first + (li / TEAM) * RPT;
  let t = li % TEAM;
  var accg = vec4<f32>(0.0);
  var accu = vec4<f32>(0.0);
  if (row0 < p.OUT) {
    let r = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.OUT - 1u));
    let nw = p.IN / 32u;
    for (var w = t; w < nw; w += TEAM) {
      let g = r * nw + w;
      let gx = codes[g.x];
      let gy = codes[g.y];
      let gz = codes[g.z];
      let gw = codes[g.w];
      let ux = codes_u[g.x];
      let uy = codes_u[g.y];
      let uz = codes_u[g.z];
      let uw = codes_u[g.w];
      let xv = load_in(w);
      let blk = g >> vec4<u32>(1u);
      let sg = vec4<f32>(dot32(gx, xv), dot32(gy, xv), dot32(gz, xv), dot32(gw, xv));
      let su = vec4<f32>(dot32(ux, xv), dot32(uy, xv), dot32(uz, xv), dot32(uw, xv));
      accg = fma(absmax4(blk), sg, accg);
      accu = fma(absmax4_u(blk), su, accu);
    }
    if (p.K2 > 0u) {
      var s2g = vec4<f32>(0.0);
      var s2u = vec4<f32>(0.0);
      let b = r * p.K2;
      for (var k = t; k < p.K2; k += TEAM) {
        let wg4 = vec4<f32>(f32(w2[b.x + k]), f32(w2[b.y + k]), f32(w2[b.z + k]), f32(w2[b.w + k]));
        let wu4 = vec4<f32>(f32(w2_u[b.x + k]), f32(w2_u[b.y + k]), f32(w2_u[b.z + k]), f32(w2_u[b.w + k]));
        s2g = fma(wg4, vec4<f32>(f32(x2[p.x2_off + k])), s2g);
        s2u = fma(wu4, vec4<f32>(f32(x2[p.x2_off_u + k])), s2u);
      }
      accg = fma(vec4<f32>(p.alpha2), s2g, accg);
      accu = fma(vec4<f32>(p.alpha2), s2u, accu);
    }
  }
  square_share(li);
  red[li] = accg;
  red_u[li] = accu;
  workgroupBarrier();
  for (var s = 16u; s > 0u; s >>= 1u) {
    if (li % 32u < s) {
      red[li] += red[li + s];
      red_u[li] += red_u[li + s];
      if (NORMED) { ssq[li] += ssq[li + s]; }
    }
    workgroupBarrier();
  }
  set_row_scale();
  let o = first + li;
  if (li < rowsPerWg && o < p.OUT) {
    let gu = vec2<f32>(vec2<f16>(team_totals(li / RPT, li % RPT)));
    let g = gu.x;
    let u = gu.y;
    y[p.y_off + o] = {{OUT}}(g * (1.0 / (1.0 + exp(-g))) * u);
  }
}

@group(0) @binding(10) var<storage, read> codes_k: array<vec4<u32>>;
@group(0) @binding(11) var<storage, read> codes_v: array<vec4<u32>>;
@group(0) @binding(12) var<storage, read_write> kc: array<f16>;
@group(0) @binding(13) var<storage, read_write> vc: array<f16>;
@group(0) @binding(15) var<storage, read> position: array<u32>;

// qkv: the three dynamic maps and the three mean offsets.
var<workgroup> dyn3: array<f32, 771>;

// Code word i of projection `proj` (0 q, 1 k, 2 v).
fn qkv_word(proj: u32, i: u32) -> vec4<u32> {
  if (proj == 0u) { return codes[i]; }
  if (proj == 1u) { return codes_k[i]; }
  return codes_v[i];
}

// Absmax of block `blk` (counted over the three projections' rows) of projection `proj`.
fn qkv_absmax(proj: u32, blk: u32) -> f32 {
  let q = (absq[blk >> 2u] >> ((blk & 3u) * 8u)) & 0xffu;
  return 4.0 * (dyn3[proj * 256u + q] * nested[blk >> 8u] + dyn3[768u + proj]);
}

// rows4 for rows r of projection `proj`, whose row 0 is row `first` of the three: the same
// operations in the same order (IN % 64 == 0, so both words of a pair share a block).
fn qkv_rows4(proj: u32, r: vec4<u32>, first: u32, t: u32) -> vec4<f32> {
  let nw = p.IN / 32u;
  let pairs = nw / 2u;
  let blk0 = (r + vec4<u32>(first)) * pairs;
  var acc = vec4<f32>(0.0);
  for (var q = t; q < pairs; q += TEAM) {
    let g0 = r * nw + 2u * q;
    let g1 = g0 + vec4<u32>(1u);
    let c0x = qkv_word(proj, g0.x);
    let c0y = qkv_word(proj, g0.y);
    let c0z = qkv_word(proj, g0.z);
    let c0w = qkv_word(proj, g0.w);
    let c1x = qkv_word(proj, g1.x);
    let c1y = qkv_word(proj, g1.y);
    let c1z = qkv_word(proj, g1.z);
    let c1w = qkv_word(proj, g1.w);
    let xa = load_in(2u * q);
    let xb = load_in(2u * q + 1u);
    let b = blk0 + vec4<u32>(q);
    let am = vec4<f32>(qkv_absmax(proj, b.x), qkv_absmax(proj, b.y), qkv_absmax(proj, b.z), qkv_absmax(proj, b.w));
    let s0 = vec4<f32>(dot32(c0x, xa), dot32(c0y, xa), dot32(c0z, xa), dot32(c0w, xa));
    let s1 = vec4<f32>(dot32(c1x, xb), dot32(c1y, xb), dot32(c1z, xb), dot32(c1w, xb));
    acc = fma(am, s0, fma(am, s1, acc));
  }
  if (p.K2 > 0u) {
    var s2 = vec4<f32>(0.0);
    let b = (r + vec4<u32>(first)) * p.K2;
    let off = select(select(p.x2_off_v, p.x2_off_k, proj == 1u), p.x2_off, proj == 0u);
    for (var k = t; k < p.K2; k += TEAM) {
      let w = vec4<f32>(f32(w2[b.x + k]), f32(w2[b.y + k]), f32(w2[b.z + k]), f32(w2[b.w + k]));
      s2 = fma(w, vec4<f32>(f32(x2[off + k])), s2);
    }
    let alpha2 = select(select(p.alpha2_v, p.alpha2_k, proj == 1u), p.alpha2, proj == 0u);
    acc = fma(vec4<f32>(alpha2), s2, acc);
  }
  return acc;
}

// Team t of the three projections: (projection, its team index within it, its first row).
fn qkv_team(t: u32) -> vec3<u32> {
  let qTeams = p.OUT / RPT;
  let kvTeams = p.kv_rows / RPT;
  if (t < qTeams) { return vec3<u32>(0u, t, 0u); }
  if (t < qTeams + kvTeams) { return vec3<u32>(1u, t - qTeams, p.OUT); }
  return vec3<u32>(2u, t - qTeams - kvTeams, p.OUT + p.kv_rows);
}

@compute @workgroup_size(WG)
fn qkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  fill_pairs(li);
  for (var i = li; i < 771u; i += WG) { dyn3[i] = dynmap[i]; }
  workgroupBarrier();
  let teamsPerWg = WG / TEAM;
  let quarter = p.D / 4u;
  let half = p.D / 2u;
  let teams = (p.OUT + 2u * p.kv_rows) / RPT;
  let team0 = (wg.y * p.gx + wg.x) * teamsPerWg;
  let team = team0 + li / TEAM;
  var acc = vec4<f32>(0.0);
  if (team < teams) {
    let tp = qkv_team(team);
    let base = (tp.y / quarter) * p.D + 2u * (tp.y % quarter);
    acc = qkv_rows4(tp.x, vec4<u32>(base, base + 1u, base + half, base + half + 1u), tp.z, li % TEAM);
  }
  square_share(li);
  reduce_slices(li, acc);
  let t = team0 + li / RPT;
  if (li < teamsPerWg * RPT && t < teams) {
    let tp = qkv_team(t);
    let slot = li % RPT;
    let i = 2u * (tp.y % quarter) + (slot & 1u);
    let row = (tp.y / quarter) * p.D + i + select(0u, half, slot >= 2u);
    let total = team_total(li / RPT, slot);
    let pos = position[0];
    let cached = pos < p.cache_rows;
    let at = pos * p.kv_rows + row;
    if (tp.x == 2u) {
      if (cached) { vc[at] = f16(total); }
    } else {
      let out = rotated(li / RPT, slot, rot[i]);
      if (tp.x == 0u) { y[row] = {{OUT}}(out); } else if (cached) { kc[at] = f16(out); }
    }
  }
}
