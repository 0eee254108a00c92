// The launcher of the argmax over one f32 row (the greedy choice of the next token on the GPU, so
// that a decode step can feed the next one without the logits going to the host).
//
// Dimension letters: n values.
//   values: f32 [n]   part: workspace of argmaxWorkspaceBytes(n) bytes   out: i32 [1]
// out[0] = the index of the largest value, the first one on ties; a NaN never wins, and a NaN at
// index 0 gives 0 (the sequential scan from index 0, as argmax in model/sampling.ts).

import { type Binding, bindingBytes, type Encoder } from "../../engine/encoder.ts";
import argmaxCode from "./argmax.wgsl" with { type: "text" };

const SHADER = { file: "kernels/argmax/argmax.wgsl", code: argmaxCode };
/** Elements per workgroup of the first pass (WG * ITEMS in the shader). */
const SPAN = 256 * 8;

/** Workspace bytes of argmax over n values: one (value, index) pair per first-pass workgroup. */
export function argmaxWorkspaceBytes(n: number): number {
  return Math.ceil(n / SPAN) * 8;
}

export interface ArgmaxArgs {
  values: Binding;
  n: number;
  part: Binding;
  /** Written: i32 [1]. */
  out: Binding;
}

/** Encodes out[0] = argmax(values[0 .. n)): two dispatches. */
export async function argmax(enc: Encoder, args: ArgmaxArgs): Promise<void> {
  const { n } = args;
  if (!Number.isInteger(n) || n < 1 || n >= 2 ** 31) {
    throw new RangeError(`argmax: n = ${n} must be a whole number in [1, 2^31)`);
  }
  const need = { values: n * 4, part: argmaxWorkspaceBytes(n), out: 4 };
  for (const [name, bytes] of Object.entries(need)) {
    const have = bindingBytes(args[name as keyof typeof need]);
    if (have < bytes) throw new RangeError(`argmax n=${n}: ${name} has ${have} bytes, needs ${bytes}`);
  }
  const groups = Math.ceil(n / SPAN);
  if (groups > enc.gpu.caps.limits.maxComputeWorkgroupsPerDimension) {
    throw new RangeError(
      `argmax: n = ${n} needs ${groups} workgroups, over the adapter's per-dimension limit`,
    );
  }
  const params = Uint32Array.of(n, groups);
  const partials = await enc.gpu.pipelines.get({ shader: SHADER, entry: "partials" });
  enc.dispatch(partials, params, [args.values, args.part], [groups]);
  const combine = await enc.gpu.pipelines.get({ shader: SHADER, entry: "combine" });
  enc.dispatch(combine, params, [args.values, args.part, args.out], [1]);
}
