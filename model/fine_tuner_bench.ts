// One optimizer step of a real LLAMAFineTuner run on an 8B-shaped model with random NF4 weights
// generated on the GPU (no download): QLoRA r = 64 on all 7 modules, one sequence of T = 4096
// tokens per step, AdamW 8-bit, loss scaling, clipping. The first step compiles every pipeline;
// the row is the median of the steps after it. Quick: a tiny model, T = 128.
//
// Rows: llama_finetuner_step_8b (ms per optimizer step; tokens per second in the shape string).

import { trimBufferPool } from "../engine/buffers.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../bench/harness.ts";
import { Rng } from "../engine/rng.ts";
import { LLAMA31_8B } from "./config.ts";
import { LLAMAFineTuner, type TrainExample } from "./fine_tuner.ts";
import { createStrategy } from "./strategy.ts";
import { DEFAULT_TRAINING_CONFIG, loraConfigOf, type TrainingConfig } from "./training_config.ts";
import type { LlamaConfig } from "./types.ts";

const TINY: LlamaConfig = {
  ...LLAMA31_8B,
  hiddenSize: 128,
  intermediateSize: 256,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 32,
  vocabSize: 512,
  bosTokenId: 1,
  eosTokenIds: [2],
};

function examples(n: number, T: number, V: number, seed: number): TrainExample[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const ids = Array.from({ length: T }, () => rng.int(V));
    return { id: `random-${i}`, input_ids: ids, labels: ids };
  });
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const model = ctx.quick ? TINY : LLAMA31_8B;
  const T = ctx.quick ? 128 : 4096;
  const steps = 3;
  for (const gpu of ctx.gpus) {
    // Deno's WebGPU has no subgroup matrices: an 8B step there takes minutes; quick shapes only.
    if (!ctx.quick && gpu.caps.subgroupMatrix.length === 0) continue;
    const config: TrainingConfig = {
      ...DEFAULT_TRAINING_CONFIG,
      maxSteps: steps,
      sequencesPerStep: 1,
      maxSeqLength: T,
      evalEvery: 0,
      saveEvery: 0,
    };
    const strategy = createStrategy("qlora");
    const runDir = await Deno.makeTempDir({ prefix: "finetuner_bench_" });
    // Peak of this run's own buffers: what other benches of the process hold is left out.
    trimBufferPool(gpu);
    const base = gpu.memory.report().liveBytes;
    gpu.memory.resetPeak();
    const llama = await strategy.createModel(
      [gpu],
      { kind: "random", config: model, seed: 1 },
      loraConfigOf(config),
      1,
    );
    try {
      const tuner = new LLAMAFineTuner({
        config,
        strategy,
        model: llama,
        train: examples(steps, T, model.vocabSize, 2),
        val: [],
        runDir,
        baseModelName: "random-llama-3.1-8b-shape",
      });
      const times: number[] = [];
      for (let s = 0; s < steps; s++) {
        const t0 = performance.now();
        await tuner.trainStep();
        await gpu.sync();
        times.push(performance.now() - t0);
      }
      const timed = times.slice(1).sort((a, b) => a - b);
      const ms = timed[Math.floor(timed.length / 2)];
      const peak = (gpu.memory.report().peakBytes - base) / 2 ** 30;
      rows.push(
        gpuRow(
          gpu,
          "llama_finetuner_step_8b",
          `L=${model.numLayers} C=${model.hiddenSize} T=${T} R=${config.loraR} qlora adamw8bit ${
            (T / (ms / 1e3)).toFixed(0)
          } tok/s peak=${peak.toFixed(2)}GiB first=${(times[0] / 1e3).toFixed(1)}s`,
          ms,
        ),
      );
    } finally {
      llama.destroy();
      await Deno.remove(runDir, { recursive: true });
    }
  }
  return rows;
}
