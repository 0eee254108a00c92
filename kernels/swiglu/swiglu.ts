// The one launcher of the SwiGLU gate of the Llama MLP: h = silu(g) * u and its backward, with
// silu recomputed from g in the backward.
//
// Dimension letters: T tokens, I intermediate size; the kernels see the flat n = T * I (any n).
//   g, u, h, dh, dg, du: f16 [T, I], separate buffers.
//
// A launch covers the first floor(n / 8) * 8 elements with 16-byte vector loads and stores (two
// units of 8 elements per invocation) and the last n % 8 elements, if any, with a second, tiny
// dispatch over 32-bit words. Bindings may be whole buffers or ranges (offsets as WebGPU requires);
// each must hold its n elements (rounded up to whole 4-byte words). Nothing after element n - 1 is
// written.

import type { Binding, Encoder } from "../../engine/encoder.ts";
import { elementwiseGrid } from "../elementwise/elementwise.ts";
import swigluCode from "./swiglu.wgsl" with { type: "text" };

const SHADER = { file: "kernels/swiglu/swiglu.wgsl", code: swigluCode };
/** Elements per vector unit (one 16-byte vector of halves). */
const UNIT = 8;
/** Units per invocation (UNITS in the shader). */
const UNITS = 2;

function checkCount(what: string, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`${what}: n = ${n} must be a whole number >= 0`);
}

interface Range {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

/** Encodes the vector entry over whole units of 8 and the tail entry over the last n % 8. */
async function launch(
  enc: Encoder,
  what: string,
  entry: string,
  named: [string, Binding][],
  n: number,
): Promise<void> {
  checkCount(what, n);
  const need = Math.ceil((n * 2) / 4) * 4;
  const ranges: Range[] = named.map(([name, b]) => {
    const r = "buffer" in b ? b : { buffer: b, offset: 0, size: b.size };
    if (r.size < need) {
      throw new RangeError(
        `${what}: buffer "${name}" binds ${r.size} bytes but n = ${n} f16 elements need ${need}; ` +
          `pass a larger buffer or a smaller n`,
      );
    }
    return r;
  });
  const main = Math.floor(n / UNIT) * UNIT;
  if (main > 0) {
    const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry });
    enc.dispatch(
      pipeline,
      new Uint32Array([main, 0, 0, 0]),
      ranges.map((r) => ({ buffer: r.buffer, offset: r.offset, size: main * 2 })),
      elementwiseGrid(enc.gpu.caps, Math.ceil(main / UNIT / UNITS)),
    );
  }
  if (n > main) {
    // The tail's bindings begin at the last aligned byte at or before the tail.
    const align = enc.gpu.device.limits.minStorageBufferOffsetAlignment;
    const skip = Math.floor((main * 2) / align) * align;
    const pipeline = await enc.gpu.pipelines.get({ shader: SHADER, entry: `${entry}_tail` });
    enc.dispatch(
      pipeline,
      new Uint32Array([n - main, (main * 2 - skip) / 2, 0, 0]),
      ranges.map((r) => ({ buffer: r.buffer, offset: r.offset + skip, size: r.size - skip })),
      [1],
    );
  }
}

export interface SwigluForwardArgs {
  /** f16 [T, I]: gate projection. */
  g: Binding;
  /** f16 [T, I]: up projection. */
  u: Binding;
  /** f16 [T, I]. */
  h: Binding;
  /** T * I. */
  n: number;
}

/** h = silu(g) * u, in f32, rounded once to f16. */
export function swigluForward(enc: Encoder, args: SwigluForwardArgs): Promise<void> {
  return launch(enc, "swigluForward", "forward", [["g", args.g], ["u", args.u], ["h", args.h]], args.n);
}

export interface SwigluBackwardArgs {
  /** f16 [T, I]: gradient of h. */
  dh: Binding;
  /** f16 [T, I]: the forward's g and u. */
  g: Binding;
  u: Binding;
  /** f16 [T, I]: gradients of g and u. */
  dg: Binding;
  du: Binding;
  n: number;
}

/** du = dh * silu(g), dg = dh * u * s * (1 + g * (1 - s)) with s = sigmoid(g); f32 inside. */
export function swigluBackward(enc: Encoder, args: SwigluBackwardArgs): Promise<void> {
  return launch(
    enc,
    "swigluBackward",
    "backward",
    [["dh", args.dh], ["g", args.g], ["u", args.u], ["dg", args.dg], ["du", args.du]],
    args.n,
  );
}
