// Portable flash attention backward, second pass: dK and dV (no atomics, deterministic).
//   q, dO [B,T,H,D] f16; k, v [B,T,KVH,D] f16; lse, delta [B,H,T] f32;
//   dk, dv [B,T,KVH,D] f16. For kv head g and the H/KVH query heads h sharing it:
//   P = exp(scale * q·k^T - lse), dS = P * (dO·v^T - delta),
//   dv[j,g] = sum_h sum_i P[i,j] dO[i,h],  dk[j,g] = scale * sum_h sum_i dS[i,j] q[i,h].
// A workgroup of 128 invocations takes BC = 16 key/value rows of one kv head and walks the
// query blocks of BR = 16 rows from the diagonal on, for every query head of the group; 8
// invocations share a key/value row, each owning D/32 groups of 4 columns of dk and dv.
enable f16;

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
@group(0) @binding(1) var<storage, read> q: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read> dO: array<vec4<f16>>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;
@group(0) @binding(6) var<storage, read> delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> dk: array<vec4<f16>>;
@group(0) @binding(8) var<storage, read_write> dv: array<vec4<f16>>;

const BR = 16u;
const BC = 16u;
const LANES = 8u;
const MAXD4 = 32u;
const GROUPS = 4u;

var<workgroup> Qs: array<vec4<f16>, BR * MAXD4>;
var<workgroup> dOs: array<vec4<f16>, BR * MAXD4>;
var<workgroup> Ks: array<vec4<f16>, BC * MAXD4>;
var<workgroup> Vs: array<vec4<f16>, BC * MAXD4>;
var<workgroup> Ps: array<f32, BR * BC>; // [query row][kv row]
var<workgroup> dS: array<f32, BR * BC>;
var<workgroup> lseS: array<f32, BR>;
var<workgroup> deltaS: array<f32, BR>;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let T = p.T;
  let H = p.H;
  let KVH = p.KVH;
  let D4 = D / 4u;
  let group = H / KVH;
  let g = wg.y;
  let b = wg.z;
  let c0 = wg.x * BC;
  let c = tid / LANES; // this invocation's kv row in the block
  let lane = tid % LANES;
  let kvRow = c0 + c;

  for (var i = tid; i < BC * D4; i += 128u) {
    let t = c0 + i / D4;
    var kx = vec4<f16>(0.0h);
    var vx = vec4<f16>(0.0h);
    if (t < T) {
      let at = ((b * T + t) * KVH + g) * D4 + i % D4;
      kx = k[at];
      vx = v[at];
    }
    Ks[(i / D4) * MAXD4 + i % D4] = kx;
    Vs[(i / D4) * MAXD4 + i % D4] = vx;
  }

  var qbStart = 0u;
  if (p.causal != 0u) { qbStart = c0 / BR; }
  let qbEnd = (T + BR - 1u) / BR;

  var accK: array<vec4<f32>, GROUPS>;
  var accV: array<vec4<f32>, GROUPS>;
  for (var hh = 0u; hh < group; hh++) {
    let h = g * group + hh;
    for (var qb = qbStart; qb < qbEnd; qb++) {
      let q0 = qb * BR;
      for (var i = tid; i < BR * D4; i += 128u) {
        let t = q0 + i / D4;
        var qx = vec4<f16>(0.0h);
        var gx = vec4<f16>(0.0h);
        if (t < T) {
          let at = ((b * T + t) * H + h) * D4 + i % D4;
          qx = q[at];
          gx = dO[at];
        }
        Qs[(i / D4) * MAXD4 + i % D4] = qx;
        dOs[(i / D4) * MAXD4 + i % D4] = gx;
      }
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
      for (var i = lane; i < BR; i += LANES) {
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < D4; d++) {
          s += dot(vec4<f32>(Qs[i * MAXD4 + d]), vec4<f32>(Ks[c * MAXD4 + d]));
          dp += dot(vec4<f32>(dOs[i * MAXD4 + d]), vec4<f32>(Vs[c * MAXD4 + d]));
        }
        let row = q0 + i;
        let masked = row >= T || kvRow >= T || (p.causal != 0u && kvRow > row);
        let pr = select(exp(s * p.scale - lseS[i]), 0.0, masked);
        Ps[i * BC + c] = pr;
        dS[i * BC + c] = pr * (dp - deltaS[i]);
      }
      workgroupBarrier();
      for (var i = 0u; i < BR; i++) {
        let pr = Ps[i * BC + c];
        let ds = dS[i * BC + c];
        for (var j = 0u; j < GROUPS; j++) {
          let cg = lane + j * LANES;
          if (cg < D4) {
            accV[j] = fma(vec4<f32>(pr), vec4<f32>(dOs[i * MAXD4 + cg]), accV[j]);
            accK[j] = fma(vec4<f32>(ds), vec4<f32>(Qs[i * MAXD4 + cg]), accK[j]);
          }
        }
      }
      workgroupBarrier();
    }
  }

  if (kvRow < T) {
    for (var j = 0u; j < GROUPS; j++) {
      let cg = lane + j * LANES;
      if (cg < D4) {
        let at = ((b * T + kvRow) * KVH + g) * D4 + cg;
        dk[at] = vec4<f16>(accK[j] * p.scale);
        dv[at] = vec4<f16>(accV[j]);
      }
    }
  }
}
