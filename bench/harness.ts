// The contract between `deno task bench` and the `*_bench.ts` files of each family.
//
// A bench file default-exports `bench(ctx)`, returning rows. GPU benches run on every device in
// `ctx.gpus` (one per backend present, or the one chosen by flags); CPU benches ignore them.

import type { Gpu } from "../engine/gpu.ts";

export interface BenchRow {
  name: string;
  /** "dawn", "deno", "cpu" or a reference such as "torch". */
  backend: string;
  adapter: string;
  /** Shape in the family's letters, e.g. "M=4096 N=4096 K=4096". */
  shape: string;
  /** Median milliseconds of one run. */
  ms: number;
  /** Arithmetic rate (useful floating-point operations / time), where it means something. */
  tflops: number | null;
  /** Bytes that must move (inputs read once, outputs written once) / time. */
  gbps: number | null;
  /** Optional accuracy of the measured variant, ||out - ref|| / ||ref||. */
  relErr?: number;
  /** Name of the reference row (e.g. "torch_matmul_nt", "copy_bandwidth") this row is compared
   * with; by default the row of the same name and shape from another backend ("torch"). */
  ref?: string;
}

export interface BenchContext {
  gpus: Gpu[];
  /** Small shapes that finish in a couple of minutes on a CPU-only machine. */
  quick: boolean;
}

export type BenchFn = (ctx: BenchContext) => Promise<BenchRow[]>;

/** A row for a GPU measurement: rates from the flop and byte counts. */
export function gpuRow(
  gpu: Gpu,
  name: string,
  shape: string,
  ms: number,
  { flops = 0, bytes = 0, relErr, ref }: { flops?: number; bytes?: number; relErr?: number; ref?: string } =
    {},
): BenchRow {
  const row: BenchRow = {
    name,
    backend: gpu.caps.backend,
    adapter: gpu.caps.adapter,
    shape,
    ms,
    tflops: flops > 0 ? flops / (ms * 1e-3) / 1e12 : null,
    gbps: bytes > 0 ? bytes / (ms * 1e-3) / 1e9 : null,
  };
  if (relErr !== undefined) row.relErr = relErr;
  if (ref !== undefined) row.ref = ref;
  return row;
}
