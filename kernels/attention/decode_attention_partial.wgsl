// Decode attention, pass 1 (split-K, as flash-decoding): one query position per head against a
// chunk of CHUNK cached positions, for G of the H / KVH query heads that share one kv head (all of
// them, so that each cached row of the group is read once; or fewer, so that a short cache still
// spreads over more workgroups).
//   q f16 [H,D]; k, v f16 [Tmax,KVH,D] (the first n rows are valid, no others are read);
//   position u32 [1]: n - 1, read when the dispatch runs (one recorded dispatch serves every n with
//             the same C);
//   part f32: o [H,C,D] (the chunk's softmax-weighted v, normalized within the chunk), then
//             lse [H,C] (natural-log sum of exp of the chunk's scaled scores), C = ceil(n / CHUNK);
//   out f16 [H,D]: with a single chunk (C = 1) its o is the attention output, written here in f16
//             (what pass 2 would write: its weight exp(lse - lse) is exactly 1), and part is unused.
// Workgroup (c, y): query heads y*G .. y*G + G - 1 over chunk c, 256 invocations. A workgroup's
// time is latency (a few dozen rows of 256 bytes), so every invocation issues its loads together:
// - scores: PARTS invocations per cached row, each a dot product over D / PARTS interleaved columns
//   of all its ROUNDS rows (rows past the chunk's end are clamped to its last row and discarded);
// - per-head max and sum over the chunk in workgroup memory;
// - the weighted sum of v: invocation (4 columns, position group) takes every PG-th row of the
//   chunk, four rows' loads at a time, for all G heads; the PG partial sums meet in workgroup
//   memory.
// D is a multiple of 16, at most 128; G at most 8; G * PG * D / 4 at most 1024.
enable f16;

struct Params {
  H: u32,
  KVH: u32,
  C: u32,
  scale: f32,
}

override D: u32 = 128u;
override G: u32 = 1u;
override PG: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f16>>;
@group(0) @binding(6) var<storage, read> position: array<u32>;

const WG = 256u;
const CHUNK = 128u; // cached positions per workgroup
const PARTS = 4u; // invocations per cached row in the scores
const SLOTS = WG / PARTS; // rows scored at once
const ROUNDS = CHUNK / SLOTS;
const AHEAD = 4u; // rows of v loaded together
const MAXG = 8u;
const MAXD4 = 32u;
const NEG = -1.0e30;

var<workgroup> Qs: array<vec4<f32>, MAXG * MAXD4>; // [head in group][D/4]
var<workgroup> S: array<f32, MAXG * CHUNK>; // scores, then exp(score - max)
// The scores' partial dot products [head][row] (component = part), then the weighted sums'
// partials [position group][head][D/4].
var<workgroup> W: array<vec4<f32>, 1024>;
var<workgroup> red: array<f32, MAXG * 16u>;
var<workgroup> stat: array<f32, 2u * MAXG>; // max, then sum, per head

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let D4 = D / 4u;
  let c = wg.x;
  let h0 = wg.y * G;
  let g = h0 / (p.H / p.KVH); // the kv head
  let n = position[0] + 1u;
  let j0 = c * CHUNK;
  let rows = min(CHUNK, n - j0);

  for (var i = tid; i < G * D4; i += WG) {
    Qs[(i / D4) * MAXD4 + i % D4] = vec4<f32>(q[h0 * D4 + i]);
  }
  workgroupBarrier();

  // Scores: invocation (slot, pt) takes rows slot + SLOTS * r of the chunk, columns pt + PARTS * d.
  let pt = tid % PARTS;
  let slot = tid / PARTS;
  let QD = D4 / PARTS;
  var dots: array<f32, MAXG * ROUNDS>;
  for (var i = 0u; i < MAXG * ROUNDS; i++) { dots[i] = 0.0; }
  for (var r = 0u; r < ROUNDS; r++) {
    let t = min(slot + r * SLOTS, rows - 1u);
    let base = ((j0 + t) * p.KVH + g) * D4 + pt;
    for (var d = 0u; d < QD; d++) {
      let kx = vec4<f32>(k[base + d * PARTS]);
      for (var hh = 0u; hh < G; hh++) {
        dots[r * MAXG + hh] += dot(Qs[hh * MAXD4 + pt + d * PARTS], kx);
      }
    }
  }
  for (var r = 0u; r < ROUNDS; r++) {
    for (var hh = 0u; hh < G; hh++) { W[hh * CHUNK + slot + r * SLOTS][pt] = dots[r * MAXG + hh]; }
  }
  workgroupBarrier();
  for (var i = tid; i < G * CHUNK; i += WG) {
    let w = W[i];
    S[i] = select(NEG, ((w.x + w.y) + (w.z + w.w)) * p.scale, i % CHUNK < rows);
  }
  workgroupBarrier();

  // Max per head: 16 invocations per head each take 8 positions, then one invocation per head.
  let rh = tid / 16u;
  let rp = tid % 16u;
  if (rh < G) {
    var mx = NEG;
    for (var t = rp * 8u; t < rp * 8u + 8u; t++) { mx = max(mx, S[rh * CHUNK + t]); }
    red[rh * 16u + rp] = mx;
  }
  workgroupBarrier();
  if (tid < G) {
    var mx = NEG;
    for (var t = 0u; t < 16u; t++) { mx = max(mx, red[tid * 16u + t]); }
    stat[tid] = mx;
  }
  workgroupBarrier();
  for (var i = tid; i < G * CHUNK; i += WG) {
    let s = S[i];
    S[i] = select(0.0, exp(s - stat[i / CHUNK]), s > NEG);
  }
  workgroupBarrier();
  if (rh < G) {
    var sum = 0.0;
    for (var t = rp * 8u; t < rp * 8u + 8u; t++) { sum += S[rh * CHUNK + t]; }
    red[rh * 16u + rp] = sum;
  }
  workgroupBarrier();
  if (tid < G) {
    var sum = 0.0;
    for (var t = 0u; t < 16u; t++) { sum += red[tid * 16u + t]; }
    stat[MAXG + tid] = sum;
    if (p.C > 1u) { part[p.H * p.C * D + (h0 + tid) * p.C + c] = stat[tid] + log(sum); }
  }
  workgroupBarrier();

  // Weighted sum of v: invocation (column group d, position group pg) takes rows pg, pg + PG, ...
  // of the chunk, AHEAD rows' loads at a time (rows past the chunk clamped to its last, weight 0).
  let d = tid % D4;
  let pg = tid / D4;
  if (pg < PG) {
    var acc: array<vec4<f32>, MAXG>;
    for (var hh = 0u; hh < G; hh++) { acc[hh] = vec4<f32>(0.0); }
    for (var t0 = pg; t0 < rows; t0 += AHEAD * PG) {
      var vx: array<vec4<f32>, AHEAD>;
      for (var u = 0u; u < AHEAD; u++) {
        let t = min(t0 + u * PG, rows - 1u);
        vx[u] = vec4<f32>(v[((j0 + t) * p.KVH + g) * D4 + d]);
      }
      for (var u = 0u; u < AHEAD; u++) {
        let t = t0 + u * PG;
        let tc = min(t, rows - 1u);
        for (var hh = 0u; hh < G; hh++) {
          acc[hh] = fma(vec4<f32>(select(0.0, S[hh * CHUNK + tc], t < rows)), vx[u], acc[hh]);
        }
      }
    }
    for (var hh = 0u; hh < G; hh++) { W[(pg * G + hh) * D4 + d] = acc[hh]; }
  }
  workgroupBarrier();
  for (var i = tid; i < G * D4; i += WG) {
    let hh = i / D4;
    let dd = i % D4;
    var sum = vec4<f32>(0.0);
    for (var r = 0u; r < PG; r++) { sum += W[(r * G + hh) * D4 + dd]; }
    let o = sum / stat[MAXG + hh];
    if (p.C == 1u) {
      out[(h0 + hh) * D4 + dd] = vec4<f16>(o);
      continue;
    }
    let at = ((h0 + hh) * p.C + c) * D + dd * 4u;
    part[at] = o.x;
    part[at + 1u] = o.y;
    part[at + 2u] = o.z;
    part[at + 3u] = o.w;
  }
}
