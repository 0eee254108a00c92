// The one launcher of RMSNorm (Hugging Face Llama order): forward with the per-row statistic
// saved for the backward, input gradient, and the (optional) weight gradient.
//
// Dimension letters: T rows (tokens), C channels (hidden size; a multiple of 4).
//   x, y, dy, dx: f16 [T, C]   w: f16 [C]   rstd: f32 [T]   dw: f32 [C]
//
// dx is f16, like the activations it is the gradient of; it is computed in f32 and rounded once,
// optionally added to the dx already there (the residual stream's gradient) before rounding.

import { type Binding, bindingBytes, type Encoder } from "../../engine/encoder.ts";
import { elementwiseGrid } from "../elementwise/elementwise.ts";
import rmsnormCode from "./rmsnorm.wgsl" with { type: "text" };

const SHADER = { file: "kernels/norm/rmsnorm.wgsl", code: rmsnormCode };
const WG = 256;
/** Rows per slice of the weight gradient's partial sums (DW_ROWS in the shader). */
const DW_ROWS = 32;
/** Columns (vec4) per workgroup of the final sum over the slices (DW_COLS in the shader). */
const DW_COLS = 64;

function checkShape(what: string, T: number, C: number): void {
  if (!Number.isInteger(T) || T < 0) throw new RangeError(`${what}: T = ${T} must be a whole number >= 0`);
  if (!Number.isInteger(C) || C <= 0 || C % 4 !== 0) {
    throw new RangeError(`${what}: C = ${C} must be a positive multiple of 4 (rows are read as vec4<f16>)`);
  }
}

function params(T: number, C: number, eps: number, flags: number): Uint8Array {
  const buf = new ArrayBuffer(16);
  new Uint32Array(buf, 0, 2).set([T, C]);
  new Float32Array(buf, 8, 1)[0] = eps;
  new Uint32Array(buf, 12, 1)[0] = flags;
  return new Uint8Array(buf);
}

export interface RmsNormForwardArgs {
  /** f16 [T, C]. */
  x: Binding;
  /** f16 [C]. */
  w: Binding;
  /** f16 [T, C]. */
  y: Binding;
  /** f32 [T]: 1 / sqrt(mean(x^2) + eps) of each row, for the backward. */
  rstd: Binding;
  T: number;
  C: number;
  /** rms_norm_eps; Llama-3.1 uses 1e-5. */
  eps: number;
}

/** y = f16(f16(x * rstd) * w) with rstd = 1 / sqrt(mean(x^2) + eps) computed in f32. */
export async function rmsnormForward(enc: Encoder, args: RmsNormForwardArgs): Promise<void> {
  checkShape("rmsnormForward", args.T, args.C);
  if (!(args.eps >= 0)) throw new RangeError(`rmsnormForward: eps = ${args.eps} must be >= 0`);
  const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry: "forward" });
  enc.dispatch(
    pipeline,
    params(args.T, args.C, args.eps, 0),
    [args.x, args.w, args.y, args.rstd],
    elementwiseGrid(enc.gpu.caps, args.T, 1),
  );
}

export interface RmsNormBackwardArgs {
  /** f16 [T, C]: gradient of y. */
  dy: Binding;
  /** f16 [T, C]: the forward's input. */
  x: Binding;
  /** f16 [C]. */
  w: Binding;
  /** f32 [T]: saved by rmsnormForward. */
  rstd: Binding;
  /** f16 [T, C]: gradient of x. */
  dx: Binding;
  T: number;
  C: number;
  /** Add to the dx already in the buffer instead of overwriting it. */
  accumulate?: boolean;
}

/** dx = r * dn - r^3 * x * sum(dn * x) / C with dn = dy * w (the f16 rounding of the forward is
 * passed straight through), in f32, rounded once to f16. */
export async function rmsnormBackward(enc: Encoder, args: RmsNormBackwardArgs): Promise<void> {
  checkShape("rmsnormBackward", args.T, args.C);
  const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry: "backward" });
  enc.dispatch(
    pipeline,
    params(args.T, args.C, 0, args.accumulate ? 1 : 0),
    [args.dy, args.x, args.w, args.rstd, args.dx],
    elementwiseGrid(enc.gpu.caps, args.T, 1),
  );
}

/** Bytes of the scratch buffer rmsnormWeightGrad needs: f32 partial sums [ceil(T / 32), C]. */
export function rmsnormWeightGradWorkspaceBytes(T: number, C: number): number {
  return Math.max(1, Math.ceil(T / DW_ROWS)) * C * 4;
}

export interface RmsNormWeightGradArgs {
  /** f16 [T, C]. */
  dy: Binding;
  /** f16 [T, C]. */
  x: Binding;
  /** f32 [T]. */
  rstd: Binding;
  /** f32 [C]. */
  dw: Binding;
  /** Scratch of at least rmsnormWeightGradWorkspaceBytes(T, C) bytes. */
  workspace: Binding;
  T: number;
  C: number;
  /** Add to the dw already in the buffer (gradient accumulation) instead of overwriting it. */
  accumulate?: boolean;
}

/** dw[c] = sum over rows of dy[t, c] * f16(x[t, c] * rstd[t]), in f32, in a fixed order (two
 * dispatches: per-slice partial sums, then their sum). */
export async function rmsnormWeightGrad(enc: Encoder, args: RmsNormWeightGradArgs): Promise<void> {
  const { T, C } = args;
  checkShape("rmsnormWeightGrad", T, C);
  const ws = args.workspace;
  const wsBytes = bindingBytes(ws);
  const need = rmsnormWeightGradWorkspaceBytes(T, C);
  if (wsBytes < need) {
    throw new RangeError(
      `rmsnormWeightGrad: workspace has ${wsBytes} bytes; T = ${T}, C = ${C} need ${need} ` +
        `(rmsnormWeightGradWorkspaceBytes)`,
    );
  }
  const slices = Math.max(1, Math.ceil(T / DW_ROWS));
  const cols = Math.ceil(C / 4 / WG);
  const partial = await enc.gpu.pipelines.get({ shader: SHADER, entry: "dw_partial" });
  const reduce = await enc.gpu.pipelines.get({ shader: SHADER, entry: "dw_reduce" });
  const flags = args.accumulate ? 1 : 0;
  if (T > 0) enc.dispatch(partial, params(T, C, 0, 0), [args.dy, args.x, args.rstd, ws], [cols, slices]);
  enc.dispatch(reduce, params(T, C, 0, flags), [ws, args.dw], [Math.ceil(C / 4 / DW_COLS)]);
}
