// The one launcher of the elementwise family: residual add, scale, and casts between f32, f16 and
// bf16 (bf16 stored as u16 bit patterns), on flat arrays of n elements (any n, odd included).
// Also `elementwiseGrid`, the workgroup grid of a flat launch, shared by the other memory-bound
// families.
//
// All conversions are exact bit manipulations (round to nearest even, overflow to infinity,
// subnormals kept), so results are identical on every adapter; no shader-f16 needed.
//
// A launch covers the first floor(n / 8) * 8 elements with 16-byte vector loads and stores (two
// units of 8 elements per invocation), and the last n % 8 elements, if any, with a second, tiny
// dispatch over 32-bit words. Bindings may be whole buffers or ranges (offsets as WebGPU requires,
// multiples of 256 bytes); each must hold its n elements (16-bit data rounded up to whole words).

import { type Binding, bufferBytes, type Encoder, workgroupGrid } from "../../engine/encoder.ts";
import type { Capabilities } from "../../engine/gpu.ts";
import elementwiseCode from "./elementwise.wgsl" with { type: "text" };

const SHADER = { file: "kernels/elementwise/elementwise.wgsl", code: elementwiseCode };
const WG = 256;
/** Elements per unit of the vector entry points (one 16-byte vector of 16-bit data). */
const UNIT = 8;
/** Units per invocation (UNITS in the shader). */
const UNITS = 2;

/** Element types the casts know: bf16 and f16 are 16-bit patterns, f32 is IEEE single. */
export type ElementType = "f32" | "f16" | "bf16";
const KIND: Record<ElementType, number> = { f32: 0, f16: 1, bf16: 2 };
export const ELEMENT_BYTES: Record<ElementType, number> = { f32: 4, f16: 2, bf16: 2 };

/** Workgroups [x, y] for `threads` invocations in workgroups of `wgSize`, spread over a second
 * dimension where one dimension's limit is too small. Kernels recover the flat workgroup index as
 * wg.y * num_workgroups.x + wg.x; the last workgroups may lie wholly past the end. */
export function elementwiseGrid(caps: Capabilities, threads: number, wgSize = WG): [number, number] {
  return workgroupGrid(caps, Math.ceil(threads / wgSize));
}

function checkCount(what: string, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`${what}: n = ${n} must be a whole number >= 0`);
}

interface Range {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

function rangeOf(b: Binding): Range {
  return "buffer" in b ? b : { buffer: b, offset: 0, size: bufferBytes(b) };
}

/** One buffer of a flat launch: its binding and bytes per element. */
interface FlatBuffer {
  name: string;
  binding: Binding;
  bytes: number;
}

interface FlatLaunch {
  what: string;
  /** Vector entry point; its tail entry is `${entry}_tail`. */
  entry: string;
  /** Override constants of the vector entry point. */
  constants?: Record<string, number>;
  buffers: FlatBuffer[];
  n: number;
  src: number;
  dst: number;
  factor: number;
}

/** Encodes the vector dispatch over whole units of 8 elements and the tail dispatch over the rest. */
async function launchFlat(enc: Encoder, l: FlatLaunch): Promise<void> {
  const ranges = l.buffers.map((b) => {
    const r = rangeOf(b.binding);
    const need = Math.ceil((l.n * b.bytes) / 4) * 4;
    if (r.size < need) {
      throw new RangeError(
        `${l.what}: buffer "${b.name}" binds ${r.size} bytes but n = ${l.n} elements need ${need}; ` +
          `pass a larger buffer or a smaller n`,
      );
    }
    return r;
  });
  const main = Math.floor(l.n / UNIT) * UNIT;
  if (main > 0) {
    const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry: l.entry, constants: l.constants });
    const bindings = ranges.map((r, i) => ({
      buffer: r.buffer,
      offset: r.offset,
      size: main * l.buffers[i].bytes,
    }));
    const grid = elementwiseGrid(enc.gpu.caps, Math.ceil(main / UNIT / UNITS));
    enc.dispatch(pipeline, params(main, l.src, l.dst, l.factor, 0, [0, 0, 0]), bindings, grid);
  }
  if (l.n > main) {
    // Tail bindings begin at the last storage-offset-aligned byte at or before the tail.
    const align = enc.gpu.device.limits.minStorageBufferOffsetAlignment;
    const bases: number[] = [];
    const bindings = ranges.map((r, i) => {
      const bytes = l.buffers[i].bytes;
      const skip = Math.floor((main * bytes) / align) * align;
      bases.push(skip / bytes);
      return { buffer: r.buffer, offset: r.offset + skip, size: r.size - skip };
    });
    const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry: `${l.entry}_tail` });
    enc.dispatch(pipeline, params(l.n - main, l.src, l.dst, l.factor, main, bases), bindings, [1]);
  }
}

function params(
  n: number,
  src: number,
  dst: number,
  factor: number,
  start: number,
  bases: number[],
): Uint8Array {
  const buf = new ArrayBuffer(32);
  new Uint32Array(buf, 0, 3).set([n, src, dst]);
  new Float32Array(buf, 12, 1)[0] = factor;
  new Uint32Array(buf, 16, 4).set([start, bases[0] ?? 0, bases[1] ?? 0, bases[2] ?? 0]);
  return new Uint8Array(buf);
}

export interface ResidualAddArgs {
  /** f16 [n]. */
  a: Binding;
  /** f16 [n]. */
  b: Binding;
  /** f16 [n]; absent: the sum is written into `a` (a += b). Must not be `a` or `b`. */
  out?: Binding;
  n: number;
}

/** y = a + b in f16 (the sum is computed in f32 and rounded once to nearest even, which equals the
 * correctly rounded f16 sum); in place into `a` where `out` is absent. */
export async function residualAdd(enc: Encoder, args: ResidualAddArgs): Promise<void> {
  checkCount("residualAdd", args.n);
  const buffers: FlatBuffer[] = [
    { name: "a", binding: args.a, bytes: 2 },
    { name: "b", binding: args.b, bytes: 2 },
  ];
  if (args.out) buffers.push({ name: "out", binding: args.out, bytes: 2 });
  await launchFlat(enc, {
    what: "residualAdd",
    entry: args.out ? "add" : "add_inplace",
    buffers,
    n: args.n,
    src: KIND.f16,
    dst: KIND.f16,
    factor: 0,
  });
}

export interface ScaleArgs {
  /** [n] of `dtype`. */
  x: Binding;
  /** [n] of `dtype`; absent: x is scaled in place. */
  out?: Binding;
  n: number;
  factor: number;
  dtype: "f16" | "f32";
}

/** y = factor * x, the product in f32 (factor rounded to f32), rounded once to the storage type. */
export async function scaleElements(enc: Encoder, args: ScaleArgs): Promise<void> {
  checkCount("scaleElements", args.n);
  if (args.dtype !== "f16" && args.dtype !== "f32") {
    throw new RangeError(`scaleElements: dtype "${args.dtype}" must be "f16" or "f32"`);
  }
  const kind = KIND[args.dtype];
  const bytes = ELEMENT_BYTES[args.dtype];
  const buffers: FlatBuffer[] = [{ name: "x", binding: args.x, bytes }];
  if (args.out) buffers.push({ name: "out", binding: args.out, bytes });
  await launchFlat(enc, {
    what: "scaleElements",
    entry: args.out ? "scale" : "scale_inplace",
    constants: { DST: kind },
    buffers,
    n: args.n,
    src: kind,
    dst: kind,
    factor: args.factor,
  });
}

export interface CastArgs {
  /** [n] of `from`. */
  src: Binding;
  /** [n] of `to`; a different buffer from `src`. */
  dst: Binding;
  n: number;
  from: ElementType;
  to: ElementType;
}

/** dst = src converted from `from` to `to`: widening is exact; narrowing rounds to nearest even,
 * gives ±infinity beyond the target range, keeps f16 subnormals, and keeps NaN a NaN. */
export async function castElements(enc: Encoder, args: CastArgs): Promise<void> {
  checkCount("castElements", args.n);
  for (const t of [args.from, args.to]) {
    if (!(t in KIND)) throw new RangeError(`castElements: element type "${t}" must be f32, f16 or bf16`);
  }
  await launchFlat(enc, {
    what: "castElements",
    entry: "convert",
    constants: { SRC: KIND[args.from], DST: KIND[args.to] },
    buffers: [
      { name: "src", binding: args.src, bytes: ELEMENT_BYTES[args.from] },
      { name: "dst", binding: args.dst, bytes: ELEMENT_BYTES[args.to] },
    ],
    n: args.n,
    src: KIND[args.from],
    dst: KIND[args.to],
    factor: 0,
  });
}
