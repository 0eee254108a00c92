// Llama-3.1 with LoRA on the GPU engine: built from a Hugging Face folder (config.json and
// safetensors, bf16 / f16 / f32 weights) or randomly on the GPU; base linear weights in NF4 (quantized
// on the GPU) or f16; embeddings, norms and lm_head in f16; LoRA factors f32 with f16 copies.
//
// Dimension letters: T tokens, C hidden, H heads, KVH kv heads, D head dim, I intermediate,
// V vocabulary, R LoRA rank, L layers.
//
// One step (forwardBackward), B = 1:
//   x0 = embed(ids)                                               f16 [T, C]
//   L x block (forward on a tape that records nothing; only each block's input x_l is kept):
//     h = rmsnorm(x); q, k, v = LoRA-linear(h); q, k = rope(q, k); o = flash_attention(q, k, v)
//     x' = x + o_proj(o); h' = rmsnorm(x'); y = x' + down(silu(gate(h')) * up(h'))
//   final rmsnorm, then fused chunked lm_head + cross-entropy (the [T, V] logits never exist)
//   backward: for l = L-1 .. 0, recompute block l from x_l on a fresh tape, backprop through it.
// Labels follow the Hugging Face convention (unshifted): position t predicts labels[t + 1]; the
// model shifts them. LoRA gradients (f32) are added to what the gradient buffers hold.
//
// Several devices: layers are split into contiguous ranges, one per Gpu (the embedding on the first,
// the final norm and lm_head on the last); activations and their gradients cross through host memory.

import {
  closeBufferCensus,
  createBuffer,
  openBufferCensus,
  readAs,
  readBytes,
  readF16,
  readF32,
  releaseBuffer,
  trimBufferPool,
  upload,
  writeBuffer,
} from "../engine/buffers.ts";
import { matmul } from "../kernels/matmul/matmul.ts";
import { Encoder } from "../engine/encoder.ts";
import type { Gpu } from "../engine/gpu.ts";
import type { MemoryReport } from "../engine/memory.ts";
import { ReplayBindings, ReplayEncoder } from "../engine/replay_encoder.ts";
import { Tape } from "../engine/tape.ts";
import { Tensor } from "../engine/tensor.ts";
import { Rng } from "../engine/testing.ts";
import {
  add,
  attention,
  type Linear,
  linear,
  type LoraAdapter,
  rmsnorm,
  rope,
  swiglu,
} from "../engine/ops.ts";
import { castElements, type ElementType } from "../kernels/elementwise/elementwise.ts";
import { checkEmbeddingIds, embeddingForward } from "../kernels/embedding/embedding.ts";
import {
  createCrossEntropyWorkspace,
  CROSS_ENTROPY_DEFAULT_CHUNK,
  CROSS_ENTROPY_IGNORE_INDEX,
  CROSS_ENTROPY_TOTALS_BYTES,
  crossEntropyBackward,
  crossEntropyForward,
} from "../kernels/cross_entropy/cross_entropy.ts";
import { loraCastFactors } from "../kernels/lora/lora.ts";
import { nf4Quantize, nf4Release, type Nf4SourceDtype } from "../kernels/nf4/nf4.ts";
import { ropeInvFreq } from "../kernels/rope/rope.ts";
import { loadLlamaConfig, validateLlamaConfig } from "./config.ts";
import { SafetensorsCheckpoint, type SafetensorsDType } from "./safetensors.ts";
import {
  ALL_LORA_TARGETS,
  type BaseFormat,
  type LlamaConfig,
  type LlamaModel,
  type LoraConfig,
  type LoraParameter,
  type LoraTarget,
  type LossSum,
} from "./types.ts";

export interface LlamaBuildOptions {
  /** One device, or several for pipeline sharding (contiguous layer ranges in order). */
  gpus: Gpu | Gpu[];
  lora: LoraConfig;
  baseFormat: BaseFormat;
  /** Seed of the LoRA initialization (A kaiming-uniform, B zeros). */
  seed?: number;
  /** Layers per device (sums to numLayers); an even split by default. */
  layerSplit?: number[];
  /** Vocabulary columns per cross-entropy chunk. */
  ceChunk?: number;
}

/** The loss sums of the cross-entropy totals buffer (nll f32, label tokens u32); frees the buffer. */
async function readLossTotals(gpu: Gpu, totals: GPUBuffer): Promise<LossSum> {
  try {
    const bytes = await readBytes(gpu, totals, CROSS_ENTROPY_TOTALS_BYTES);
    return { nll: new Float32Array(bytes, 0, 1)[0], tokens: new Uint32Array(bytes, 4, 1)[0] };
  } finally {
    releaseBuffer(totals);
  }
}

/** Where each weight's module lives in the HF names. */
export const MODULE_PATH: Record<LoraTarget, string> = {
  q_proj: "self_attn.q_proj",
  k_proj: "self_attn.k_proj",
  v_proj: "self_attn.v_proj",
  o_proj: "self_attn.o_proj",
  gate_proj: "mlp.gate_proj",
  up_proj: "mlp.up_proj",
  down_proj: "mlp.down_proj",
};

/** [out, in] of each projection. */
export function moduleShape(cfg: LlamaConfig, m: LoraTarget): [number, number] {
  const { hiddenSize: C, intermediateSize: I, numHeads: H, numKvHeads: KVH, headDim: D } = cfg;
  switch (m) {
    case "q_proj":
      return [H * D, C];
    case "k_proj":
    case "v_proj":
      return [KVH * D, C];
    case "o_proj":
      return [C, H * D];
    case "gate_proj":
    case "up_proj":
      return [I, C];
    case "down_proj":
      return [C, I];
  }
}

/** The LoRA scaling s = alpha / r (alpha / sqrt(r) with rsLoRA). */
export function loraScaling(lora: LoraConfig): number {
  return lora.useRslora ? lora.alpha / Math.sqrt(lora.r) : lora.alpha / lora.r;
}

/** Layers per device: an even split, the remainder on the first devices. */
export function splitLayers(numLayers: number, devices: number): number[] {
  const base = Math.floor(numLayers / devices);
  return Array.from({ length: devices }, (_, i) => base + (i < numLayers % devices ? 1 : 0));
}

/** Supplies the weights: raw bytes of a tensor in F32, F16 or BF16. */
export interface WeightSource {
  has(name: string): boolean;
  read(name: string, shape: number[]): Promise<{ dtype: "F32" | "F16" | "BF16"; bytes: Uint8Array }>;
  close?(): void;
}

interface Layer {
  index: number;
  gpu: Gpu;
  attnNorm: GPUBuffer;
  mlpNorm: GPUBuffer;
  proj: Record<LoraTarget, Linear>;
}

interface Device {
  gpu: Gpu;
  first: number;
  end: number;
  invFreq: GPUBuffer;
}

const DTYPE_OF: Record<"F32" | "F16" | "BF16", ElementType> = { F32: "f32", F16: "f16", BF16: "bf16" };

function checkLora(lora: LoraConfig): void {
  if (!Number.isInteger(lora.r) || lora.r < 1 || lora.r > 64) {
    throw new RangeError(`LoRA r = ${lora.r} must be an integer in [1, 64] (the LoRA kernels' limit)`);
  }
  if (!(lora.alpha > 0)) throw new RangeError(`LoRA alpha = ${lora.alpha} must be positive`);
  if (!(lora.dropout >= 0 && lora.dropout < 1)) {
    throw new RangeError(`LoRA dropout ${lora.dropout} must be in [0, 1)`);
  }
  for (const t of lora.targets) {
    if (!ALL_LORA_TARGETS.includes(t)) {
      throw new RangeError(`LoRA target "${t}" is not one of ${ALL_LORA_TARGETS.join(", ")}`);
    }
  }
}

/** Mixes the step seed with a layer and module index into the dropout seed of one LoRA layer. */
function dropoutSeed(seed: number, layer: number, module: number): number {
  let h = (seed ^ Math.imul(layer + 1, 0x9e3779b1) ^ Math.imul(module + 1, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  return (h ^ (h >>> 15)) >>> 0;
}

export class Llama implements LlamaModel {
  readonly gpus: Gpu[];
  #layers: Layer[] = [];
  #devices: Device[] = [];
  #params: (LoraParameter & { layer: number; module: LoraTarget; factor: "A" | "B" })[] = [];
  #adapters: { gpu: Gpu; a: LoraAdapter; in: number; out: number }[] = [];
  #castBindings = new Map<Gpu, ReplayBindings>();
  /** Sequence length of the pass whose buffers the pools hold (-1: none). */
  #pooledLength = -1;
  #embed!: GPUBuffer;
  #finalNorm!: GPUBuffer;
  #lmHead!: GPUBuffer;
  #owned: GPUBuffer[] = [];
  #nf4: Linear[] = [];
  #ceChunk: number;
  #destroyed = false;

  private constructor(
    readonly config: LlamaConfig,
    readonly lora: LoraConfig,
    readonly baseFormat: BaseFormat,
    gpus: Gpu[],
    ceChunk: number,
  ) {
    this.gpus = gpus;
    this.#ceChunk = ceChunk;
  }

  /** Builds the model from a weight source onto the devices. */
  static async build(config: LlamaConfig, source: WeightSource, options: LlamaBuildOptions): Promise<Llama> {
    validateLlamaConfig(config);
    checkLora(options.lora);
    const gpus = Array.isArray(options.gpus) ? options.gpus : [options.gpus];
    if (gpus.length === 0) throw new RangeError("Llama.build: no devices given");
    const split = options.layerSplit ?? splitLayers(config.numLayers, gpus.length);
    if (split.length !== gpus.length || split.reduce((a, b) => a + b, 0) !== config.numLayers) {
      throw new RangeError(
        `layerSplit [${split}] must have one entry per device (${gpus.length}) summing to ${config.numLayers} layers`,
      );
    }
    const V = config.vocabSize;
    const chunk = options.ceChunk ?? Math.min(CROSS_ENTROPY_DEFAULT_CHUNK, Math.ceil(V / 128) * 128);
    const model = new Llama(
      config,
      { ...options.lora, targets: [...options.lora.targets] },
      options.baseFormat,
      gpus,
      chunk,
    );
    try {
      await model.#load(source, split, options.seed ?? 0);
    } catch (e) {
      model.destroy();
      throw e;
    }
    return model;
  }

  /** Builds the model from a Hugging Face folder (config.json and safetensors). */
  static async fromPretrained(dir: string, options: LlamaBuildOptions): Promise<Llama> {
    const config = await loadLlamaConfig(dir);
    const ckpt = await SafetensorsCheckpoint.open(dir);
    try {
      return await Llama.build(config, checkpointSource(ckpt), options);
    } finally {
      ckpt.close();
    }
  }

  async #load(source: WeightSource, split: number[], seed: number): Promise<void> {
    const cfg = this.config;
    const { hiddenSize: C, vocabSize: V } = cfg;
    let first = 0;
    for (let d = 0; d < this.gpus.length; d++) {
      const gpu = this.gpus[d];
      const inv = ropeInvFreq(cfg.headDim, cfg.ropeTheta, cfg.ropeScaling ?? undefined);
      const invFreq = this.#keep(upload(gpu, inv, "weights", "rope.inv_freq"));
      this.#devices.push({ gpu, first, end: first + split[d], invFreq });
      first += split[d];
    }
    const firstGpu = this.gpus[0];
    const lastGpu = this.gpus.at(-1)!;
    this.#embed = await this.#loadF16(firstGpu, source, "model.embed_tokens.weight", [V, C]);
    const rng = new Rng(seed);
    const scale = loraScaling(this.lora);
    for (const dev of this.#devices) {
      for (let l = dev.first; l < dev.end; l++) {
        const p = `model.layers.${l}`;
        const layer: Layer = {
          index: l,
          gpu: dev.gpu,
          attnNorm: await this.#loadF16(dev.gpu, source, `${p}.input_layernorm.weight`, [C]),
          mlpNorm: await this.#loadF16(dev.gpu, source, `${p}.post_attention_layernorm.weight`, [C]),
          proj: {} as Record<LoraTarget, Linear>,
        };
        for (const m of ALL_LORA_TARGETS) {
          const [out, inDim] = moduleShape(cfg, m);
          const lin: Linear = {
            in: inDim,
            out,
            base: await this.#loadLinear(dev.gpu, source, `${p}.${MODULE_PATH[m]}.weight`, out, inDim),
          };
          if (this.lora.targets.includes(m)) {
            lin.lora = this.#makeAdapter(dev.gpu, l, m, inDim, out, scale, rng);
          }
          layer.proj[m] = lin;
        }
        this.#layers.push(layer);
      }
    }
    this.#finalNorm = await this.#loadF16(lastGpu, source, "model.norm.weight", [C]);
    if (cfg.tieWordEmbeddings || !source.has("lm_head.weight")) {
      if (!cfg.tieWordEmbeddings) {
        throw new Error(
          "the checkpoint has no lm_head.weight and config.json does not set tie_word_embeddings",
        );
      }
      this.#lmHead = lastGpu === firstGpu
        ? this.#embed
        : await this.#loadF16(lastGpu, source, "model.embed_tokens.weight", [V, C]);
    } else {
      this.#lmHead = await this.#loadF16(lastGpu, source, "lm_head.weight", [V, C]);
    }
  }

  #keep(b: GPUBuffer): GPUBuffer {
    this.#owned.push(b);
    return b;
  }

  async #loadF16(gpu: Gpu, source: WeightSource, name: string, shape: number[]): Promise<GPUBuffer> {
    const { dtype, bytes } = await source.read(name, shape);
    const n = shape.reduce((a, b) => a * b, 1);
    if (dtype === "F16") return this.#keep(upload(gpu, bytes, "weights", name));
    const src = upload(gpu, bytes, "staging", `${name}.src`);
    try {
      const dst = this.#keep(createBuffer(gpu, n * 2, "weights", name));
      const enc = new Encoder(gpu, { label: `cast ${name}` });
      await castElements(enc, { src, dst, n, from: DTYPE_OF[dtype], to: "f16" });
      await enc.submit();
      await gpu.sync();
      return dst;
    } finally {
      releaseBuffer(src);
    }
  }

  async #loadLinear(
    gpu: Gpu,
    source: WeightSource,
    name: string,
    out: number,
    inDim: number,
  ): Promise<Linear["base"]> {
    if (this.baseFormat === "f16") {
      return { kind: "f16", w: await this.#loadF16(gpu, source, name, [out, inDim]) };
    }
    const { dtype, bytes } = await source.read(name, [out, inDim]);
    const src = upload(gpu, bytes, "staging", `${name}.src`);
    try {
      const w = await nf4Quantize(gpu, src, DTYPE_OF[dtype] as Nf4SourceDtype, out, inDim, name);
      const lin: Linear = { in: inDim, out, base: { kind: "nf4", w } };
      this.#nf4.push(lin);
      return lin.base;
    } finally {
      releaseBuffer(src);
    }
  }

  #makeAdapter(
    gpu: Gpu,
    l: number,
    m: LoraTarget,
    inDim: number,
    out: number,
    scale: number,
    rng: Rng,
  ): LoraAdapter {
    const R = this.lora.r;
    const key = `base_model.model.model.layers.${l}.${MODULE_PATH[m]}`;
    const bound = 1 / Math.sqrt(inDim);
    const aInit = new Float32Array(R * inDim);
    for (let i = 0; i < aInit.length; i++) aInit[i] = rng.uniform(-bound, bound);
    const a = this.#keep(upload(gpu, aInit, "lora", `${key}.lora_A`));
    const b = this.#keep(upload(gpu, new Float32Array(out * R), "lora", `${key}.lora_B`));
    const dA = this.#keep(upload(gpu, new Float32Array(R * inDim), "lora", `${key}.lora_A.grad`));
    const dB = this.#keep(upload(gpu, new Float32Array(out * R), "lora", `${key}.lora_B.grad`));
    const a16 = this.#keep(createBuffer(gpu, R * inDim * 2, "lora", `${key}.lora_A.f16`));
    const b16 = this.#keep(createBuffer(gpu, out * R * 2, "lora", `${key}.lora_B.f16`));
    const adapter: LoraAdapter = { R, scale, dropout: this.lora.dropout, a, b, a16, b16, dA, dB };
    this.#adapters.push({ gpu, a: adapter, in: inDim, out });
    this.#params.push(
      {
        key: `${key}.lora_A.weight`,
        shape: [R, inDim],
        numel: R * inDim,
        gpu,
        weight: a,
        grad: dA,
        layer: l,
        module: m,
        factor: "A",
      },
      {
        key: `${key}.lora_B.weight`,
        shape: [out, R],
        numel: out * R,
        gpu,
        weight: b,
        grad: dB,
        layer: l,
        module: m,
        factor: "B",
      },
    );
    return adapter;
  }

  parameters(): LoraParameter[] {
    return this.#params.map(({ key, shape, numel, gpu, weight, grad }) => ({
      key,
      shape,
      numel,
      gpu,
      weight,
      grad,
    }));
  }

  async zeroGrads(): Promise<void> {
    for (const gpu of this.gpus) {
      const enc = gpu.device.createCommandEncoder();
      for (const p of this.#params) if (p.gpu === gpu) enc.clearBuffer(p.grad);
      gpu.device.queue.submit([enc.finish()]);
      await gpu.sync();
    }
  }

  memory(): MemoryReport[] {
    return this.gpus.map((g) => g.memory.report());
  }

  /** The f16 copies of the LoRA masters, refreshed before every pass (the optimizer changes the masters):
   * the same dispatches every time, their bind groups kept. */
  async #castFactors(): Promise<void> {
    for (const gpu of this.gpus) {
      let bindings = this.#castBindings.get(gpu);
      if (!bindings) {
        bindings = new ReplayBindings(gpu, "lora_cast");
        this.#castBindings.set(gpu, bindings);
      }
      const enc = new ReplayEncoder(bindings, "lora cast");
      for (const ad of this.#adapters) {
        if (ad.gpu !== gpu) continue;
        await loraCastFactors(enc, {
          a: ad.a.a,
          b: ad.a.b,
          a16: ad.a.a16,
          b16: ad.a.b16,
          in: ad.in,
          out: ad.out,
          R: ad.a.R,
        });
      }
      await enc.submit();
    }
  }

  #checkInputs(ids: Int32Array, labels: Int32Array): void {
    if (this.#destroyed) throw new Error("Llama: the model was destroyed");
    if (ids.length === 0) throw new RangeError("Llama: empty sequence");
    if (labels.length !== ids.length) {
      throw new RangeError(`Llama: ${ids.length} token ids but ${labels.length} labels; they must match`);
    }
    checkEmbeddingIds(ids, this.config.vocabSize);
    for (let t = 0; t < labels.length; t++) {
      const l = labels[t];
      if (l !== CROSS_ENTROPY_IGNORE_INDEX && !(l >= 0 && l < this.config.vocabSize)) {
        throw new RangeError(
          `Llama: label ${l} at position ${t} is neither -100 nor in [0, ${this.config.vocabSize})`,
        );
      }
    }
  }

  /** Block l's forward on `tape` (dropout only with a seed). */
  async #block(
    tape: Tape,
    enc: Encoder,
    layer: Layer,
    x: Tensor,
    positions: GPUBuffer,
    seed: number | null,
    seen?: Tensor[],
  ): Promise<Tensor> {
    const cfg = this.config;
    const dev = this.#devices.find((d) => layer.index >= d.first && layer.index < d.end)!;
    const l = layer.index;
    const p = (m: LoraTarget) => {
      const lin = layer.proj[m];
      if (seed === null && lin.lora && lin.lora.dropout > 0) {
        return { ...lin, lora: { ...lin.lora, dropout: 0 } };
      }
      return lin;
    };
    const s = (i: number) => (seed === null ? 0 : dropoutSeed(seed, l, i));
    const { numHeads: H, numKvHeads: KVH, headDim: D, rmsNormEps: eps } = cfg;
    const h = await rmsnorm(tape, enc, x, layer.attnNorm, eps, `l${l}.attn_norm`);
    const q = await linear(tape, enc, h, p("q_proj"), `l${l}.q`, s(0));
    const k = await linear(tape, enc, h, p("k_proj"), `l${l}.k`, s(1));
    const v = await linear(tape, enc, h, p("v_proj"), `l${l}.v`, s(2));
    const qr = await rope(tape, enc, q, H, D, positions, dev.invFreq, `l${l}.q_rope`);
    const kr = await rope(tape, enc, k, KVH, D, positions, dev.invFreq, `l${l}.k_rope`);
    const o = await attention(tape, enc, qr, kr, v, H, KVH, D, `l${l}.attn`);
    const ao = await linear(tape, enc, o, p("o_proj"), `l${l}.o`, s(3));
    const x2 = await add(tape, enc, x, ao, `l${l}.resid1`);
    const h2 = await rmsnorm(tape, enc, x2, layer.mlpNorm, eps, `l${l}.mlp_norm`);
    const g = await linear(tape, enc, h2, p("gate_proj"), `l${l}.gate`, s(4));
    const u = await linear(tape, enc, h2, p("up_proj"), `l${l}.up`, s(5));
    const sw = await swiglu(tape, enc, g, u, `l${l}.swiglu`);
    const dn = await linear(tape, enc, sw, p("down_proj"), `l${l}.down`, s(6));
    const y = await add(tape, enc, x2, dn, `l${l}.resid2`);
    seen?.push(h, q, k, v, qr, kr, o, ao, x2, h2, g, u, sw, dn, y);
    return y;
  }

  /** Moves a tensor to another device through host memory (the source is released). */
  async #transfer(t: Tensor, gpu: Gpu): Promise<Tensor> {
    if (t.gpu === gpu) return t;
    const bytes = new Uint8Array(await readBytes(t.gpu, t.buffer, t.bytes));
    const out = new Tensor(
      gpu,
      upload(gpu, bytes, t.category, t.label),
      t.shape,
      t.dtype,
      t.category,
      t.label,
    );
    t.release();
    return out;
  }

  /** The forward through all blocks keeping each block's input; returns the inputs and the output. */
  async #forwardBlocks(
    ids: Int32Array,
    seed: number | null,
    keepInputs: boolean,
    capture?: Map<string, Float32Array>,
  ): Promise<{ inputs: Tensor[]; out: Tensor; positions: Map<Gpu, GPUBuffer> }> {
    const T = ids.length;
    const C = this.config.hiddenSize;
    const positions = new Map<Gpu, GPUBuffer>();
    const pos = Uint32Array.from({ length: T }, (_, i) => i);
    for (const gpu of this.gpus) positions.set(gpu, upload(gpu, pos, "workspace", "positions"));
    const g0 = this.gpus[0];
    const idsBuf = upload(g0, ids, "workspace", "ids");
    let x = Tensor.empty(g0, [T, C], "f16", "activations", "x0");
    const enc0 = new Encoder(g0, { label: "embedding" });
    await embeddingForward(enc0, {
      table: this.#embed,
      ids: idsBuf,
      out: x.buffer,
      T,
      C,
      V: this.config.vocabSize,
    });
    await enc0.submit();
    releaseBuffer(idsBuf);
    if (capture) capture.set("x0", await readF16(g0, x.buffer, T * C));
    const inputs: Tensor[] = [];
    for (const layer of this.#layers) {
      x = await this.#transfer(x, layer.gpu);
      const tape = new Tape(layer.gpu, false);
      const enc = new Encoder(layer.gpu, { label: `block ${layer.index} forward` });
      const seen: Tensor[] | undefined = capture ? [] : undefined;
      const y = tape.disown(await this.#block(tape, enc, layer, x, positions.get(layer.gpu)!, seed, seen));
      await enc.submit();
      for (const t of seen ?? []) {
        capture!.set(t.label, Float32Array.from(await readAs(t.gpu, t.buffer, t.dtype, t.numel)));
      }
      tape.release();
      if (keepInputs) inputs.push(x);
      else x.release();
      x = y;
    }
    return { inputs, out: x, positions };
  }

  /** Final norm and the fused lm_head + cross-entropy on the last device; with gradScale, also the
   * gradient of the block stack's output. The loss sums stay in `totals` (CROSS_ENTROPY_TOTALS_BYTES,
   * read by readLossTotals, which frees it): reading them at once would leave the GPU idle while the
   * host encodes the first block of the backward. */
  async #head(
    x: Tensor,
    labels: Int32Array,
    gradScale: number | null,
  ): Promise<{ totals: GPUBuffer; dx?: Tensor }> {
    const gpu = x.gpu;
    const { hiddenSize: C, vocabSize: V, rmsNormEps: eps } = this.config;
    const T = labels.length;
    const shifted = new Int32Array(T).fill(CROSS_ENTROPY_IGNORE_INDEX);
    shifted.set(labels.subarray(1));
    const labelsBuf = upload(gpu, shifted, "workspace", "labels");
    const ws = createCrossEntropyWorkspace(gpu, T, this.#ceChunk);
    const lossBuf = createBuffer(gpu, T * 4, "workspace", "ce.loss");
    const lse = createBuffer(gpu, T * 4, "workspace", "ce.lse");
    const totals = createBuffer(gpu, CROSS_ENTROPY_TOTALS_BYTES, "workspace", "ce.totals");
    const dHidden = gradScale === null ? undefined : createBuffer(gpu, T * C * 4, "workspace", "ce.dhidden");
    const tape = new Tape(gpu, gradScale !== null);
    let done = false;
    try {
      const enc = new Encoder(gpu, { label: "head" });
      const normed = await rmsnorm(tape, enc, x, this.#finalNorm, eps, "final_norm");
      const ceArgs = {
        hidden: normed.buffer,
        weight: this.#lmHead,
        labels: labelsBuf,
        lse,
        totals,
        T,
        C,
        V,
        workspace: ws,
      };
      await crossEntropyForward(enc, { ...ceArgs, loss: lossBuf });
      let dx: Tensor | undefined;
      if (dHidden) {
        await crossEntropyBackward(enc, { ...ceArgs, dHidden, scale: gradScale! });
        normed.grad = tape.tensor([T, C], "f16", "final_norm.grad");
        await castElements(enc, { src: dHidden, dst: normed.grad.buffer, n: T * C, from: "f32", to: "f16" });
        await tape.backward(enc);
        dx = x.grad;
        x.grad = undefined;
      }
      await enc.submit();
      done = true;
      return { totals, dx };
    } finally {
      tape.release();
      ws.destroy();
      for (const b of [labelsBuf, lossBuf, lse]) releaseBuffer(b);
      if (!done) releaseBuffer(totals);
      if (dHidden) releaseBuffer(dHidden);
    }
  }

  async forwardBackward(
    ids: Int32Array,
    labels: Int32Array,
    gradScale: number,
    seed: number,
    afterBackward?: () => Promise<void>,
  ): Promise<LossSum> {
    this.#checkInputs(ids, labels);
    if (!Number.isFinite(gradScale)) {
      throw new RangeError(`forwardBackward: gradScale ${gradScale} must be finite`);
    }
    this.#preparePools(ids.length);
    await this.#castFactors();
    for (const gpu of this.gpus) openBufferCensus(gpu);
    let forwardBuffers: Map<Gpu, Map<number, number>> | undefined;
    const { inputs, out, positions } = await this.#forwardBlocks(ids, seed >>> 0, true).finally(() => {
      forwardBuffers = new Map(this.gpus.map((gpu) => [gpu, closeBufferCensus(gpu)]));
    });
    let totals: GPUBuffer | undefined;
    try {
      const head = await this.#head(out, labels, gradScale);
      totals = head.totals;
      out.release();
      // The forward's leftovers in the pools would count on top of the buffers the backward adds
      // (its gradients, of other sizes): freed, so that the backward's peak is its own.
      for (const gpu of this.gpus) trimBufferPool(gpu);
      let dh = head.dx!;
      for (let i = this.#layers.length - 1; i >= 0; i--) {
        const layer = this.#layers[i];
        dh = await this.#transfer(dh, layer.gpu);
        const x = inputs[i];
        const tape = new Tape(layer.gpu, true);
        const enc = new Encoder(layer.gpu, { label: `block ${layer.index} backward` });
        const y = await this.#block(tape, enc, layer, x, positions.get(layer.gpu)!, seed >>> 0);
        y.grad = dh;
        await tape.backward(enc);
        await enc.submit();
        dh = x.grad!;
        x.grad = undefined;
        tape.release();
        x.release();
      }
      dh.release();
      await afterBackward?.();
      const loss = await readLossTotals(out.gpu, totals);
      totals = undefined;
      for (const gpu of this.gpus) await gpu.sync();
      return loss;
    } finally {
      if (totals) releaseBuffer(totals);
      for (const t of inputs) t.release();
      for (const b of positions.values()) releaseBuffer(b);
      // The pools keep what the next forward of this length takes at once (its first blocks then
      // wait on no new allocations) and nothing more, so that its peak stays its own.
      for (const gpu of this.gpus) trimBufferPool(gpu, forwardBuffers?.get(gpu));
    }
  }

  /** Before a pass of T tokens: its layers reuse each other's activation buffers through the pool,
   * and a training step's forward those its predecessor left (see forwardBackward); a pass of
   * another length starts from an empty pool, so buffers of other sizes do not linger. */
  #preparePools(T: number): void {
    if (T === this.#pooledLength) return;
    for (const gpu of this.gpus) trimBufferPool(gpu);
    this.#pooledLength = T;
  }

  async loss(ids: Int32Array, labels: Int32Array): Promise<LossSum> {
    this.#checkInputs(ids, labels);
    this.#preparePools(ids.length);
    await this.#castFactors();
    const { out, positions } = await this.#forwardBlocks(ids, null, false);
    try {
      return await readLossTotals(out.gpu, (await this.#head(out, labels, null)).totals);
    } finally {
      out.release();
      for (const b of positions.values()) releaseBuffer(b);
    }
  }

  /** The logits f32 [T, V] of every position (no dropout): for tests and small vocabularies; training
   * never materializes them. With `capture`, also every intermediate activation by name (for
   * diagnostics against model/llama_ref.ts): "x0", then per layer l "l{l}.attn_norm", ".q", ".k", ".v",
   * ".q_rope", ".k_rope", ".attn", ".o", ".resid1", ".mlp_norm", ".gate", ".up", ".swiglu", ".down",
   * ".resid2", and "final_norm". */
  async logits(ids: Int32Array, capture?: Map<string, Float32Array>): Promise<Float32Array> {
    this.#checkInputs(ids, new Int32Array(ids.length).fill(CROSS_ENTROPY_IGNORE_INDEX));
    this.#preparePools(ids.length);
    await this.#castFactors();
    const { out, positions } = await this.#forwardBlocks(ids, null, false, capture);
    const gpu = out.gpu;
    const { hiddenSize: C, vocabSize: V, rmsNormEps: eps } = this.config;
    const T = ids.length;
    const tape = new Tape(gpu, false);
    const result = createBuffer(gpu, T * V * 4, "workspace", "logits");
    try {
      const enc = new Encoder(gpu, { label: "logits" });
      const normed = await rmsnorm(tape, enc, out, this.#finalNorm, eps, "final_norm");
      await matmul(enc, {
        a: normed.buffer,
        b: this.#lmHead,
        c: result,
        M: T,
        N: V,
        K: C,
        layout: "nt",
        out: "f32",
      });
      await enc.submit();
      if (capture) capture.set("final_norm", await readF16(gpu, normed.buffer, T * C));
      return await readF32(gpu, result, T * V);
    } finally {
      tape.release();
      out.release();
      releaseBuffer(result);
      for (const b of positions.values()) releaseBuffer(b);
    }
  }

  /** LoRA parameter by PEFT key. */
  parameter(key: string): LoraParameter | undefined {
    return this.parameters().find((p) => p.key === key);
  }

  /** Overwrites one LoRA factor's f32 master. */
  setParameter(key: string, values: Float32Array): void {
    const p = this.#params.find((q) => q.key === key);
    if (!p) {
      throw new RangeError(`Llama: no LoRA parameter "${key}" (targets: ${this.lora.targets.join(", ")})`);
    }
    if (values.length !== p.numel) {
      throw new RangeError(`Llama: "${key}" is [${p.shape}] (${p.numel} values); got ${values.length}`);
    }
    writeBuffer(p.gpu, p.weight, values);
  }

  /** The weights as the inference path (model/generate.ts) reads them, the LoRA adapters' f16 copies
   * refreshed from their f32 masters first. The buffers stay owned by the model. */
  async inferenceWeights(): Promise<LlamaInferenceWeights> {
    if (this.#destroyed) throw new Error("Llama: the model was destroyed");
    await this.#castFactors();
    return {
      embed: this.#embed,
      finalNorm: this.#finalNorm,
      lmHead: this.#lmHead,
      layers: this.#layers.map((l) => ({
        index: l.index,
        gpu: l.gpu,
        attnNorm: l.attnNorm,
        mlpNorm: l.mlpNorm,
        proj: { ...l.proj },
        invFreq: this.#devices.find((d) => l.index >= d.first && l.index < d.end)!.invFreq,
      })),
    };
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const lin of this.#nf4) if (lin.base.kind === "nf4") nf4Release(lin.base.w);
    for (const b of new Set(this.#owned)) releaseBuffer(b);
    this.#owned = [];
    for (const b of this.#castBindings.values()) b.destroy();
    this.#castBindings.clear();
    // The pools still hold the last pass's activation buffers.
    for (const gpu of this.gpus) trimBufferPool(gpu);
  }
}

/** A weight source over a safetensors checkpoint, checking each tensor's shape and dtype. */
export function checkpointSource(ckpt: SafetensorsCheckpoint): WeightSource {
  return {
    has: (name) => ckpt.has(name),
    async read(name, shape) {
      const info = ckpt.info(name);
      if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
        throw new RangeError(
          `${info.file}: tensor "${name}" is [${info.shape}]; config.json implies [${shape}]`,
        );
      }
      const dtype = info.dtype as SafetensorsDType;
      if (dtype !== "F32" && dtype !== "F16" && dtype !== "BF16") {
        throw new RangeError(`${info.file}: tensor "${name}" is ${dtype}; expected BF16, F16 or F32`);
      }
      return { dtype, bytes: await ckpt.read(name) };
    },
  };
}

/** Random f16 bits, uniform in [-bound, bound). */
function randomF16(rng: Rng, n: number, bound: number, center = 0): Uint16Array {
  const f = new Float16Array(n);
  for (let i = 0; i < n; i++) f[i] = center + bound * (2 * rng.next() - 1);
  return new Uint16Array(f.buffer);
}

/** Random weights for benchmarks and defaults: uniform with the std of HF's init (0.02), norms 1.
 * Large tensors repeat one random block of at most `maxFresh` values, so an 8B-shaped model builds
 * in seconds; every tensor is produced on the host one at a time. */
export function randomSource(seed: number, maxFresh = 1 << 22): WeightSource {
  const rng = new Rng(seed);
  const bound = 0.02 * Math.sqrt(3);
  return {
    has: () => true,
    read(name, shape) {
      const n = shape.reduce((a, b) => a * b, 1);
      if (name.endsWith("norm.weight")) {
        return Promise.resolve({ dtype: "F16", bytes: new Uint8Array(randomF16(rng, n, 0.05, 1).buffer) });
      }
      const fresh = randomF16(rng, Math.min(n, maxFresh), bound);
      if (fresh.length === n) return Promise.resolve({ dtype: "F16", bytes: new Uint8Array(fresh.buffer) });
      const out = new Uint16Array(n);
      for (let off = 0; off < n; off += fresh.length) {
        out.set(fresh.subarray(0, Math.min(fresh.length, n - off)), off);
      }
      return Promise.resolve({ dtype: "F16", bytes: new Uint8Array(out.buffer) });
    },
  };
}

/** A random model built directly on the GPU (no files): see randomSource. */
export function randomLlama(cfg: LlamaConfig, seed: number, options: LlamaBuildOptions): Promise<Llama> {
  return Llama.build(cfg, randomSource(seed), options);
}

/** What Llama.inferenceWeights hands out: embedding f16 [V, C] on the first device, final norm f16 [C]
 * and lm_head f16 [V, C] on the last, and per layer its device, norms, projections (with LoRA) and
 * the RoPE frequencies f32 [D/2] of its device. */
export interface LlamaInferenceWeights {
  embed: GPUBuffer;
  finalNorm: GPUBuffer;
  lmHead: GPUBuffer;
  layers: {
    index: number;
    gpu: Gpu;
    attnNorm: GPUBuffer;
    mlpNorm: GPUBuffer;
    proj: Record<LoraTarget, Linear>;
    invFreq: GPUBuffer;
  }[];
}
