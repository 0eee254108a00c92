// Decode attention, pass 1 (split-K, as flash-decoding): one query position per head against a
// chunk of CHUNK cached positions, for G = p.HW of the H / KVH query heads that share one kv head
// (all of them, so that each cached row of the group is read once; or fewer, so that a short
// cache still spreads over more workgroups).
//   q f16 [H,D]; k, v f16 [Tmax,KVH,D] (the first n rows are valid);
//   part f32: o [H,C,D] (the chunk's softmax-weighted v, normalized within the chunk), then
//             lse [H,C] (natural-log sum of exp of the chunk's scaled scores), C = ceil(n / CHUNK);
//   out f16 [H,D]: with a single chunk (C = 1) its o is the attention output, written here in f16
//             (what pass 2 would write: its weight exp(lse - lse) is exactly 1), and part is unused.
// Workgroup (c, y): query heads y*G .. y*G + G - 1 over chunk c, 128 invocations. Scores: one
// invocation per cached position, dot products with the G query rows held in workgroup memory. Then per-head max and sum over the chunk, and the
// weighted sum of v with one invocation per (4 columns, group of positions) for all G heads,
// reading whole v rows together.
// D is a multiple of 4, at most 128; G at most 8.
enable f16;

struct Params {
  n: u32,
  H: u32,
  KVH: u32,
  C: u32,
  scale: f32,
  HW: u32, // query heads per workgroup: divides H / KVH
}

override D: u32 = 128u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f16>>;

const CHUNK = 128u; // cached positions per workgroup (one per invocation)
const MAXG = 8u;
const MAXD4 = 32u;
const NEG = -1.0e30;

var<workgroup> Qs: array<vec4<f32>, MAXG * MAXD4>; // [head in group][D/4]
var<workgroup> S: array<f32, MAXG * CHUNK>; // scores, then exp(score - max)
var<workgroup> red: array<f32, MAXG * 16u>;
var<workgroup> stat: array<f32, 2u * MAXG>; // max, then sum, per head
// Partial weighted sums of v [position group][head][D/4], 128 / (D/4) position groups: at most
// 128 * G vectors.
var<workgroup> Vs: array<vec4<f32>, MAXG * 128u>;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let D4 = D / 4u;
  let G = p.HW;
  let c = wg.x;
  let h0 = wg.y * G;
  let g = h0 / (p.H / p.KVH); // the kv head
  let j0 = c * CHUNK;

  for (var i = tid; i < G * D4; i += 128u) {
    Qs[(i / D4) * MAXD4 + i % D4] = vec4<f32>(q[(h0 + i / D4) * D4 + i % D4]);
  }
  workgroupBarrier();

  // Scores: invocation tid takes cached position j0 + tid for every head of the group.
  let j = j0 + tid;
  // Loops over the group's heads run to the constant MAXG (G at run time inside), so that the
  // per-head accumulators can stay in registers instead of an indexed local array.
  var dots: array<f32, MAXG>;
  for (var hh = 0u; hh < MAXG; hh++) { dots[hh] = 0.0; }
  if (j < p.n) {
    let base = (j * p.KVH + g) * D4;
    for (var d = 0u; d < D4; d++) {
      let kx = vec4<f32>(k[base + d]);
      for (var hh = 0u; hh < MAXG; hh++) {
        if (hh < G) { dots[hh] += dot(Qs[hh * MAXD4 + d], kx); }
      }
    }
  }
  for (var hh = 0u; hh < MAXG; hh++) {
    if (hh < G) { S[hh * CHUNK + tid] = select(NEG, dots[hh] * p.scale, j < p.n); }
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
  for (var hh = 0u; hh < G; hh++) {
    let s = S[hh * CHUNK + tid];
    S[hh * CHUNK + tid] = select(0.0, exp(s - stat[hh]), s > NEG);
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

  // Weighted sum of v: invocation (column group d, position group pg) takes every PG-th position
  // of the chunk for all G heads (each v vector read once for the group), so its chain of loads is
  // rows / PG long instead of rows; the PG partial sums then meet in workgroup memory.
  let rows = min(CHUNK, p.n - j0);
  let PG = 128u / D4;
  let d = tid % D4;
  let pg = tid / D4;
  var acc: array<vec4<f32>, MAXG>;
  for (var hh = 0u; hh < MAXG; hh++) { acc[hh] = vec4<f32>(0.0); }
  if (pg < PG) {
    for (var t = pg; t < rows; t += PG) {
      let vx = vec4<f32>(v[((j0 + t) * p.KVH + g) * D4 + d]);
      for (var hh = 0u; hh < MAXG; hh++) {
        if (hh < G) { acc[hh] = fma(vec4<f32>(S[hh * CHUNK + t]), vx, acc[hh]); }
      }
    }
    for (var hh = 0u; hh < MAXG; hh++) {
      if (hh < G) { Vs[(pg * G + hh) * D4 + d] = acc[hh]; }
    }
  }
  workgroupBarrier();
  for (var i = tid; i < G * D4; i += 128u) {
    let hh = i / D4;
    let dd = i % D4;
    var sum = vec4<f32>(0.0);
    for (var r = 0u; r < PG; r++) { sum += Vs[(r * G + hh) * D4 + dd]; }
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
