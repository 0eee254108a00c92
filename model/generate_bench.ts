// Decoding speed at batch 1: an 8B-shaped random model with NF4 base weights (quantized on the GPU,
// no download) and a LoRA adapter r = 64 on all seven projections (applied unmerged, as QLoRA
// inference runs), KV cache of 128 rows, a 32-token prompt prefilled, then 24 tokens of greedy
// decoding as generateIds runs it, timed end to end (the argmax on the GPU feeding the next step, the
// host encoding a step or two ahead, the ids read back as they come). Row decode_8b_nf4: ms per
// token; row decode_8b_nf4_base: the same model without an adapter (the NF4 base alone). For both,
// gbps = the bytes one token must read (NF4 codes + absmax codes + nested absmax + dynamic map of
// every projection, f16 LoRA factors, norms, f16 lm_head, one embedding row, the KV cache rows
// attended to) per second of that time, so `compare` relates it to the copy bandwidth of the same
// device (ref copy_bandwidth): the fraction of the memory-bandwidth limit that decoding reaches. The
// bench also measures a shader copy itself and prints tokens/s, that ratio (also in the row's shape),
// where a step's wall time goes on the host (encoding, submit, waiting for the ids), and the same
// steps with the host in the loop (logits read back and their argmax taken on the CPU each step).
// Quick: a tiny config, 64-row cache.

import { createBuffer, releaseBuffer } from "../engine/buffers.ts";
import type { Gpu } from "../engine/gpu.ts";
import { formatProfile, profileGpu } from "../engine/profile.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../bench/harness.ts";
import { copyReferenceBytes, shaderCopyGbps } from "../bench/shader_copy.ts";
import { LLAMA31_8B } from "./config.ts";
import { generateIds, KvCacheModel } from "./generate.ts";
import { moduleShape, randomLlama } from "./llama.ts";
import { argmax } from "./sampling.ts";
import { ALL_LORA_TARGETS, type LlamaConfig, NO_LORA } from "./types.ts";

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

/** Bytes of weights one decoded token reads (without the KV cache). */
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

/** Bytes of the KV cache that decode attention reads at cache length n (k and v of every layer). */
export function decodeCacheBytes(cfg: LlamaConfig, n: number): number {
  return cfg.numLayers * 2 * n * cfg.numKvHeads * cfg.headDim * 2;
}

/** GB/s (read + write bytes) of a 1 GiB copy through a compute shader (bench/shader_copy.ts), timed
 * with the GPU kept busy. copyBufferToBuffer is no reference: Dawn's Vulkan backend runs it at about
 * 850 GB/s on an H100, under a third of what shaders move. */
function copyGbps(gpu: Gpu, quick: boolean): Promise<number> {
  return shaderCopyGbps(gpu, copyReferenceBytes(gpu, quick), quick ? 10 : 1000);
}

/** Median wall milliseconds of an empty submit answered by onSubmittedWorkDone, and of mapping a
 * 4-byte buffer after a one-copy submit: the least a step that reads its logits can wait. */
async function roundTrips(gpu: Gpu): Promise<string> {
  const src = createBuffer(gpu, 16, "workspace", "roundtrip src");
  const dst = createBuffer(gpu, 16, "workspace", "roundtrip dst", 0x01 | 0x08);
  const median = (v: number[]) => v.sort((a, b) => a - b)[Math.floor(v.length / 2)];
  try {
    const done: number[] = [], mapped: number[] = [];
    for (let i = 0; i < 21; i++) {
      let t0 = performance.now();
      gpu.device.queue.submit([]);
      await gpu.device.queue.onSubmittedWorkDone();
      done.push(performance.now() - t0);
      t0 = performance.now();
      const enc = gpu.device.createCommandEncoder();
      enc.copyBufferToBuffer(src, 0, dst, 0, 16);
      gpu.device.queue.submit([enc.finish()]);
      await dst.mapAsync(1, 0, 4);
      dst.unmap();
      mapped.push(performance.now() - t0);
    }
    return `round trips: empty submit ${median(done).toFixed(3)} ms, copy + map ${
      median(mapped).toFixed(3)
    } ms`;
  } finally {
    releaseBuffer(src);
    releaseBuffer(dst);
  }
}

/** Decode tokens/s of an 8B-shaped NF4 model (TINY when quick) with a LoRA adapter of rank r on all
 * seven projections, or none (r = 0): its row, its numbers printed to stderr. */
async function benchDecode(gpu: Gpu, ctx: BenchContext, copy: number, r: number): Promise<BenchRow> {
  const config = ctx.quick ? TINY : LLAMA31_8B;
  const cache = ctx.quick ? 64 : 128;
  const promptLen = ctx.quick ? 16 : 32;
  const steps = ctx.quick ? 8 : 24;
  const name = r > 0 ? "decode_8b_nf4" : "decode_8b_nf4_base";
  const lora = r > 0
    ? { r, alpha: r, dropout: 0, targets: [...ALL_LORA_TARGETS], useRslora: false }
    : NO_LORA;
  const model = await randomLlama(config, 1, { gpus: gpu, lora, baseFormat: "nf4" });
  const kv = await KvCacheModel.create(model, { maxTokens: cache });
  try {
    const prompt = Array.from({ length: promptLen }, (_, i) => (i * 7919 + 3) % config.vocabSize);
    // Warm-up: pipelines of the prefill and of both kinds of decode step, the steps' bind groups.
    let logits = await kv.prefill(prompt);
    for (let i = 0; i < 2; i++) logits = await kv.step(argmax(logits));
    kv.reset();
    await generateIds(kv, prompt, { maxNewTokens: 3 }, []);
    const samples: number[] = [];
    const reps: string[] = [];
    for (let rep = 0; rep < (ctx.quick ? 1 : 3); rep++) {
      kv.reset();
      kv.resetDecodeTimes();
      const result = await generateIds(kv, prompt, { maxNewTokens: steps + 1 }, []);
      if (result.ids.length !== steps + 1) {
        throw new Error(`${name}: ${result.ids.length} tokens, expected ${steps + 1}`);
      }
      const ms = result.decodeMs / steps;
      samples.push(ms);
      const t = kv.decodeTimes;
      const per = (v: number) => (v / t.steps).toFixed(2);
      reps.push(
        `${ms.toFixed(2)} ms, ${t.dispatches / t.steps} dispatches: encode ${per(t.encodeMs)} ms, ` +
          `submit ${per(t.submitMs)} ms, waiting for the ids ${per(t.waitReadMs)} ms`,
      );
    }
    // The same steps with the host in the loop (logits read back, argmax on the CPU), for comparison.
    logits = await kv.prefill(prompt);
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) logits = await kv.step(argmax(logits));
    const hostLoopMs = (performance.now() - t0) / steps;
    samples.sort((a, b) => a - b);
    const ms = samples[Math.floor(samples.length / 2)];
    if (gpu.caps.timestamps) {
      const next = argmax(logits);
      const { result, profile } = await profileGpu(gpu, () => kv.step(next));
      logits = result;
      console.error(`${name} on ${gpu.name}, one step profiled:\n${formatProfile(profile, 16)}`);
    }
    console.error(`${name} on ${gpu.name}: ${await roundTrips(gpu)}`);
    const meanLength = promptLen + (steps + 1) / 2;
    const bytes = decodeWeightBytes(config, r) + decodeCacheBytes(config, meanLength);
    const gbps = bytes / (ms * 1e-3) / 1e9;
    console.error(
      `${name} on ${gpu.name}: ${(1000 / ms).toFixed(1)} tokens/s (${ms.toFixed(2)} ms/token), ` +
        `${(bytes / 2 ** 20).toFixed(1)} MiB read per token, ${gbps.toFixed(0)} GB/s = ` +
        `${(100 * gbps / copy).toFixed(0)}% of the measured shader copy bandwidth ${copy.toFixed(0)} GB/s ` +
        `(limit ${(copy * 1e9 / bytes).toFixed(1)} tokens/s); greedy with the argmax on the GPU, the host ` +
        `a step or two ahead; per token, each repetition:\n  ${reps.join("\n  ")}\n  with the host in the ` +
        `loop (logits read back, argmax on the CPU): ${hostLoopMs.toFixed(2)} ms per token`,
    );
    const adapter = r > 0 ? `lora r=${r} all7` : "no adapter";
    const shape = `L=${config.numLayers} C=${config.hiddenSize} V=${config.vocabSize} nf4 ${adapter} ` +
      `cache=${cache} pos=${promptLen}..${promptLen + steps} batch=1 tok/s=${(1000 / ms).toFixed(1)} ` +
      `copy=${copy.toFixed(0)}GB/s ratio=${(100 * gbps / copy).toFixed(0)}%`;
    return gpuRow(gpu, name, shape, ms, { bytes, ref: "copy_bandwidth" });
  } finally {
    kv.destroy();
    model.destroy();
  }
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const gpu of ctx.gpus) {
    const copy = await copyGbps(gpu, ctx.quick);
    for (const r of [ctx.quick ? 8 : 64, 0]) rows.push(await benchDecode(gpu, ctx, copy, r));
  }
  return rows;
}
