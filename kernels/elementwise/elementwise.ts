// The one launcher of the elementwise family: residual add, scale, and casts between f32, f16 and
// bf16 (bf16 stored as u16 bit patterns), on flat arrays of n elements (any n, odd included).
// Also `elementwiseGrid`, the workgroup grid of a flat launch, shared by the other memory-bound
// families.
//
// All conversions are exact bit manipulations (round to nearest even, overflow to infinity,
// subnormals kept), so results are identical on every adapter; no shader-f16 needed.

import type { Binding, Encoder } from "../../engine/encoder.ts";
import type { Capabilities } from "../../engine/gpu.ts";
import elementwiseCode from "./elementwise.wgsl" with { type: "text" };

const SHADER = { file: "kernels/elementwise/elementwise.wgsl", code: elementwiseCode };
const WG = 256;

/** Element types the casts know: bf16 and f16 are 16-bit patterns, f32 is IEEE single. */
export type ElementType = "f32" | "f16" | "bf16";
const KIND: Record<ElementType, number> = { f32: 0, f16: 1, bf16: 2 };
export const ELEMENT_BYTES: Record<ElementType, number> = { f32: 4, f16: 2, bf16: 2 };

/** Workgroups [x, y] for `threads` invocations in workgroups of `wgSize`, spread over a second
 * dimension where one dimension's limit is too small. Kernels recover the flat workgroup index as
 * wg.y * num_workgroups.x + wg.x; the last workgroups may lie wholly past the end. */
export function elementwiseGrid(caps: Capabilities, threads: number, wgSize = WG): [number, number] {
  const groups = Math.ceil(threads / wgSize);
  const max = caps.limits.maxComputeWorkgroupsPerDimension;
  if (groups <= max) return [groups, 1];
  const y = Math.ceil(groups / max);
  if (y > max) throw new RangeError(`${threads} invocations exceed the ${max}x${max} workgroup grid`);
  return [Math.ceil(groups / y), y];
}

function checkCount(what: string, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`${what}: n = ${n} must be a whole number >= 0`);
}

function params(n: number, src: number, dst: number, factor: number): Uint8Array {
  const buf = new ArrayBuffer(16);
  new Uint32Array(buf, 0, 3).set([n, src, dst]);
  new Float32Array(buf, 12, 1)[0] = factor;
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
  const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry: args.out ? "add" : "add_inplace" });
  const grid = elementwiseGrid(enc.gpu.caps, Math.ceil(args.n / 2));
  const buffers = args.out ? [args.a, args.b, args.out] : [args.a, args.b];
  enc.dispatch(pipeline, params(args.n, KIND.f16, KIND.f16, 0), buffers, grid);
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
  const pipeline = await enc.gpu.pipelines.get({
    shader: SHADER,
    entry: args.out ? "scale" : "scale_inplace",
  });
  const grid = elementwiseGrid(enc.gpu.caps, Math.ceil(args.n / 2));
  const kind = KIND[args.dtype];
  const buffers = args.out ? [args.x, args.out] : [args.x];
  enc.dispatch(pipeline, params(args.n, kind, kind, args.factor), buffers, grid);
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
  const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry: "convert" });
  const grid = elementwiseGrid(enc.gpu.caps, Math.ceil(args.n / 2));
  enc.dispatch(pipeline, params(args.n, KIND[args.from], KIND[args.to], 0), [args.src, args.dst], grid);
}
