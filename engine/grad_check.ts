// The global L2 norm of f32 gradients on one device and the non-finite flag that the loss scaler
// needs (kernels/optim gradStats), read back as numbers.

import { createBuffer, readBytes, releaseBuffer } from "./buffers.ts";
import { Encoder } from "./encoder.ts";
import type { Gpu } from "./gpu.ts";
import {
  GRAD_STATS_BYTES,
  gradStats,
  gradStatsWorkspaceBytes,
  type GradTensor,
} from "../kernels/optim/optim.ts";

export async function gradientStats(
  gpu: Gpu,
  grads: readonly GradTensor[],
): Promise<{ norm: number; nonFinite: boolean }> {
  const partials = createBuffer(gpu, gradStatsWorkspaceBytes(grads), "workspace", "grad_stats.partials");
  const stats = createBuffer(gpu, GRAD_STATS_BYTES, "workspace", "grad_stats");
  try {
    const enc = new Encoder(gpu, { label: "grad stats" });
    await gradStats(enc, { grads, partials, stats });
    await enc.submit();
    const bytes = await readBytes(gpu, stats, GRAD_STATS_BYTES);
    const norm = new Float32Array(bytes, 0, 1)[0];
    const flag = new Uint32Array(bytes, 4, 1)[0];
    return { norm, nonFinite: flag !== 0 || !Number.isFinite(norm) };
  } finally {
    releaseBuffer(partials);
    releaseBuffer(stats);
  }
}
