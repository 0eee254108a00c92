// NF4 -> f16 dequantization of a slice of a weight W [OUT, IN] (the GPU layout of nf4.ts), for
// products that stage the f16 slice instead of decoding codes in every workgroup (nf4Matmul's
// sliced path):
//   COLUMNS false: D[r, i] = deq(W)[first + r, i]   r < count, i < IN    (D f16 [count, IN], rows of W)
//   COLUMNS true:  D[o, c] = deq(W)[o, first + c]   o < OUT, c < count   (D f16 [OUT, count], columns)
// deq(W)[o, i] = f16(NF4[code] * absmax) with absmax = dynmap[absmax code] * nested[1 + block / 256] +
// nested[0], the f32 arithmetic of the NF4 matmul kernels. IN, OUT, first and count are multiples
// of 8, so every code word lands whole in one 16-byte vector of D.
// One invocation per code word of the slice, 256 per workgroup, the workgroup grid 2D (flat index
// wg.y * gx + wg.x).
enable f16;

struct Params {
  OUT: u32,
  IN: u32,
  first: u32, // first row (COLUMNS false) or column (COLUMNS true) of W in the slice
  count: u32, // rows or columns in the slice
  gx: u32, // workgroups along x
}

override COLUMNS: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> absq: array<u32>;
@group(0) @binding(3) var<storage, read> nested: array<f32>;
@group(0) @binding(4) var<storage, read> dynmap: array<f32>;
@group(0) @binding(5) var<storage, read_write> d: array<vec4<u32>>;

// NF4 (array<u32, 16>, the codebook's f32 bit patterns) is appended by the launcher (NF4_CODEBOOK_WGSL).

var<workgroup> lut2: array<vec2<f32>, 256>; // code byte -> NF4 values of (high nibble, low nibble)

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  lut2[tid] = vec2<f32>(bitcast<f32>(NF4[tid >> 4u]), bitcast<f32>(NF4[tid & 15u]));
  workgroupBarrier();
  // Word j of D: row r of D, its elements c..c+7.
  let j = (wg.y * p.gx + wg.x) * 256u + tid;
  let rows = select(p.count, p.OUT, COLUMNS);
  let wordsPerRow = select(p.IN, p.count, COLUMNS) / 8u;
  if (j >= rows * wordsPerRow) { return; }
  let r = j / wordsPerRow;
  let c = (j % wordsPerRow) * 8u;
  // The element of W where the word starts.
  let f = select((p.first + r) * p.IN + c, r * p.IN + p.first + c, COLUMNS);
  let word = codes[f >> 3u];
  let blk = f >> 6u;
  let am = dynmap[(absq[blk >> 2u] >> ((blk & 3u) * 8u)) & 0xffu] * nested[1u + (blk >> 8u)] + nested[0];
  d[j] = vec4<u32>(
    pack2x16float(vec2<f32>(vec2<f16>(lut2[word & 0xffu] * am))),
    pack2x16float(vec2<f32>(vec2<f16>(lut2[(word >> 8u) & 0xffu] * am))),
    pack2x16float(vec2<f32>(vec2<f16>(lut2[(word >> 16u) & 0xffu] * am))),
    pack2x16float(vec2<f32>(vec2<f16>(lut2[word >> 24u] * am))),
  );
}
