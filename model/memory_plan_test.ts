import { ok as assert } from "node:assert";
import { trimBufferPool } from "../engine/buffers.ts";
import { gpuTest } from "../engine/testing.ts";
import { planMemory } from "./memory_plan.ts";
import { randomLlama } from "./llama.ts";
import { LLAMA31_8B } from "./config.ts";
import { ALL_LORA_TARGETS, type LlamaConfig } from "./types.ts";
import { hasTensorCores } from "../kernels/matmul/matmul.ts";

Deno.test("memory plan: Llama-3.1-8B QLoRA r=64 at T=4096 fits in 12 GB with 167,772,160 LoRA params", () => {
  const plan = planMemory({
    config: LLAMA31_8B,
    T: 4096,
    r: 64,
    targets: [...ALL_LORA_TARGETS],
    baseFormat: "nf4",
    optimizerBytesPerParam: 0,
  });
  assert(plan.loraParams === 167_772_160, `${plan.loraParams}`);
  assert(plan.peak < 12e9, `${plan.peak}`);
});

const SMALL: LlamaConfig = {
  hiddenSize: 128,
  intermediateSize: 256,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 32,
  vocabSize: 512,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  maxPositionEmbeddings: 256,
  tieWordEmbeddings: false,
  bosTokenId: 0,
  eosTokenIds: [1],
};

for (const baseFormat of ["f16", "nf4"] as const) {
  await gpuTest(`memory plan (${baseFormat}): prediction within 10% of the measured peak`, async (gpu) => {
    const T = 64;
    const lora = { r: 8, alpha: 16, dropout: 0, targets: [...ALL_LORA_TARGETS], useRslora: false };
    trimBufferPool(gpu);
    const base = gpu.memory.report().liveBytes;
    const model = await randomLlama(SMALL, 1, { gpus: gpu, lora, baseFormat });
    try {
      gpu.memory.resetPeak();
      const ids = Int32Array.from({ length: T }, (_, i) => (i * 7) % SMALL.vocabSize);
      await model.forwardBackward(ids, ids, 1, 0);
      const measured = gpu.memory.report().peakBytes - base;
      const plan = planMemory({
        config: SMALL,
        T,
        r: 8,
        targets: lora.targets,
        baseFormat,
        optimizerBytesPerParam: 0,
        tensorCores: hasTensorCores(gpu.caps),
      });
      const rel = Math.abs(plan.peak - measured) / measured;
      assert(rel < 0.1, `predicted ${plan.peak}, measured ${measured} (${(rel * 100).toFixed(1)}%)`);
    } finally {
      model.destroy();
    }
  });
}
