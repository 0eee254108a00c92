// Token embedding: gather of table rows by id, and its backward, a scatter-add of the output
// gradient into an f32 gradient table.
//   forward:  out[t, :] = table[ids[t], :], or zeros where ids[t] is outside [0, V)
//   backward: for each distinct id u (a plan made on the CPU groups the tokens by id),
//             dtable[u, :] += sum over its tokens t of dy[t, :]   (f32, fixed order, no atomics)
// Forward: row t is copied by the workgroups (x, y, z) with z * num_workgroups.y + y = t; workgroup
// x covers the row's units [x * WG * UNITS, (x + 1) * WG * UNITS), lane l its units l, l + WG, ...,
// all loads issued before the stores. A unit is 16 bytes (8 halves, `forward`, for C a multiple of
// 8) or one 4-byte word (2 halves, `forward_words`, for other even C). The backward moves pairs of
// halves (vec2<f16>), one workgroup per distinct id (2D grid, flat index wg.y * num_workgroups.x +
// wg.x).
enable f16;

struct Params {
  T: u32,
  C: u32,
  V: u32,
  U: u32, // distinct ids in the backward plan
}

const WG = 256u;
const UNITS = 2u;

@group(0) @binding(0) var<uniform> p: Params;

// forward: table [V, C] f16, ids [T] i32, out [T, C] f16 (as 16-byte units)
@group(0) @binding(1) var<storage, read> f_table: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> f_ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> f_out: array<vec4<u32>>;

// forward_words: the same as 4-byte words
@group(0) @binding(1) var<storage, read> w_table: array<u32>;
@group(0) @binding(2) var<storage, read> w_ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> w_out: array<u32>;

// backward: dy [T, C] f16, order [T] u32 (token indices grouped by id), starts [U + 1] u32,
// ids [U] i32 (the distinct ids), dtable [V, C] f32
@group(0) @binding(1) var<storage, read> b_dy: array<vec2<f16>>;
@group(0) @binding(2) var<storage, read> b_order: array<u32>;
@group(0) @binding(3) var<storage, read> b_starts: array<u32>;
@group(0) @binding(4) var<storage, read> b_ids: array<i32>;
@group(0) @binding(5) var<storage, read_write> b_dtable: array<vec2<f32>>;

@compute @workgroup_size(WG)
fn forward(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let t = wg.z * nwg.y + wg.y;
  if (t >= p.T) {
    return;
  }
  let row = p.C / 8u;
  let c0 = wg.x * (WG * UNITS) + lid.x;
  let id = f_ids[t];
  let valid = id >= 0 && u32(id) < p.V;
  let src = u32(id) * row;
  var v: array<vec4<u32>, UNITS>;
  for (var k = 0u; k < UNITS; k++) {
    let c = c0 + k * WG;
    if (valid && c < row) {
      v[k] = f_table[src + c];
    }
  }
  for (var k = 0u; k < UNITS; k++) {
    let c = c0 + k * WG;
    if (c < row) {
      f_out[t * row + c] = v[k];
    }
  }
}

@compute @workgroup_size(WG)
fn forward_words(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let t = wg.z * nwg.y + wg.y;
  if (t >= p.T) {
    return;
  }
  let row = p.C / 2u;
  let c0 = wg.x * (WG * UNITS) + lid.x;
  let id = w_ids[t];
  let valid = id >= 0 && u32(id) < p.V;
  let src = u32(id) * row;
  var v: array<u32, UNITS>;
  for (var k = 0u; k < UNITS; k++) {
    let c = c0 + k * WG;
    if (valid && c < row) {
      v[k] = w_table[src + c];
    }
  }
  for (var k = 0u; k < UNITS; k++) {
    let c = c0 + k * WG;
    if (c < row) {
      w_out[t * row + c] = v[k];
    }
  }
}

@compute @workgroup_size(WG)
fn backward(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let u = wg.y * nwg.x + wg.x;
  if (u >= p.U) {
    return;
  }
  let id = b_ids[u];
  if (id < 0 || u32(id) >= p.V) {
    return;
  }
  let C2 = p.C / 2u;
  let k0 = b_starts[u];
  let k1 = b_starts[u + 1u];
  for (var c = lid.x; c < C2; c += WG) {
    var acc = vec2<f32>(0.0);
    for (var k = k0; k < k1; k++) {
      acc += vec2<f32>(b_dy[b_order[k] * C2 + c]);
    }
    let o = u32(id) * C2 + c;
    b_dtable[o] = b_dtable[o] + acc;
  }
}
