// Decoding speed at batch 1: an 8B-shaped random model with NF4 base weights (quantized on the GPU,
// no download) and a LoRA adapter r = 64 on all seven projections (applied unmerged, as QLoRA
// inference runs), KV cache of 512 rows, a 256-token prompt prefilled, then greedy decode steps
// timed end to end (encode, submit, logits readback, argmax on the CPU). Row decode_8b_nf4: ms per
// token; gbps = the weight bytes one token reads (NF4 codes + absmax codes + nested absmax of every
// projection, f16 LoRA factors, norms, f16 lm_head, one embedding row) per second of that time, so
// `compare` relates it to the copy bandwidth of the same device (ref copy_bandwidth).
// Quick: a tiny config, 64-row cache.

import { type BenchContext, type BenchRow, gpuRow } from "../bench/harness.ts";
import { LLAMA31_8B } from "./config.ts";
import { KvCacheModel } from "./generate.ts";
import { moduleShape, randomLlama } from "./llama.ts";
import { argmax } from "./sampling.ts";
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

/** Bytes of weights one decoded token reads. */
export function decodeWeightBytes(cfg: LlamaConfig, r: number): number {
  const C = cfg.hiddenSize;
  let perLayer = 2 * C * 2; // the two norms
  for (const m of ALL_LORA_TARGETS) {
    const [out, inDim] = moduleShape(cfg, m);
    const n = out * inDim;
    const blocks = Math.ceil(n / 64);
    perLayer += n / 2 + blocks + (1 + Math.ceil(blocks / 256)) * 4 + 256 * 4; // codes, absmax, nested, dynmap
    perLayer += r * (inDim + out) * 2; // LoRA f16 copies
  }
  return cfg.numLayers * perLayer + C * 2 + cfg.vocabSize * C * 2 + C * 2; // + final norm, lm_head, embedding row
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const config = ctx.quick ? TINY : LLAMA31_8B;
  const r = ctx.quick ? 8 : 64;
  const cache = ctx.quick ? 64 : 512;
  const promptLen = cache / 2;
  const steps = ctx.quick ? 8 : 64;
  const rows: BenchRow[] = [];
  for (const gpu of ctx.gpus) {
    const lora = { r, alpha: r, dropout: 0, targets: [...ALL_LORA_TARGETS], useRslora: false };
    const model = await randomLlama(config, 1, { gpus: gpu, lora, baseFormat: "nf4" });
    const kv = await KvCacheModel.create(model, { maxTokens: cache });
    try {
      const prompt = Array.from({ length: promptLen }, (_, i) => (i * 7919 + 3) % config.vocabSize);
      // Warm-up: pipelines of the prefill and of the decode step.
      let logits = await kv.prefill(prompt);
      for (let i = 0; i < 2; i++) logits = await kv.step(argmax(logits));
      const samples: number[] = [];
      for (let rep = 0; rep < (ctx.quick ? 1 : 3); rep++) {
        logits = await kv.prefill(prompt);
        const t0 = performance.now();
        for (let i = 0; i < steps; i++) logits = await kv.step(argmax(logits));
        samples.push((performance.now() - t0) / steps);
      }
      samples.sort((a, b) => a - b);
      const ms = samples[Math.floor(samples.length / 2)];
      const bytes = decodeWeightBytes(config, r);
      console.error(
        `decode_8b_nf4 on ${gpu.name}: ${(1000 / ms).toFixed(1)} tokens/s, ${
          (bytes / 2 ** 30).toFixed(2)
        } GiB ` +
          `of weights per token`,
      );
      const shape =
        `L=${config.numLayers} C=${config.hiddenSize} V=${config.vocabSize} nf4 lora r=${r} all7 ` +
        `cache=${cache} pos=${promptLen}..${promptLen + steps} batch=1 tok/s=${(1000 / ms).toFixed(1)}`;
      rows.push(gpuRow(gpu, "decode_8b_nf4", shape, ms, { bytes, ref: "copy_bandwidth" }));
    } finally {
      kv.destroy();
      model.destroy();
    }
  }
  return rows;
}
