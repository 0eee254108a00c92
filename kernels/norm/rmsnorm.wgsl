// RMSNorm over the rows of x [T, C] (Hugging Face Llama order), forward and backward.
//   forward:  r = 1 / sqrt(mean(x^2) + eps) in f32;  y = f16(f16(x * r) * w);  rstd[t] = r
//   backward: dn = dy * w;  dx = r * dn - r^3 * x * sum(dn * x) / C   (f32 inside, f16 out;
//             with ACCUMULATE the result is added to the dx already there)
//   weight gradient: dw[c] = sum over t of dy[t,c] * f16(x[t,c] * r[t]), in two steps
//             (row slices into partial sums [S, C], then a sum over the slices), so it is
//             deterministic and needs no atomics.
// Rows are loaded as vec4<f16>, so C must be a multiple of 4. One workgroup per row for the
// forward and dx; the workgroup grid may be 2D (flat index wg.y * num_workgroups.x + wg.x).
// Each invocation holds up to ITEMS vec4 of its row in registers (the whole row for C up to
// 4 * WG * ITEMS = 4096), loaded before any math, so x (and dy) are read from memory once; longer
// rows read the rest twice. The weight gradient's partial sums read DW_UNROLL rows per step and
// its final sum spreads the slices over DW_LANES invocations per column.
enable f16;

struct Params {
  T: u32,
  C: u32,
  eps: f32,
  flags: u32, // bit 0: accumulate into the output (dx or dw)
}

const WG = 256u;
// vec4 per invocation held in registers.
const ITEMS = 4u;
// Rows per slice of the weight gradient's partial sums, rows loaded per step.
const DW_ROWS = 32u;
const DW_UNROLL = 4u;
// Invocations per column group in the final sum of the slices: DW_LANES x (WG / DW_LANES).
const DW_LANES = 4u;
const DW_COLS = WG / DW_LANES;

@group(0) @binding(0) var<uniform> p: Params;

// forward: x [T,C], w [C], y [T,C], rstd [T]
@group(0) @binding(1) var<storage, read> f_x: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> f_w: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read_write> f_y: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read_write> f_rstd: array<f32>;

// backward: dy [T,C], x [T,C], w [C], rstd [T], dx [T,C]
@group(0) @binding(1) var<storage, read> b_dy: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> b_x: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> b_w: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read> b_rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> b_dx: array<vec4<f16>>;

// dw_partial: dy [T,C], x [T,C], rstd [T], partial [S,C] f32 with S = ceil(T / DW_ROWS)
@group(0) @binding(1) var<storage, read> w_dy: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> w_x: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> w_rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> w_part: array<vec4<f32>>;

// dw_reduce: partial [S,C], dw [C] f32
@group(0) @binding(1) var<storage, read> r_part: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> r_dw: array<vec4<f32>>;

var<workgroup> red: array<f32, WG>;
var<workgroup> red4: array<vec4<f32>, WG>;

/** Sum of `v` over the workgroup, returned to every invocation. */
fn workgroupSum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      red[lid] = red[lid] + red[lid + s];
    }
    workgroupBarrier();
  }
  let total = red[0];
  workgroupBarrier();
  return total;
}

@compute @workgroup_size(WG)
fn forward(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let row = wg.y * nwg.x + wg.x;
  if (row >= p.T) {
    return;
  }
  let C4 = p.C / 4u;
  let base = row * C4;
  var xs: array<vec4<f32>, ITEMS>;
  var ws: array<vec4<f16>, ITEMS>;
  for (var k = 0u; k < ITEMS; k++) {
    let j = lid.x + k * WG;
    xs[k] = vec4<f32>(0.0);
    ws[k] = vec4<f16>(0.0);
    if (j < C4) {
      xs[k] = vec4<f32>(f_x[base + j]);
      ws[k] = f_w[j];
    }
  }
  var ss = 0.0;
  for (var k = 0u; k < ITEMS; k++) {
    ss += dot(xs[k], xs[k]);
  }
  for (var j = lid.x + ITEMS * WG; j < C4; j += WG) {
    let v = vec4<f32>(f_x[base + j]);
    ss += dot(v, v);
  }
  let r = inverseSqrt(workgroupSum(ss, lid.x) / f32(p.C) + p.eps);
  for (var k = 0u; k < ITEMS; k++) {
    let j = lid.x + k * WG;
    if (j < C4) {
      f_y[base + j] = vec4<f16>(xs[k] * r) * ws[k];
    }
  }
  for (var j = lid.x + ITEMS * WG; j < C4; j += WG) {
    let h = vec4<f16>(vec4<f32>(f_x[base + j]) * r);
    f_y[base + j] = h * f_w[j];
  }
  if (lid.x == 0u) {
    f_rstd[row] = r;
  }
}

@compute @workgroup_size(WG)
fn backward(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let row = wg.y * nwg.x + wg.x;
  if (row >= p.T) {
    return;
  }
  let C4 = p.C / 4u;
  let base = row * C4;
  let accumulate = (p.flags & 1u) != 0u;
  var dns: array<vec4<f32>, ITEMS>;
  var xs: array<vec4<f32>, ITEMS>;
  var olds: array<vec4<f32>, ITEMS>;
  for (var k = 0u; k < ITEMS; k++) {
    let j = lid.x + k * WG;
    dns[k] = vec4<f32>(0.0);
    xs[k] = vec4<f32>(0.0);
    olds[k] = vec4<f32>(0.0);
    if (j < C4) {
      dns[k] = vec4<f32>(b_dy[base + j]) * vec4<f32>(b_w[j]);
      xs[k] = vec4<f32>(b_x[base + j]);
      if (accumulate) {
        olds[k] = vec4<f32>(b_dx[base + j]);
      }
    }
  }
  var s = 0.0;
  for (var k = 0u; k < ITEMS; k++) {
    s += dot(dns[k], xs[k]);
  }
  for (var j = lid.x + ITEMS * WG; j < C4; j += WG) {
    let dn = vec4<f32>(b_dy[base + j]) * vec4<f32>(b_w[j]);
    s += dot(dn, vec4<f32>(b_x[base + j]));
  }
  let r = b_rstd[row];
  let k3 = r * r * r * workgroupSum(s, lid.x) / f32(p.C);
  for (var k = 0u; k < ITEMS; k++) {
    let j = lid.x + k * WG;
    if (j < C4) {
      var g = r * dns[k] - k3 * xs[k];
      if (accumulate) {
        g += olds[k];
      }
      b_dx[base + j] = vec4<f16>(g);
    }
  }
  for (var j = lid.x + ITEMS * WG; j < C4; j += WG) {
    let dn = vec4<f32>(b_dy[base + j]) * vec4<f32>(b_w[j]);
    var g = r * dn - k3 * vec4<f32>(b_x[base + j]);
    if (accumulate) {
      g += vec4<f32>(b_dx[base + j]);
    }
    b_dx[base + j] = vec4<f16>(g);
  }
}

@compute @workgroup_size(WG)
fn dw_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let C4 = p.C / 4u;
  let c = wg.x * WG + lid.x;
  if (c >= C4) {
    return;
  }
  let t0 = wg.y * DW_ROWS;
  let t1 = min(t0 + DW_ROWS, p.T);
  var acc = vec4<f32>(0.0);
  var t = t0;
  for (; t + DW_UNROLL <= t1; t += DW_UNROLL) {
    var dys: array<vec4<f16>, DW_UNROLL>;
    var xs: array<vec4<f16>, DW_UNROLL>;
    var rs: array<f32, DW_UNROLL>;
    for (var k = 0u; k < DW_UNROLL; k++) {
      dys[k] = w_dy[(t + k) * C4 + c];
      xs[k] = w_x[(t + k) * C4 + c];
      rs[k] = w_rstd[t + k];
    }
    for (var k = 0u; k < DW_UNROLL; k++) {
      let h = vec4<f16>(vec4<f32>(xs[k]) * rs[k]);
      acc += vec4<f32>(dys[k]) * vec4<f32>(h);
    }
  }
  for (; t < t1; t++) {
    let h = vec4<f16>(vec4<f32>(w_x[t * C4 + c]) * w_rstd[t]);
    acc += vec4<f32>(w_dy[t * C4 + c]) * vec4<f32>(h);
  }
  w_part[wg.y * C4 + c] = acc;
}

// DW_COLS columns per workgroup; lane l of a column sums the slices l, l + DW_LANES, ..., then the
// lanes' sums are added in lane order.
@compute @workgroup_size(WG)
fn dw_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let C4 = p.C / 4u;
  let col = lid.x % DW_COLS;
  let lane = lid.x / DW_COLS;
  let c = wg.x * DW_COLS + col;
  let S = (p.T + DW_ROWS - 1u) / DW_ROWS;
  var acc = vec4<f32>(0.0);
  if (c < C4) {
    for (var s = lane; s < S; s += DW_LANES) {
      acc += r_part[s * C4 + c];
    }
  }
  red4[lid.x] = acc;
  workgroupBarrier();
  if (lane != 0u || c >= C4) {
    return;
  }
  var total = red4[col];
  for (var l = 1u; l < DW_LANES; l++) {
    total += red4[l * DW_COLS + col];
  }
  if ((p.flags & 1u) != 0u) {
    total += r_dw[c];
  }
  r_dw[c] = total;
}
