// AdamW with 8-bit blockwise states, as bitsandbytes' kOptimizerStatic8bit2StateBlockwise (ADAM):
// blocks of 256 elements; m as codes of the signed dynamic map, v as codes of the unsigned one,
// each with one f32 absmax per block (value = map[code] * absmax).
//   param[N] f32 (read-write), grad[N] f32
//   m_codes, v_codes: N bytes, 4 per u32 (element 4w+k in byte k of word w), read-write
//   m_absmax, v_absmax: f32 [ceil(N / 256)], read-write
//   maps: f32 [512], the signed map then the unsigned map (createDynamicMap), then their rank
//         tables as u32 [2 * RANK_WORDS] (rankTable, for the first guess of the code search)
// Per element, in f32: with a finite gradient g,
//   v = beta2 v + (1 - beta2) g^2;  m = beta1 m + (1 - beta1) g;
//   p += step_size * m / (sqrt(v) + c2 eps)   (step_size = -lr c2 / c1, c1 = 1 - beta1^t, c2 = sqrt(1 - beta2^t))
//   p *= decay                               (decay = 1 - lr wd)
// A non-finite gradient leaves p alone and sets that element's m and v to 0 (as bitsandbytes).
// The new absmax is the block's max |m| (|v|) over its elements; codes are requantized against it
// with the decisions of bitsandbytes' quantize_2D search (see `quantize`), and an m code whose sign
// disagrees with m moves one step toward m's sign. A block whose new absmax is 0 stores m code 255
// and v code 0, the codes bitsandbytes' search gives there. Code bytes past N are written as 0.
//
// `main`: one workgroup of 256 invocations per BLOCKS = 8 consecutive blocks; invocation t takes
// the 4 elements (one 16-byte vector of param and of grad, one code word of m and of v) at lane
// t % 64 of blocks 4 * h + t / 64, h = 0, 1, and issues all of its loads before any math. The block
// maxima are reduced in workgroup memory (two barriers); the maps are read from workgroup memory.
// Its bindings cover the first p.n elements, a multiple of 4. Workgroups in x then y.
// Both entries leave everything unchanged when word 1 of `skip` is not 0 (the non-finite count of
// grad_stats_final.wgsl: a loss-scaled step whose gradients overflowed is skipped on the GPU).
// `tail`: one workgroup for the last block p.first_block when N is not a multiple of 4; its param,
// grad and code bindings begin at that block, p.n elements.

struct Params {
  n: u32,
  first_block: u32,
  beta1: f32,
  beta2: f32,
  step_size: f32,
  c2eps: f32,
  decay: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m_codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_codes: array<u32>;
@group(0) @binding(5) var<storage, read_write> m_absmax: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_absmax: array<f32>;
@group(0) @binding(7) var<storage, read> maps: array<f32>;
@group(0) @binding(8) var<storage, read> skip: array<u32>;

// The tail entry's views of param and grad.
@group(0) @binding(1) var<storage, read_write> param1: array<f32>;
@group(0) @binding(2) var<storage, read> grad1: array<f32>;

const WG = 256u;
// Blocks per workgroup of `main`: WG / 64 blocks at a time, twice.
const BLOCKS = 8u;

// Rank tables (optim.ts rankTable; the launcher sets these): bucket 1 starts at the f32 biased
// exponent RANK_LOW; RANK_BUCKETS u8 counts per map, 4 per word, RANK_WORDS words per map.
override RANK_LOW: i32;
override RANK_BUCKETS: i32;
override RANK_WORDS: u32;

// The signed map at 0, the unsigned map at 256.
var<workgroup> qmap: array<f32, 512>;
// Per invocation: (max |m|, max |v|) of its elements of block h = 0, then of block h = 1.
var<workgroup> red: array<vec4<f32>, WG>;

/** Four consecutive elements of one block, as loaded. */
struct Quad {
  g: vec4<f32>,
  w: vec4<f32>,
  cm: u32,
  cv: u32,
  am: f32,
  av: f32,
  count: u32, // elements of the quad inside the tensor, 0..4
}

/** The updated moments of a quad. */
struct Moments {
  s1: vec4<f32>,
  s2: vec4<f32>,
  ok: vec4<bool>, // inside the tensor with a finite gradient
  valid: vec4<bool>,
}

fn finite(x: vec4<f32>) -> vec4<bool> {
  return (bitcast<vec4<u32>>(x) & vec4<u32>(0x7f800000u)) != vec4<u32>(0x7f800000u);
}

fn lookup(base: u32, codes: u32) -> vec4<f32> {
  let i = (vec4<u32>(codes) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
  return vec4<f32>(qmap[base + i.x], qmap[base + i.y], qmap[base + i.z], qmap[base + i.w]);
}

fn moments(q: Quad) -> Moments {
  var r: Moments;
  r.valid = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(q.count);
  r.ok = r.valid & finite(q.g);
  let v = lookup(256u, q.cv) * q.av * p.beta2 + (1.0 - p.beta2) * q.g * q.g;
  let m = lookup(0u, q.cm) * q.am * p.beta1 + (1.0 - p.beta1) * q.g;
  r.s1 = select(vec4<f32>(0.0), m, r.ok);
  r.s2 = select(vec4<f32>(0.0), v, r.ok);
  return r;
}

fn max4(v: vec4<f32>) -> f32 {
  return max(max(v.x, v.y), max(v.z, v.w));
}

/** Approximately how many entries of a map's positive part lie below 0 <= a (<= 1 up to rounding):
 * the count below the lowest value of a's bucket, read from the map's rank table (`table` =
 * RANK_WORDS for the unsigned map's). Buckets are the f32 values that share their exponent and top
 * 7 mantissa bits, from 2^-22 (bucket 1; bucket 0 takes everything smaller) to 1.0 (the last one,
 * which also takes anything larger); each holds at most one entry, so the count is exact or one
 * short, and `quantize` steps to the exact count. */
fn positive_rank(a: f32, table: u32) -> u32 {
  let bucket = u32(clamp(i32(bitcast<u32>(a) >> 16u) - RANK_LOW * 128 + 1, 0, RANK_BUCKETS - 1));
  let word = bitcast<u32>(maps[2u * WG + table + bucket / 4u]);
  return (word >> (8u * (bucket & 3u))) & 255u;
}

/** A code and its map value. */
struct Code {
  q: u32,
  value: f32,
}

/** The code bitsandbytes' quantize_2D gives x in the sorted map at qmap[base ..]. Its binary search
 * (from index 127, steps 64 .. 1, then one more comparison) walks a complete search tree whose
 * leaves are the even indices 0 .. 254, and ends between k - 1 and k, where k is the number of
 * entries 0 .. 254 below x; it returns the nearer of map[k - 1] and map[k] (map[255] = 1 for k =
 * 255; 0 for k = 0), a tie at their f32 midpoint going to the leaf, the even one. `guess` is k or
 * one short of it (`below` false) or k or one over (`below` true, only for x <= 0 in the signed
 * map): one step, and the three map entries it may need are read at once. */
fn quantize(x: f32, base: u32, guess: u32, below: bool) -> Code {
  let at = qmap[base + guess];
  let before = qmap[base + max(guess, 1u) - 1u];
  let beyond = qmap[base + select(min(guess + 1u, 255u), max(guess, 2u) - 2u, below)];
  let up = !below && guess < 255u && x > at;
  let down = below && guess > 0u && !(x > before);
  let k = select(select(guess, guess + 1u, up), guess - 1u, down);
  let hi = select(select(at, beyond, up), before, down);
  let lo = select(select(before, at, up), beyond, down);
  if (k == 0u) {
    return Code(0u, hi);
  }
  let mid = (lo + hi) * 0.5;
  if (x > mid || (!(x < mid) && (k & 1u) == 0u)) {
    return Code(k, hi);
  }
  return Code(k - 1u, lo);
}

/** m and v codes of one element (0 and 0 outside the tensor). */
fn codes(s1: f32, s2: f32, nm: f32, nv: f32, valid: bool) -> vec2<u32> {
  var qm = 255u;
  if (nm > 0.0) {
    let x = s1 / nm;
    let r = positive_rank(abs(x), 0u);
    let c = quantize(x, 0u, select(127u - r, 128u + r, x > 0.0), !(x > 0.0));
    qm = c.q;
    if ((bitcast<u32>(c.value) >> 31u) != (bitcast<u32>(s1) >> 31u)) {
      qm = select(qm - 1u, qm + 1u, s1 > 0.0) & 255u;
    }
  }
  var qv = 0u;
  if (nv > 0.0) {
    let x = s2 / nv;
    qv = quantize(x, 256u, select(0u, 1u + positive_rank(x, RANK_WORDS), x > 0.0), false).q;
  }
  return select(vec2<u32>(0u), vec2<u32>(qm, qv), valid);
}

/** The quad after the step, with its block's new absmax. */
fn finish(q: Quad, m: Moments, nm: f32, nv: f32) -> Quad {
  var r = q;
  let w = (q.w + p.step_size * (m.s1 / (sqrt(m.s2) + p.c2eps))) * p.decay;
  r.w = select(q.w, w, m.ok);
  r.cm = 0u;
  r.cv = 0u;
  for (var k = 0u; k < 4u; k++) {
    let c = codes(m.s1[k], m.s2[k], nm, nv, m.valid[k]);
    r.cm |= c.x << (8u * k);
    r.cv |= c.y << (8u * k);
  }
  r.am = nm;
  r.av = nv;
  return r;
}

/** One step for the quads a (block h = 0) and b (h = 1) of invocation t; the maps must have been
 * written to qmap before. Called by every invocation of the workgroup. */
fn update(t: u32, a: Quad, b: Quad) -> array<Quad, 2> {
  workgroupBarrier();
  let ma = moments(a);
  let mb = moments(b);
  red[t] = vec4<f32>(max4(abs(ma.s1)), max4(abs(ma.s2)), max4(abs(mb.s1)), max4(abs(mb.s2)));
  workgroupBarrier();
  // 64 invocations per block: 8 of them fold 8 entries each, then every invocation folds those 8.
  let first = t & ~63u;
  let lane = t & 63u;
  if (lane < 8u) {
    var r = red[t];
    for (var k = 1u; k < 8u; k++) {
      r = max(r, red[t + 8u * k]);
    }
    red[t] = r;
  }
  workgroupBarrier();
  var r = red[first];
  for (var k = 1u; k < 8u; k++) {
    r = max(r, red[first + k]);
  }
  return array<Quad, 2>(finish(a, ma, r.x, r.y), finish(b, mb, r.z, r.w));
}

/** Copies the maps into workgroup memory (`update` waits for it); the rank tables are read from
 * `maps` itself, through the cache. */
fn load_maps(t: u32) {
  qmap[t] = maps[t];
  qmap[WG + t] = maps[WG + t];
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let t = lid.x;
  let first = (wg.y * nwg.x + wg.x) * BLOCKS;
  let quads = p.n / 4u;
  if (first * 64u >= quads || skip[1] != 0u) {
    return;
  }
  load_maps(t);
  let block0 = first + t / 64u;
  let block1 = block0 + 4u;
  let q0 = block0 * 64u + (t & 63u);
  let q1 = q0 + 256u;
  var a: Quad;
  var b: Quad;
  if (q0 < quads) {
    a = Quad(grad4[q0], param4[q0], m_codes[q0], v_codes[q0], m_absmax[block0], v_absmax[block0], 4u);
  } else if (block0 * 64u < quads) {
    a.am = m_absmax[block0];
    a.av = v_absmax[block0];
  }
  if (q1 < quads) {
    b = Quad(grad4[q1], param4[q1], m_codes[q1], v_codes[q1], m_absmax[block1], v_absmax[block1], 4u);
  } else if (block1 * 64u < quads) {
    b.am = m_absmax[block1];
    b.av = v_absmax[block1];
  }
  let r = update(t, a, b);
  if (q0 < quads) {
    param4[q0] = r[0].w;
    m_codes[q0] = r[0].cm;
    v_codes[q0] = r[0].cv;
  }
  if (q1 < quads) {
    param4[q1] = r[1].w;
    m_codes[q1] = r[1].cm;
    v_codes[q1] = r[1].cv;
  }
  if ((t & 63u) == 0u) {
    if (block0 * 64u < quads) {
      m_absmax[block0] = r[0].am;
      v_absmax[block0] = r[0].av;
    }
    if (block1 * 64u < quads) {
      m_absmax[block1] = r[1].am;
      v_absmax[block1] = r[1].av;
    }
  }
}

@compute @workgroup_size(WG)
fn tail(@builtin(local_invocation_id) lid: vec3<u32>) {
  if (skip[1] != 0u) {
    return;
  }
  let t = lid.x;
  load_maps(t);
  let e = 4u * t;
  var a: Quad;
  if (t < 64u) {
    a.am = m_absmax[p.first_block];
    a.av = v_absmax[p.first_block];
    if (e < p.n) {
      a.count = min(p.n - e, 4u);
      for (var k = 0u; k < a.count; k++) {
        a.g[k] = grad1[e + k];
        a.w[k] = param1[e + k];
      }
      a.cm = m_codes[t];
      a.cv = v_codes[t];
    }
  }
  let r = update(t, a, Quad());
  if (t < 64u) {
    if (e < p.n) {
      for (var k = 0u; k < a.count; k++) {
        param1[e + k] = r[0].w[k];
      }
      m_codes[t] = r[0].cm;
      v_codes[t] = r[0].cv;
    }
    if (t == 0u) {
      m_absmax[p.first_block] = r[0].am;
      v_absmax[p.first_block] = r[0].av;
    }
  }
}
