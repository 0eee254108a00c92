// The copy bandwidth through a compute shader (bench/shader_copy.wgsl), the reference of the
// memory-bound rows on the WebGPU side: Dawn's copyBufferToBuffer runs at about 850 GB/s on an
// H100, where shaders move 2.8-2.9 TB/s (PyTorch's device copy: 3.0 TB/s; bench/RESULTS.md).

import { createBuffer, releaseBuffer } from "../engine/buffers.ts";
import { workgroupGrid } from "../engine/encoder.ts";
import type { Gpu } from "../engine/gpu.ts";
import { timeGpu } from "../engine/timing.ts";
import code from "./shader_copy.wgsl" with { type: "text" };

const WORDS_PER_WORKGROUP = 256 * 8;

/** Bytes the copy references move in each direction: 1 GiB (quick: 16 MiB), within what one buffer
 * and one storage binding may hold on this device. */
export function copyReferenceBytes(gpu: Gpu, quick: boolean): number {
  const limits = gpu.caps.limits;
  const limit = Math.min(limits.maxBufferSize, limits.maxStorageBufferBindingSize);
  return Math.min(quick ? 16 * 2 ** 20 : 2 ** 30, Math.floor(limit / 16) * 16);
}

/** GB/s (bytes read plus bytes written) of copying `bytes` (a multiple of 16) from one buffer into
 * another through the shader, timed with the GPU kept busy (timeGpu). */
export async function shaderCopyGbps(gpu: Gpu, bytes: number, warmupMs = 1000): Promise<number> {
  if (!(bytes > 0 && bytes % 16 === 0)) {
    throw new RangeError(`shaderCopyGbps: bytes = ${bytes} must be a multiple of 16`);
  }
  const words = bytes / 16;
  const pipeline = await gpu.pipelines.get({
    shader: { file: "bench/shader_copy.wgsl", code },
    entry: "main",
  });
  const g = workgroupGrid(gpu.caps, Math.ceil(words / WORDS_PER_WORKGROUP));
  const params = Uint32Array.of(words, g[0], 0, 0);
  const src = createBuffer(gpu, bytes, "workspace", "shader copy src");
  const dst = createBuffer(gpu, bytes, "workspace", "shader copy dst");
  try {
    const t = await timeGpu(gpu, (enc) => enc.dispatch(pipeline, params, [src, dst], g), { warmupMs });
    return (2 * bytes) / (t.ms * 1e-3) / 1e9;
  } finally {
    releaseBuffer(src);
    releaseBuffer(dst);
  }
}
