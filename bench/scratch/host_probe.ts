// Host cost of a decode step: 32 tiny layers (the 8B's dispatch count), Dawn on lavapipe.
import { openGpu } from "../../engine/gpu.ts";
import { LLAMA31_8B } from "../../model/config.ts";
import { KvCacheModel } from "../../model/generate.ts";
import { randomLlama } from "../../model/llama.ts";
import { argmax } from "../../model/sampling.ts";
import { ALL_LORA_TARGETS, type LlamaConfig } from "../../model/types.ts";
const cfg: LlamaConfig = {
  ...LLAMA31_8B,
  hiddenSize: 256,
  intermediateSize: 512,
  numLayers: 32,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 64,
  vocabSize: 1024,
  bosTokenId: 0,
  eosTokenIds: [1],
};
const gpu = await openGpu({ backend: (Deno.env.get("BACKEND") ?? "dawn") as "dawn" });
const lora = { r: 64, alpha: 64, dropout: 0, targets: [...ALL_LORA_TARGETS], useRslora: false };
const model = await randomLlama(cfg, 1, { gpus: gpu, lora, baseFormat: "nf4" });
const kv = await KvCacheModel.create(model, { maxTokens: 128 });
const prompt = Array.from({ length: 8 }, (_, i) => i + 2);
let logits = await kv.prefill(prompt);
for (let i = 0; i < 3; i++) logits = await kv.step(argmax(logits));
for (let rep = 0; rep < 3; rep++) {
  logits = await kv.prefill(prompt);
  kv.resetDecodeTimes();
  const t0 = performance.now();
  const steps = 40;
  for (let i = 0; i < steps; i++) logits = await kv.step(argmax(logits));
  const t = kv.decodeTimes;
  console.log(
    `${((performance.now() - t0) / steps).toFixed(2)} ms/token: encode ${
      (t.encodeMs / t.steps).toFixed(2)
    } submit ${(t.submitMs / t.steps).toFixed(2)} wait ${(t.waitReadMs / t.steps).toFixed(2)}`,
  );
}
kv.destroy();
model.destroy();
Deno.exit(0);
