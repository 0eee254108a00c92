// End-to-end QLoRA step: one forward + backward (per-block recomputation, fused lm_head + CE) of an
// 8B-shaped random NF4 model built on the GPU (no download) at T = 4096, LoRA r = 64 on all 7 modules;
// rows qlora_step_8b (ms) and qlora_step_8b_peak_gb (the measured peak GiB in `ms`, rates null).
// Quick: a tiny config at T = 128.

import { trimBufferPool } from "../engine/buffers.ts";
import { formatGaps, formatProfile, profileGpu } from "../engine/profile.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../bench/harness.ts";
import { LLAMA31_8B } from "./config.ts";
import { hasTensorCores } from "../kernels/matmul/matmul.ts";
import { randomLlama } from "./llama.ts";
import { formatMemoryPlan, planMemory } from "./memory_plan.ts";
import { ALL_LORA_TARGETS, type LlamaConfig } from "./types.ts";

const TINY: LlamaConfig = {
  ...LLAMA31_8B,
  hiddenSize: 256,
  intermediateSize: 512,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 64,
  vocabSize: 1024,
  bosTokenId: 0,
  eosTokenIds: [1],
};

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const config = ctx.quick ? TINY : LLAMA31_8B;
  const T = ctx.quick ? 128 : 4096;
  const r = ctx.quick ? 8 : 64;
  const rows: BenchRow[] = [];
  for (const gpu of ctx.gpus) {
    const lora = { r, alpha: r, dropout: 0, targets: [...ALL_LORA_TARGETS], useRslora: false };
    console.error(
      formatMemoryPlan(
        planMemory({
          config,
          T,
          r,
          targets: lora.targets,
          baseFormat: "nf4",
          optimizerBytesPerParam: 0,
          tensorCores: hasTensorCores(gpu.caps),
        }),
      ),
    );
    trimBufferPool(gpu);
    const base = gpu.memory.report().liveBytes;
    const model = await randomLlama(config, 1, { gpus: gpu, lora, baseFormat: "nf4" });
    try {
      const ids = Int32Array.from({ length: T }, (_, i) => (i * 7919) % config.vocabSize);
      await model.forwardBackward(ids, ids, 1 / T, 0); // warm-up: pipelines
      gpu.memory.resetPeak();
      const times: number[] = [];
      for (let i = 0; i < (ctx.quick ? 2 : 3); i++) {
        const t0 = performance.now();
        await model.forwardBackward(ids, ids, 1 / T, i);
        times.push(performance.now() - t0);
      }
      times.sort((a, b) => a - b);
      if (gpu.caps.timestamps) {
        const { profile } = await profileGpu(gpu, () => model.forwardBackward(ids, ids, 1 / T, 9));
        console.error(`qlora_step_8b on ${gpu.name}, one forward + backward profiled, by shader:`);
        console.error(formatProfile(profile, 30, true));
        console.error(`by shader and grid:\n${formatProfile(profile, 30)}`);
        console.error(`longest idle gaps:\n${formatGaps(profile, 25)}`);
      }
      const peak = gpu.memory.report().peakBytes - base;
      const shape = `L=${config.numLayers} C=${config.hiddenSize} T=${T} R=${r} nf4 all7 peak=${
        (peak / 2 ** 30).toFixed(2)
      }GiB`;
      rows.push(gpuRow(gpu, "qlora_step_8b", shape, times[Math.floor(times.length / 2)]));
      rows.push({ ...gpuRow(gpu, "qlora_step_8b_peak_gb", shape, peak / 2 ** 30), tflops: null, gbps: null });
    } finally {
      model.destroy();
    }
  }
  return rows;
}
