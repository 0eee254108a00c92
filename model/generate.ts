// Text generation with a KV cache on the GPU engine.
//
// Dimension letters: T prompt tokens, C hidden, H heads, KVH kv heads, D head dim, I intermediate,
// V vocabulary, R LoRA rank, Tmax cache capacity, n tokens in the cache.
//
// Per layer the cache holds the keys (after RoPE) and values of every position so far:
//   k, v   f16 [Tmax, KVH, D]   rows 0..n-1 valid
// Prefill (an empty cache, T prompt tokens), one encoder per layer, the training kernels:
//   x = embed(ids) [T, C]; per layer: h = rmsnorm(x); q, k, v = linear(h) (NF4 or f16 base + LoRA);
//   q, k = rope at positions 0..T-1; k, v copied into cache rows 0..T-1; o = flash_attention(q, k, v)
//   (causal); x += o_proj(o); x += down(swiglu(gate(rmsnorm(x)), up(rmsnorm(x))))
//   then the last row only: logits f32 [V] = rmsnorm(x[T-1]) lm_head^T, read back once.
// Decode step (one token at position n), preallocated buffers, submitted every few layers so that
// the GPU runs while the CPU encodes the rest:
//   the linear layers as matrix-vector products (kernels/matvec: the weight read once, 16 bytes per
//   load), LoRA as u = A16 h (a small matvec; one for q, k, v together and one for gate, up, whose
//   A16 factors are stacked when the cache model is built; that product also computes the RMSNorm h
//   of the residual stream and writes it, so the norm takes no dispatch of its own; without LoRA
//   the fused q, k, v and gate, up passes take the norm by linearity from the weighted copy of the
//   residual stream that the o and down products write beside it) and
//   y = W h + s·B16 u in one pass, the o_proj and down products added straight into the residual
//   stream (beta 1); q, k and v as one NF4 pass (matvecQkv, on tables and B16 factors stacked
//   when the cache model is built), q and k rotated at position n in its epilogue, k and v written
//   straight into cache row n (or, where it does not take the shapes, q and k each rotated in their
//   own product's epilogue and v by its own product); gate, up and SwiGLU in one NF4 pass;
//   decode attention (kernels/attention/decode_attention.ts) of the one query over rows 0..n, one
//   dispatch while n <= 128; lm_head as an f16 matvec into f32 logits, copied into a persistent
//   mappable buffer in the same submit and read from there (no staging buffer and no second submit
//   per token). Shapes and layouts the fused kernels do not take run the separate kernels (rmsnorm,
//   rope, swiglu at T = 1), and shapes the matvec kernels do not take (NF4 in % 32 != 0, f16 in % 8
//   != 0) the general T = 1 kernels.
// Greedy decoding on one device (decodeGreedy) ends each step with the argmax of its logits on the
// GPU (kernels/argmax), written where the next step's embedding reads its id and copied to a small
// readback slot: up to GREEDY_STEPS_IN_FLIGHT steps are queued, the CPU encoding the next while the
// GPU runs one, and the ids reach the CPU a step or two late (steps queued after a stop token are
// dropped). Sampling and the repetition penalty run on the CPU (model/sampling.ts, seeded Rng) from
// the read-back logits. Layers spread over several devices pass the hidden state [C] (or [T, C] in
// the prefill) through host memory.
//
// LoRA: applied in every linear (base product plus s·(x A^T) B^T), or, for an f16 base with
// `merge`, folded once into private copies of the base weights: W' = W + s·B·A (f16).

import {
  createBuffer,
  readBytes,
  releaseBuffer,
  trimBufferPool,
  upload,
  writeBuffer,
} from "../engine/buffers.ts";
import { Encoder } from "../engine/encoder.ts";
import type { Gpu } from "../engine/gpu.ts";
import { add, attention, type Linear, linear, rmsnorm, rope, swiglu } from "../engine/ops.ts";
import { type RecordedCommand, ReplayBindings, ReplayEncoder } from "../engine/replay_encoder.ts";
import { Rng } from "../engine/rng.ts";
import { Tape } from "../engine/tape.ts";
import { Tensor } from "../engine/tensor.ts";
import {
  DECODE_ATTENTION_CHUNK,
  decodeAttention,
  decodeAttentionWorkspaceBytes,
} from "../kernels/attention/decode_attention.ts";
import { residualAdd } from "../kernels/elementwise/elementwise.ts";
import { argmax, argmaxWorkspaceBytes } from "../kernels/argmax/argmax.ts";
import { checkEmbeddingIds, embeddingForward } from "../kernels/embedding/embedding.ts";
import { loraForward } from "../kernels/lora/lora.ts";
import { matmul } from "../kernels/matmul/matmul.ts";
import {
  foldedNormFits,
  matvec,
  type MatvecArgs,
  matvecQkv,
  matvecQkvUnsupported,
  matvecSwiglu,
  matvecUnsupported,
  type QkvProjection,
  type QkvTables,
  type ScaledNormWeight,
  scaleNormWeight,
  stackQkvTables,
} from "../kernels/matvec/matvec.ts";
import { nf4Matmul } from "../kernels/nf4/nf4.ts";
import { rmsnormForward } from "../kernels/norm/rmsnorm.ts";
import { ropeForward, ropeInvFreq, ropeRotation } from "../kernels/rope/rope.ts";
import { swigluForward } from "../kernels/swiglu/swiglu.ts";
import type { ChatMessage, ChatTemplate } from "../data/chat_template.ts";
import { encodePrompt } from "../data/chat_template.ts";
import type { LlamaTokenizer } from "../data/tokenizer.ts";
import type { Llama, LlamaInferenceWeights } from "./llama.ts";
import { isStopToken, type SamplingOptions, TokenSampler } from "./sampling.ts";
import { ALL_LORA_TARGETS, type LlamaConfig, type LoraTarget } from "./types.ts";

export const DEFAULT_MAX_NEW_TOKENS = 256;
/** Cache rows when the caller does not say (bounded by the model's max_position_embeddings). */
export const DEFAULT_CACHE_TOKENS = 4096;
/** Prompt tokens beyond the cached prefix fed one decode step at a time; more re-run the prefill.
 * A decode step reads every weight once, as a whole prefill of a few hundred tokens does, so only a
 * handful of tokens are cheaper as steps. */
const MAX_INCREMENTAL_TOKENS = 4;

export interface KvCacheOptions {
  /** Cache capacity Tmax (prompt plus generated tokens); DEFAULT_CACHE_TOKENS by default. */
  maxTokens?: number;
  /** Fold each LoRA adapter into a private f16 copy of its base weight (f16 base only). */
  merge?: boolean;
  /** Replay recorded decode steps instead of running the launchers for every step, where every
   * layer's step reads its position from the GPU (true by default). */
  replaySteps?: boolean;
}

interface LayerState {
  index: number;
  gpu: Gpu;
  attnNorm: GPUBuffer;
  mlpNorm: GPUBuffer;
  invFreq: GPUBuffer;
  proj: Record<LoraTarget, Linear>;
  /** Whether each projection runs through the matvec kernels at T = 1. */
  fast: Record<LoraTarget, boolean>;
  /** f16 [Tmax, KVH, D] each. */
  k: GPUBuffer;
  v: GPUBuffer;
  /** The LoRA down-products of q, k, v (input: the attention norm) and of gate, up (the MLP norm),
   * each group as one product; absent where fewer than two of its projections take it. */
  attnLora?: LoraGroup;
  mlpLora?: LoraGroup;
  /** Whether q and k run with their rotary embedding in the product (matvec's rope). */
  fusedRope: boolean;
  /** Whether gate, up and their SwiGLU run as one matvecSwiglu (NF4 bases, LoRA on both through
   * mlpLora with one rank and scale, or on neither). */
  fusedMlp: boolean;
  /** q, k and v as one matvecQkv (NF4 bases of shapes it takes, LoRA through attnLora with one
   * rank, or none): their stacked tables and LoRA B factors, copies made for decoding. */
  fusedQkv?: FusedQkv;
  /** The norms folded into the fused passes (matvecQkv, matvecSwiglu) without LoRA, where an NF4
   * matvec writes the residual stream before them (the previous layer's down projection on this
   * device, this layer's o projection): their weights scaled for the product that writes the
   * weighted input (dev.xw), so that the norm takes no dispatch. */
  attnNormScaled?: ScaledNormWeight;
  mlpNormScaled?: ScaledNormWeight;
}

/** matvecQkv's operands that stay from step to step: the three projections (LoRA inputs at their
 * attnLora offsets), their stacked absmax codes, scales and maps, and the stacked B16 factors
 * [q rows + 2 kv rows, K2] (zero rows where a projection has no LoRA). */
interface FusedQkv {
  q: QkvProjection;
  k: QkvProjection;
  v: QkvProjection;
  tables: QkvTables;
  lora?: { K2: number; b: GPUBuffer };
}

/** The LoRA down-projections of projections that share their input, as one f16 product: a16 holds
 * the members' A16 [R, in] one after another, and u[offsets[m] ..] receives member m's A·x. */
interface LoraGroup {
  a16: GPUBuffer;
  rows: number;
  in: number;
  offsets: Partial<Record<LoraTarget, number>>;
}

/** Projections that read the same input at T = 1. */
const ATTN_INPUT: readonly LoraTarget[] = ["q_proj", "k_proj", "v_proj"];
const MLP_INPUT: readonly LoraTarget[] = ["gate_proj", "up_proj"];

/** A decode step submits its dispatches in pieces of about this many (whole layers), so that the
 * GPU runs the first layers while the CPU encodes the later ones. */
const SUBMIT_AFTER_DISPATCHES = 48;
/** Greedy decode steps queued on the GPU at once (decodeGreedy): while the GPU runs one, the host
 * encodes the next; the ids of those after a stop token are computed and dropped. */
const GREEDY_STEPS_IN_FLIGHT = 3;

/** The T = 1 workspace of one device. */
interface DeviceState {
  gpu: Gpu;
  /** Bind groups and parameter slots of this device's decode step. */
  bindings: ReplayBindings;
  /** Recorded decode steps (their commands per submit) by kind: attention chunks, argmax tail. */
  recordings: Map<string, RecordedCommand[][]>;
  layers: LayerState[];
  /** f16 [C]: the residual stream of the decoded token. */
  x: GPUBuffer;
  h: GPUBuffer; // f16 [C]
  /** f16 [C]: x times the scaled weight of the norm folded into the next fused pass. */
  xw: GPUBuffer;
  q: GPUBuffer; // f16 [H*D]
  qr: GPUBuffer; // f16 [H*D]
  k: GPUBuffer; // f16 [KVH*D]
  v: GPUBuffer; // f16 [KVH*D]
  o: GPUBuffer; // f16 [H*D]
  c: GPUBuffer; // f16 [C]: o_proj and down outputs
  g: GPUBuffer; // f16 [I]
  up: GPUBuffer; // f16 [I]
  sw: GPUBuffer; // f16 [I]
  u: GPUBuffer; // f16 [3 R] LoRA intermediate (one group's)
  rstd: GPUBuffer; // f32 [1]
  pos: GPUBuffer; // u32 [1]
  /** f32 [D/2][2]: (cos, sin) of the decoded position's rotary angles (ropeRotation). */
  rot: GPUBuffer;
  part: GPUBuffer; // decode attention workspace for n = Tmax
}

const MAP_READ_COPY_DST = 0x01 | 0x08;

function bytesPerRow(cfg: LlamaConfig): number {
  return cfg.numKvHeads * cfg.headDim * 2;
}

/** Wall milliseconds of the decode steps so far, by phase: encoding the dispatches (CPU), the submit
 * calls, and waiting for the GPU plus reading the logits (step) or the ids (decodeGreedy) back; and
 * the dispatches they encoded. */
export interface DecodeTimes {
  steps: number;
  /** Steps whose commands were replayed from a recording (KvCacheOptions.replaySteps). */
  replayed: number;
  dispatches: number;
  encodeMs: number;
  submitMs: number;
  waitReadMs: number;
}

function zeroDecodeTimes(): DecodeTimes {
  return { steps: 0, replayed: 0, dispatches: 0, encodeMs: 0, submitMs: 0, waitReadMs: 0 };
}

/** A Llama with per-layer KV caches: prefill a prompt, then one token per step. */
export class KvCacheModel {
  readonly config: LlamaConfig;
  readonly capacity: number;
  readonly merged: boolean;
  /** Whether decode steps are recorded and replayed (KvCacheOptions.replaySteps). */
  readonly replaySteps: boolean;
  #weights: LlamaInferenceWeights;
  #devices: DeviceState[] = [];
  #owned: GPUBuffer[] = [];
  #ids: number[] = [];
  #logits!: GPUBuffer;
  /** f32 [V], mappable: the logits of the last position, copied from #logits in the same submit. */
  #logitsRead!: GPUBuffer;
  /** Whether lm_head runs through the matvec kernel. */
  #fastHead = false;
  /** f32 [D/2]: the rotary frequencies, for the decoded position's rotation. */
  #invFreq: Float32Array;
  #idBuf!: GPUBuffer;
  /** Workspace of the greedy steps' argmax, and their id readback slots (i32, mappable). */
  #argmaxPart!: GPUBuffer;
  #greedyRead: GPUBuffer[] = [];
  #destroyed = false;
  /** Phase times of every decode step so far, step() and decodeGreedy (reset with resetDecodeTimes). */
  readonly decodeTimes: DecodeTimes = zeroDecodeTimes();

  private constructor(
    config: LlamaConfig,
    weights: LlamaInferenceWeights,
    capacity: number,
    merged: boolean,
    replaySteps: boolean,
  ) {
    this.config = config;
    this.#weights = weights;
    this.capacity = capacity;
    this.merged = merged;
    this.replaySteps = replaySteps;
    this.#invFreq = ropeInvFreq(config.headDim, config.ropeTheta, config.ropeScaling ?? undefined);
  }

  /** Allocates the caches and the decode workspace for `model` (which must outlive this object). With
   * `merge`, LoRA is folded into f16 copies of the base weights (f16 base only). */
  static async create(model: Llama, options: KvCacheOptions = {}): Promise<KvCacheModel> {
    const cfg = model.config;
    const capacity = options.maxTokens ?? Math.min(DEFAULT_CACHE_TOKENS, cfg.maxPositionEmbeddings);
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > cfg.maxPositionEmbeddings) {
      throw new RangeError(
        `KV cache of ${capacity} tokens: give a whole number in [1, max_position_embeddings = ` +
          `${cfg.maxPositionEmbeddings}]`,
      );
    }
    const merge = options.merge ?? false;
    if (merge && model.baseFormat !== "f16") {
      throw new Error(
        `merging LoRA into the base needs an f16 base; this model's base is ${model.baseFormat} ` +
          `(NF4 cannot take W + s·B·A without re-quantizing). Generate unmerged, or load the base as f16.`,
      );
    }
    const weights = await model.inferenceWeights();
    const merged = merge && model.lora.targets.length > 0;
    const kv = new KvCacheModel(cfg, weights, capacity, merged, options.replaySteps ?? true);
    try {
      await kv.#allocate(merge);
    } catch (e) {
      kv.destroy();
      throw e;
    }
    return kv;
  }

  #keep(b: GPUBuffer): GPUBuffer {
    this.#owned.push(b);
    return b;
  }

  async #allocate(merge: boolean): Promise<void> {
    const cfg = this.config;
    const { hiddenSize: C, numHeads: H, numKvHeads: KVH, headDim: D, intermediateSize: I } = cfg;
    const Tmax = this.capacity;
    let maxR = 1;
    for (const l of this.#weights.layers) {
      for (const m of ALL_LORA_TARGETS) maxR = Math.max(maxR, l.proj[m].lora?.R ?? 1);
    }
    for (const w of this.#weights.layers) {
      let dev = this.#devices.at(-1);
      if (!dev || dev.gpu !== w.gpu) {
        const gpu = w.gpu;
        const f16 = (n: number, label: string) => this.#keep(createBuffer(gpu, n * 2, "workspace", label));
        dev = {
          gpu,
          bindings: new ReplayBindings(gpu, "decode"),
          recordings: new Map(),
          layers: [],
          x: f16(C, "decode.x"),
          h: f16(C, "decode.h"),
          xw: f16(C, "decode.x_weighted"),
          q: f16(H * D, "decode.q"),
          qr: f16(H * D, "decode.q_rope"),
          k: f16(KVH * D, "decode.k"),
          v: f16(KVH * D, "decode.v"),
          o: f16(H * D, "decode.attn"),
          c: f16(C, "decode.c"),
          g: f16(I, "decode.gate"),
          up: f16(I, "decode.up"),
          sw: f16(I, "decode.swiglu"),
          u: f16(3 * maxR, "decode.lora_u"),
          rstd: this.#keep(createBuffer(gpu, 4, "workspace", "decode.rstd")),
          pos: this.#keep(createBuffer(gpu, 4, "workspace", "decode.pos")),
          rot: this.#keep(createBuffer(gpu, cfg.headDim * 4, "workspace", "decode.rope_rotation")),
          part: this.#keep(
            createBuffer(gpu, decodeAttentionWorkspaceBytes(H, D, Tmax), "workspace", "decode.attn_part"),
          ),
        };
        this.#devices.push(dev);
      }
      const proj = {} as Record<LoraTarget, Linear>;
      for (const m of ALL_LORA_TARGETS) {
        const lin = w.proj[m];
        if (lin.lora && merge) proj[m] = await this.#merge(w.gpu, lin, `l${w.index}.${m}.merged`);
        else if (lin.lora && lin.lora.dropout > 0) proj[m] = { ...lin, lora: { ...lin.lora, dropout: 0 } };
        else proj[m] = lin;
      }
      const cacheBytes = Tmax * bytesPerRow(cfg);
      const fast = {} as Record<LoraTarget, boolean>;
      for (const m of ALL_LORA_TARGETS) fast[m] = matvecFits(w.gpu, proj[m]);
      const mlpLora = await this.#loraGroup(w.gpu, proj, fast, MLP_INPUT, `l${w.index}.mlp`);
      const attnLora = await this.#loraGroup(w.gpu, proj, fast, ATTN_INPUT, `l${w.index}.attn`);
      const fusedRope = fast.q_proj && fast.k_proj && proj.q_proj.base.kind === "nf4" &&
        proj.k_proj.base.kind === "nf4" && cfg.headDim % 4 === 0;
      const fusedQkv = fusedRope && fast.v_proj
        ? await this.#fuseQkv(w.gpu, proj, attnLora, `l${w.index}.qkv`)
        : undefined;
      const fusedMlp = fusedMlpFits(w.gpu, proj.gate_proj, proj.up_proj, mlpLora);
      const prev = dev.layers.at(-1);
      const scaledNorm = async (norm: GPUBuffer, label: string) => {
        const scaled = await scaleNormWeight(w.gpu, norm, C, label);
        this.#owned.push(scaled.w);
        return scaled;
      };
      dev.layers.push({
        index: w.index,
        gpu: w.gpu,
        attnNorm: w.attnNorm,
        mlpNorm: w.mlpNorm,
        invFreq: w.invFreq,
        proj,
        fast,
        k: this.#keep(createBuffer(w.gpu, cacheBytes, "activations", `kv.k${w.index}`)),
        v: this.#keep(createBuffer(w.gpu, cacheBytes, "activations", `kv.v${w.index}`)),
        attnLora,
        mlpLora,
        fusedMlp,
        fusedRope,
        fusedQkv,
        attnNormScaled:
          fusedQkv && !fusedQkv.lora && prev && writesNextNorm(prev.proj.down_proj, prev.fast.down_proj)
            ? await scaledNorm(w.attnNorm, `l${w.index}.attn_norm.scaled`)
            : undefined,
        mlpNormScaled: fusedMlp && !proj.gate_proj.lora && writesNextNorm(proj.o_proj, fast.o_proj)
          ? await scaledNorm(w.mlpNorm, `l${w.index}.mlp_norm.scaled`)
          : undefined,
      });
    }
    const first = this.#devices[0].gpu;
    const last = this.#devices.at(-1)!.gpu;
    this.#idBuf = this.#keep(createBuffer(first, 4, "workspace", "decode.id"));
    this.#logits = this.#keep(createBuffer(last, cfg.vocabSize * 4, "workspace", "decode.logits"));
    this.#logitsRead = this.#keep(
      createBuffer(last, cfg.vocabSize * 4, "workspace", "decode.logits_read", MAP_READ_COPY_DST),
    );
    this.#fastHead = matvecUnsupported(last.caps, "f16", { out: cfg.vocabSize, in: C }) === undefined;
    this.#argmaxPart = this.#keep(
      createBuffer(last, argmaxWorkspaceBytes(cfg.vocabSize), "workspace", "decode.argmax_part"),
    );
    for (let i = 0; i < GREEDY_STEPS_IN_FLIGHT; i++) {
      this.#greedyRead.push(
        this.#keep(createBuffer(first, 4, "workspace", `decode.greedy_id${i}`, MAP_READ_COPY_DST)),
      );
    }
  }

  /** Copies the logits into the mappable buffer (encode before the submit) ... */
  #copyLogits(enc: Encoder): void {
    enc.copy(this.#logits, 0, this.#logitsRead, 0, this.config.vocabSize * 4);
  }

  /** ... and reads them after it. */
  async #readLogits(): Promise<Float32Array> {
    const gpu = this.#devices.at(-1)!.gpu;
    const bytes = this.config.vocabSize * 4;
    await this.#logitsRead.mapAsync(1, /* GPUMapMode.READ */ 0, bytes);
    try {
      gpu.throwIfFailed();
      return new Float32Array(this.#logitsRead.getMappedRange(0, bytes).slice(0));
    } finally {
      this.#logitsRead.unmap();
    }
  }

  /** One product for the LoRA down-projections of `members` (which share their input): the A16
   * factors of those with LoRA, copied one after another; undefined for fewer than two, where one
   * of them is off the matvec path (its own A product would overwrite u), or where the matvec
   * kernel does not take the stacked shape. */
  async #loraGroup(
    gpu: Gpu,
    proj: Record<LoraTarget, Linear>,
    fast: Record<LoraTarget, boolean>,
    members: readonly LoraTarget[],
    label: string,
  ): Promise<LoraGroup | undefined> {
    const with_ = members.filter((m) => proj[m].lora);
    if (with_.length < 2 || with_.some((m) => !fast[m])) return undefined;
    const inDim = proj[with_[0]].in;
    const rows = with_.reduce((n, m) => n + proj[m].lora!.R, 0);
    if (matvecUnsupported(gpu.caps, "f16", { out: rows, in: inDim }) !== undefined) return undefined;
    const a16 = this.#keep(createBuffer(gpu, rows * inDim * 2, "lora", `${label}.lora_A.f16`));
    const enc = new Encoder(gpu, { label: `${label} LoRA A` });
    const offsets: LoraGroup["offsets"] = {};
    let row = 0;
    for (const m of with_) {
      const lora = proj[m].lora!;
      enc.copy(lora.a16, 0, a16, row * inDim * 2, lora.R * inDim * 2);
      offsets[m] = row;
      row += lora.R;
    }
    await enc.submit();
    return { a16, rows, in: inDim, offsets };
  }

  /** The stacked tables and B factors of q, k and v for matvecQkv, or undefined where it does not
   * take them: a base that is not NF4, shapes it refuses, LoRA on some of them outside one
   * attnLora group, or ranks that differ. */
  async #fuseQkv(
    gpu: Gpu,
    proj: Record<LoraTarget, Linear>,
    group: LoraGroup | undefined,
    label: string,
  ): Promise<FusedQkv | undefined> {
    const [q, k, v] = ATTN_INPUT.map((m) => proj[m]);
    const parts: QkvProjection[] = [];
    for (const m of ATTN_INPUT) {
      const { base, lora } = proj[m];
      if (base.kind !== "nf4") return undefined;
      const xOffset = group?.offsets[m];
      if (lora && xOffset === undefined) return undefined;
      parts.push({ w: base.w, lora: lora ? { alpha: lora.scale, xOffset: xOffset! } : undefined });
    }
    const ranks = new Set([q, k, v].flatMap((l) => l.lora ? [l.lora.R] : []));
    if (ranks.size > 1) return undefined;
    const R = ranks.size === 1 ? [...ranks][0] : 0;
    const shape = { in: q.in, headDim: this.config.headDim, qRows: q.out, kvRows: k.out, K2: R };
    if (v.out !== k.out || matvecQkvUnsupported(gpu.caps, shape) !== undefined) return undefined;
    const tables = await stackQkvTables(gpu, parts[0].w, parts[1].w, parts[2].w, label);
    this.#owned.push(tables.absmaxCodes, tables.scales, tables.maps);
    const fused = { q: parts[0], k: parts[1], v: parts[2], tables };
    if (R === 0) return fused;
    const rows = q.out + 2 * k.out;
    const b = this.#keep(createBuffer(gpu, rows * R * 2, "lora", `${label}.lora_B.f16`));
    const enc = new Encoder(gpu, { label: `${label} LoRA B` });
    let row = 0;
    for (const lin of [q, k, v]) {
      const bytes = lin.out * R * 2;
      if (lin.lora) enc.copy(lin.lora.b16, 0, b, row * R * 2, bytes);
      else writeBuffer(gpu, b, new Uint8Array(bytes), row * R * 2);
      row += lin.out;
    }
    await enc.submit();
    return { ...fused, lora: { K2: R, b } };
  }

  /** W' = W + s·B16·A16 into a new f16 weight [out, in]. */
  async #merge(gpu: Gpu, lin: Linear, label: string): Promise<Linear> {
    if (lin.base.kind !== "f16" || !lin.lora) throw new Error(`${label}: only an f16 base with LoRA merges`);
    const src = "buffer" in lin.base.w ? lin.base.w : { buffer: lin.base.w, offset: 0 };
    const bytes = lin.out * lin.in * 2;
    const w = this.#keep(createBuffer(gpu, bytes, "weights", label));
    const enc = new Encoder(gpu, { label: `merge ${label}` });
    enc.copy(src.buffer, src.offset, w, 0, bytes);
    await matmul(enc, {
      a: lin.lora.b16,
      b: lin.lora.a16,
      c: w,
      M: lin.out,
      N: lin.in,
      K: lin.lora.R,
      layout: "nn",
      out: "f16",
      alpha: lin.lora.scale,
      beta: 1,
    });
    await enc.submit();
    return { in: lin.in, out: lin.out, base: { kind: "f16", w } };
  }

  /** Tokens in the cache. */
  get length(): number {
    return this.#ids.length;
  }

  /** The token ids in the cache, in order. */
  get tokens(): readonly number[] {
    return this.#ids;
  }

  resetDecodeTimes(): void {
    Object.assign(this.decodeTimes, zeroDecodeTimes());
  }

  /** Forgets the cached tokens (the buffers stay). */
  reset(): void {
    this.#ids = [];
  }

  #check(ids: ArrayLike<number>, what: string): void {
    if (this.#destroyed) throw new Error("KvCacheModel: destroyed");
    checkEmbeddingIds(ids, this.config.vocabSize);
    if (this.#ids.length + ids.length > this.capacity) {
      throw new RangeError(
        `${what}: ${this.#ids.length} cached + ${ids.length} new tokens exceed the KV cache of ` +
          `${this.capacity} tokens; create the cache with a larger maxTokens (--max-context)`,
      );
    }
  }

  /** Runs the prompt through an empty cache; returns the logits f32 [V] of its last position. */
  async prefill(ids: ArrayLike<number>): Promise<Float32Array> {
    if (ids.length === 0) throw new RangeError("prefill: empty prompt");
    this.reset();
    this.#check(ids, "prefill");
    const cfg = this.config;
    const { hiddenSize: C, numHeads: H, numKvHeads: KVH, headDim: D, rmsNormEps: eps } = cfg;
    const T = ids.length;
    const row = bytesPerRow(cfg);
    const g0 = this.#devices[0].gpu;
    const idsBuf = upload(g0, Int32Array.from(ids), "workspace", "prefill.ids");
    let x = Tensor.empty(g0, [T, C], "f16", "activations", "prefill.x0");
    try {
      const enc0 = new Encoder(g0, { label: "prefill embedding" });
      await embeddingForward(enc0, {
        table: this.#weights.embed,
        ids: idsBuf,
        out: x.buffer,
        T,
        C,
        V: cfg.vocabSize,
      });
      await enc0.submit();
    } finally {
      releaseBuffer(idsBuf);
    }
    for (const dev of this.#devices) {
      x = await moveTensor(x, dev.gpu);
      const positions = upload(
        dev.gpu,
        Uint32Array.from({ length: T }, (_, i) => i),
        "workspace",
        "positions",
      );
      try {
        for (const layer of dev.layers) {
          const l = layer.index;
          const tape = new Tape(dev.gpu, false);
          const enc = new Encoder(dev.gpu, { label: `prefill layer ${l}` });
          const p = layer.proj;
          const h = await rmsnorm(tape, enc, x, layer.attnNorm, eps, `l${l}.attn_norm`);
          const q = await linear(tape, enc, h, p.q_proj, `l${l}.q`);
          const k = await linear(tape, enc, h, p.k_proj, `l${l}.k`);
          const v = await linear(tape, enc, h, p.v_proj, `l${l}.v`);
          const qr = await rope(tape, enc, q, H, D, positions, layer.invFreq, `l${l}.q_rope`);
          const kr = await rope(tape, enc, k, KVH, D, positions, layer.invFreq, `l${l}.k_rope`);
          enc.copy(kr.buffer, 0, layer.k, 0, T * row);
          enc.copy(v.buffer, 0, layer.v, 0, T * row);
          const o = await attention(tape, enc, qr, kr, v, H, KVH, D, `l${l}.attn`);
          const ao = await linear(tape, enc, o, p.o_proj, `l${l}.o`);
          const x2 = await add(tape, enc, x, ao, `l${l}.resid1`);
          const h2 = await rmsnorm(tape, enc, x2, layer.mlpNorm, eps, `l${l}.mlp_norm`);
          const g = await linear(tape, enc, h2, p.gate_proj, `l${l}.gate`);
          const u = await linear(tape, enc, h2, p.up_proj, `l${l}.up`);
          const sw = await swiglu(tape, enc, g, u, `l${l}.swiglu`);
          const dn = await linear(tape, enc, sw, p.down_proj, `l${l}.down`);
          const y = tape.disown(await add(tape, enc, x2, dn, `l${l}.resid2`));
          await enc.submit();
          tape.release();
          x.release();
          x = y;
        }
      } finally {
        releaseBuffer(positions);
      }
    }
    const last = this.#devices.at(-1)!;
    const enc = new Encoder(last.gpu, { label: "prefill last row" });
    enc.copy(x.buffer, (T - 1) * C * 2, last.x, 0, C * 2);
    await this.#head(enc, last);
    this.#copyLogits(enc);
    await enc.submit();
    x.release();
    for (const dev of this.#devices) trimBufferPool(dev.gpu);
    this.#ids = Array.from(ids);
    return await this.#readLogits();
  }

  /** Appends one token at position `length`; returns the logits f32 [V] of that position. */
  async step(id: number): Promise<Float32Array> {
    this.#check([id], "decode step");
    const t0 = await this.#encodeStep(this.#ids.length, id);
    this.#ids.push(id);
    const logits = await this.#readLogits();
    this.decodeTimes.waitReadMs += performance.now() - t0;
    this.decodeTimes.steps++;
    return logits;
  }

  /** Whether decodeGreedy keeps the host ahead of the GPU: the model on one device, where a step's
   * argmax can feed the next step's embedding without the host. */
  get pipelinesGreedy(): boolean {
    return this.#devices.length === 1;
  }

  /**
   * Greedy decoding with the host ahead of the GPU: token k + 1 is the argmax of step k's logits,
   * computed on the GPU and fed to step k + 1 there, so the host encodes the next steps while the GPU
   * runs this one (up to GREEDY_STEPS_IN_FLIGHT steps queued) and the ids come back to it a step or
   * two late. `first` (token 0, chosen on the host from the cache's last logits) feeds step 0. Each
   * later token goes to `accept` in order; false ends the generation there: that token is not
   * cached, and steps already queued after it are dropped. At most `maxSteps` steps run (each caches
   * its input token). Returns whether `accept` ended it.
   */
  async decodeGreedy(first: number, maxSteps: number, accept: (id: number) => boolean): Promise<boolean> {
    if (!this.pipelinesGreedy) throw new Error("decodeGreedy: the model spans several devices; use step()");
    this.#check([first], "greedy decode");
    const n0 = this.#ids.length;
    if (!Number.isInteger(maxSteps) || maxSteps < 0 || n0 + maxSteps > this.capacity) {
      throw new RangeError(
        `decodeGreedy: ${maxSteps} steps after ${n0} cached tokens exceed the KV cache of ${this.capacity}`,
      );
    }
    const tokens = [first]; // token k feeds step k; all but the last accepted
    let submitted = 0;
    let stopped = false;
    const inFlight: number[] = [];
    // The cache holds the inputs of the steps that ran and whose input was accepted.
    const cacheAccepted = () => {
      const keep = Math.min(tokens.length, submitted);
      while (this.#ids.length - n0 < keep) this.#ids.push(tokens[this.#ids.length - n0]);
    };
    for (;;) {
      while (!stopped && submitted < maxSteps && inFlight.length < GREEDY_STEPS_IN_FLIGHT) {
        await this.#encodeStep(
          n0 + submitted,
          submitted === 0 ? first : null,
          submitted % GREEDY_STEPS_IN_FLIGHT,
        );
        inFlight.push(submitted++);
        cacheAccepted();
      }
      const k = inFlight.shift();
      if (k === undefined) break;
      const t0 = performance.now();
      const id = await this.#readGreedyId(k % GREEDY_STEPS_IN_FLIGHT);
      this.decodeTimes.waitReadMs += performance.now() - t0;
      this.decodeTimes.steps++;
      if (stopped) continue; // a step queued after the stop
      if (!accept(id)) {
        stopped = true;
        continue;
      }
      tokens.push(id);
      cacheAccepted();
    }
    return stopped;
  }

  /** Encodes and submits the decode step at position `n`: fed `id`, or with null the id the
   * previous step's argmax left on the GPU. Its tail copies the logits for #readLogits, or with
   * `greedySlot` writes their argmax as the next step's input and copies it to that readback slot.
   * Where every layer reads the position from the GPU (q, k and v in one pass), the first step of
   * each kind (chunks of the cache that attention spans, logits or argmax) is recorded and later
   * steps of that kind replay its commands without the launchers. Returns the time after the last
   * submit. */
  async #encodeStep(n: number, id: number | null, greedySlot?: number): Promise<number> {
    const cfg = this.config;
    const { hiddenSize: C, numHeads: H, numKvHeads: KVH, headDim: D, rmsNormEps: eps, intermediateSize: I } =
      cfg;
    const times = this.decodeTimes;
    let t0 = performance.now();
    // Submits an encoder, its encoding time (since t0) and submit time counted in decodeTimes.
    const submitTimed = async (enc: Encoder) => {
      const t1 = performance.now();
      times.encodeMs += t1 - t0;
      times.dispatches += enc.dispatches;
      await enc.submit();
      t0 = performance.now();
      times.submitMs += t0 - t1;
    };
    for (let d = 0; d < this.#devices.length; d++) {
      const dev = this.#devices[d];
      const gpu = dev.gpu;
      writeBuffer(gpu, dev.pos, Uint32Array.of(n));
      writeBuffer(gpu, dev.rot, ropeRotation(this.#invFreq, n));
      if (d === 0) {
        if (id !== null) writeBuffer(gpu, this.#idBuf, Int32Array.of(id));
      } else {
        const prev = this.#devices[d - 1];
        writeBuffer(gpu, dev.x, new Uint8Array(await readBytes(prev.gpu, prev.x, C * 2)));
      }
      const last = d === this.#devices.length - 1;
      const replayable = this.replaySteps && dev.layers.every((l) => l.fusedQkv);
      const key = `${Math.ceil((n + 1) / DECODE_ATTENTION_CHUNK)} ${last && greedySlot !== undefined}`;
      const recorded = replayable ? dev.recordings.get(key) : undefined;
      // The step's last submit: a greedy step's id copied to its readback slot (not recorded: the
      // slot differs from step to step).
      const finish = async (enc: ReplayEncoder) => {
        if (last && greedySlot !== undefined) {
          enc.recording = undefined;
          enc.copy(this.#idBuf, 0, this.#greedyRead[greedySlot], 0, 4);
        }
        await submitTimed(enc);
      };
      if (recorded) {
        if (d === 0) times.replayed++;
        let enc = new ReplayEncoder(dev.bindings, `decode step ${n}`, 0);
        for (let s = 0; s < recorded.length; s++) {
          if (s > 0) {
            await submitTimed(enc);
            enc = new ReplayEncoder(dev.bindings, `decode step ${n}`, enc.nextSlot);
          }
          enc.replay(recorded[s]);
        }
        await finish(enc);
        continue;
      }
      const segments: RecordedCommand[][] | undefined = replayable ? [[]] : undefined;
      let enc = new ReplayEncoder(dev.bindings, `decode step ${n}`, 0);
      enc.recording = segments?.[0];
      if (d === 0) {
        await embeddingForward(enc, {
          table: this.#weights.embed,
          ids: this.#idBuf,
          out: dev.x,
          T: 1,
          C,
          V: cfg.vocabSize,
        });
      }
      for (const [i, layer] of dev.layers.entries()) {
        const p = layer.proj;
        const f = layer.fast;
        const attnNorm = { x: dev.x, w: layer.attnNorm, h: dev.h, rstd: dev.rstd, C, eps };
        const attnFolded = layer.attnNormScaled;
        const attnU = attnFolded ? {} : await normedLoraGroupProduct(enc, layer.attnLora, attnNorm, dev.u);
        const qkv = layer.fusedQkv;
        if (qkv) {
          await matvecQkv(enc, {
            ...qkv,
            in: C,
            headDim: D,
            x: attnFolded ? dev.xw : dev.h,
            norm: attnFolded && { residual: dev.x, mul: attnFolded.mul, eps },
            lora: qkv.lora && { ...qkv.lora, x: dev.u },
            rotation: dev.rot,
            y: dev.qr,
            kCache: layer.k,
            vCache: layer.v,
            cacheRows: this.capacity,
            position: dev.pos,
          });
        } else {
          await this.#qkvApart(enc, dev, layer, attnU, n);
        }
        await decodeAttention(enc, {
          q: dev.qr,
          k: layer.k,
          v: layer.v,
          out: dev.o,
          part: dev.part,
          position: dev.pos,
          n: n + 1,
          H,
          KVH,
          D,
        });
        const mlpFolded = layer.mlpNormScaled;
        const mlpNext = mlpFolded && { w: mlpFolded, xw: dev.xw };
        await linear1(enc, p.o_proj, f.o_proj, dev.o, dev.c, dev.u, { x: dev.x, nextNorm: mlpNext });
        const mlpNorm = { x: dev.x, w: layer.mlpNorm, h: dev.h, rstd: dev.rstd, C, eps };
        const mlpU = mlpFolded ? {} : await normedLoraGroupProduct(enc, layer.mlpLora, mlpNorm, dev.u);
        if (layer.fusedMlp) {
          const projection = (lin: Linear, m: LoraTarget) => {
            if (lin.base.kind !== "nf4") throw new Error(`l${layer.index}.${m}: fusedMlp needs an NF4 base`);
            return { w: lin.base.w, second: lin.lora ? { w: lin.lora.b16, xOffset: mlpU[m] } : undefined };
          };
          const lora = p.gate_proj.lora;
          await matvecSwiglu(enc, {
            out: I,
            in: C,
            gate: projection(p.gate_proj, "gate_proj"),
            up: projection(p.up_proj, "up_proj"),
            x: mlpFolded ? dev.xw : dev.h,
            lora: lora ? { K2: lora.R, alpha: lora.scale, x: dev.u } : undefined,
            y: dev.sw,
            norm: mlpFolded && { residual: dev.x, mul: mlpFolded.mul, eps },
          });
        } else {
          await linear1(enc, p.gate_proj, f.gate_proj, dev.h, dev.g, dev.u, undefined, 0, mlpU.gate_proj);
          await linear1(enc, p.up_proj, f.up_proj, dev.h, dev.up, dev.u, undefined, 0, mlpU.up_proj);
          await swigluForward(enc, { g: dev.g, u: dev.up, h: dev.sw, n: I });
        }
        const attnNext = dev.layers[i + 1]?.attnNormScaled;
        await linear1(enc, p.down_proj, f.down_proj, dev.sw, dev.c, dev.u, {
          x: dev.x,
          nextNorm: attnNext && { w: attnNext, xw: dev.xw },
        });
        if (enc.dispatches >= SUBMIT_AFTER_DISPATCHES) {
          // The GPU starts on these layers while the CPU encodes the next ones.
          await submitTimed(enc);
          enc = new ReplayEncoder(dev.bindings, `decode step ${n}`, enc.nextSlot);
          if (segments) segments.push(enc.recording = []);
        }
      }
      if (last) {
        await this.#head(enc, dev);
        if (greedySlot === undefined) this.#copyLogits(enc);
        else {
          await argmax(enc, {
            values: this.#logits,
            n: cfg.vocabSize,
            part: this.#argmaxPart,
            out: this.#idBuf,
          });
        }
      }
      await finish(enc);
      if (segments) dev.recordings.set(key, segments);
    }
    return t0;
  }

  /** The id a greedy step copied to readback slot `slot`. */
  async #readGreedyId(slot: number): Promise<number> {
    const buf = this.#greedyRead[slot];
    await buf.mapAsync(1, /* GPUMapMode.READ */ 0, 4);
    try {
      this.#devices[0].gpu.throwIfFailed();
      return new Int32Array(buf.getMappedRange(0, 4))[0];
    } finally {
      buf.unmap();
    }
  }

  /** q, k and v of a layer where matvecQkv does not take them: q into dev.qr, k and v into cache row
   * n; each through its own product, rotated in its epilogue where the matvec kernels take them. */
  async #qkvApart(
    enc: Encoder,
    dev: DeviceState,
    layer: LayerState,
    attnU: LoraGroup["offsets"],
    n: number,
  ): Promise<void> {
    const { numHeads: H, numKvHeads: KVH, headDim: D } = this.config;
    const row = bytesPerRow(this.config);
    const p = layer.proj;
    const f = layer.fast;
    // v goes straight into cache row n where the matvec kernel runs it; k into it through RoPE.
    const rowElems = KVH * D;
    if (layer.fusedRope) {
      const rope = { headDim: D, rotation: dev.rot };
      await linear1(enc, p.q_proj, true, dev.h, dev.qr, dev.u, undefined, 0, attnU.q_proj, rope);
      await linear1(
        enc,
        p.k_proj,
        true,
        dev.h,
        layer.k,
        dev.u,
        undefined,
        n * rowElems,
        attnU.k_proj,
        rope,
      );
    } else {
      await linear1(enc, p.q_proj, f.q_proj, dev.h, dev.q, dev.u, undefined, 0, attnU.q_proj);
      await linear1(enc, p.k_proj, f.k_proj, dev.h, dev.k, dev.u, undefined, 0, attnU.k_proj);
    }
    if (f.v_proj) {
      await linear1(
        enc,
        p.v_proj,
        f.v_proj,
        dev.h,
        layer.v,
        dev.u,
        undefined,
        n * rowElems,
        attnU.v_proj,
      );
    } else {
      await linear1(enc, p.v_proj, f.v_proj, dev.h, dev.v, dev.u);
      enc.copy(dev.v, 0, layer.v, n * row, row);
    }
    if (!layer.fusedRope) {
      await ropeForward(enc, {
        x: dev.q,
        out: dev.qr,
        positions: dev.pos,
        invFreq: layer.invFreq,
        T: 1,
        heads: H,
        D,
      });
      await ropeForward(enc, {
        x: dev.k,
        out: layer.k,
        outOffset: n * rowElems,
        positions: dev.pos,
        invFreq: layer.invFreq,
        T: 1,
        heads: KVH,
        D,
      });
    }
  }

  /** Final norm of dev.x and the lm_head product into the logits buffer. */
  async #head(enc: Encoder, dev: DeviceState): Promise<void> {
    const { hiddenSize: C, vocabSize: V, rmsNormEps: eps } = this.config;
    await rmsnormForward(enc, {
      x: dev.x,
      w: this.#weights.finalNorm,
      y: dev.h,
      rstd: dev.rstd,
      T: 1,
      C,
      eps,
    });
    if (this.#fastHead) {
      await matvec(enc, {
        w: { kind: "f16", w: this.#weights.lmHead },
        out: V,
        in: C,
        x: dev.h,
        y: this.#logits,
        yType: "f32",
      });
    } else {
      await matmul(enc, {
        a: dev.h,
        b: this.#weights.lmHead,
        c: this.#logits,
        M: 1,
        N: V,
        K: C,
        layout: "nt",
        out: "f32",
      });
    }
  }

  /** Brings the cache to exactly `ids` and returns the logits of the last one: keeps the longest
   * cached prefix and feeds the rest one step at a time, or re-runs the prefill when the prefix is
   * empty or the rest is long. */
  async extend(ids: ArrayLike<number>): Promise<Float32Array> {
    if (ids.length === 0) throw new RangeError("extend: no tokens");
    let p = 0;
    while (p < this.#ids.length && p < ids.length && this.#ids[p] === ids[p]) p++;
    if (p === ids.length) p--; // the last token is fed again for its logits
    if (p === 0 || ids.length - p > MAX_INCREMENTAL_TOKENS) return await this.prefill(ids);
    this.#ids.length = p;
    let logits: Float32Array | undefined;
    for (let i = p; i < ids.length; i++) logits = await this.step(ids[i]);
    return logits!;
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const dev of this.#devices) dev.bindings.destroy();
    for (const b of this.#owned) releaseBuffer(b);
    this.#owned = [];
  }
}

/** Whether gate and up (at T = 1) fit matvecSwiglu: NF4 bases of one shape, and LoRA on neither or
 * on both, with one rank and scale, their down-products in the MLP group. */
function fusedMlpFits(gpu: Gpu, gate: Linear, up: Linear, group: LoraGroup | undefined): boolean {
  if (gate.base.kind !== "nf4" || up.base.kind !== "nf4") return false;
  if (gate.in !== up.in || gate.out !== up.out) return false;
  const [a, b] = [gate.lora, up.lora];
  if (!a !== !b) return false;
  if (
    a && b && (a.R !== b.R || a.scale !== b.scale || group?.offsets.gate_proj === undefined ||
      group.offsets.up_proj === undefined)
  ) return false;
  return matvecUnsupported(gpu.caps, "nf4", { out: gate.out, in: gate.in, K2: a?.R ?? 0 }) === undefined;
}

/** Whether this projection, adding into the residual stream, can write the next norm's weighted
 * input (matvec's nextNorm: an NF4 base on the matvec kernels). */
function writesNextNorm(lin: Linear, fast: boolean): boolean {
  return fast && lin.base.kind === "nf4";
}

/** Whether the matvec kernels take this projection (base and, with LoRA, the A product). */
function matvecFits(gpu: Gpu, lin: Linear): boolean {
  const caps = gpu.caps;
  const R = lin.lora?.R ?? 0;
  if (matvecUnsupported(caps, lin.base.kind, { out: lin.out, in: lin.in, K2: R }) !== undefined) return false;
  return !lin.lora || matvecUnsupported(caps, "f16", { out: R, in: lin.in }) === undefined;
}

/** h = RMSNorm(x) (f16 [in]) and u[offsets[m] ..] = A16_m h for every member m of the group, in one
 * product that computes the norm itself (its own dispatch saved); without a group, or where the
 * folded norm does not fit the adapter's workgroup memory, the norm runs alone (and writes rstd).
 * Returns the offsets (none without a group). */
async function normedLoraGroupProduct(
  enc: Encoder,
  group: LoraGroup | undefined,
  norm: { x: GPUBuffer; w: GPUBuffer; h: GPUBuffer; rstd: GPUBuffer; C: number; eps: number },
  u: GPUBuffer,
): Promise<LoraGroup["offsets"]> {
  const { x, w, h, rstd, C, eps } = norm;
  const folded = group !== undefined && foldedNormFits(enc.gpu.caps, C);
  if (!folded) await rmsnormForward(enc, { x, w, y: h, rstd, T: 1, C, eps });
  if (!group) return {};
  await matvec(enc, {
    w: { kind: "f16", w: group.a16 },
    out: group.rows,
    in: group.in,
    x: folded ? x : h,
    y: u,
    yType: "f16",
    norm: folded ? { w, eps, h } : undefined,
  });
  return group.offsets;
}

/** One linear layer at T = 1 on preallocated buffers: y = x W^T (+ s·(x A^T) B^T), written from
 * element yOffset of y on (matvec kernels only). With `residual` the result is added into the
 * residual stream residual.x instead (`y` is then scratch), and with residual.nextNorm (NF4 matvec
 * kernels) the product also writes the weighted input of the norm that reads the stream next.
 * `fast`: through the matvec kernels (matvecFits), else the general kernels at T = 1. `uOffset`
 * (matvec kernels): x A^T is already in u from that element on (normedLoraGroupProduct). */
async function linear1(
  enc: Encoder,
  lin: Linear,
  fast: boolean,
  x: GPUBuffer,
  y: GPUBuffer,
  u: GPUBuffer,
  residual?: { x: GPUBuffer; nextNorm?: MatvecArgs["nextNorm"] },
  yOffset = 0,
  uOffset?: number,
  rope?: MatvecArgs["rope"],
): Promise<void> {
  if ((yOffset !== 0 || uOffset !== undefined || rope || residual?.nextNorm) && !fast) {
    throw new Error(
      "linear1: an output offset, a shared LoRA product or a next norm needs the matvec kernels",
    );
  }
  const addInto = residual?.x;
  if (fast) {
    const lora = lin.lora;
    if (lora && uOffset === undefined) {
      await matvec(enc, { w: { kind: "f16", w: lora.a16 }, out: lora.R, in: lin.in, x, y: u, yType: "f16" });
    }
    await matvec(enc, {
      w: lin.base,
      out: lin.out,
      in: lin.in,
      x,
      y: addInto ?? y,
      yOffset,
      yType: "f16",
      beta: addInto ? 1 : 0,
      K2: lora?.R,
      second: lora ? { w: lora.b16, x: u, alpha: lora.scale, xOffset: uOffset } : undefined,
      rope,
      nextNorm: residual?.nextNorm,
    });
    return;
  }
  if (lin.lora) {
    await loraForward(enc, {
      T: 1,
      in: lin.in,
      out: lin.out,
      R: lin.lora.R,
      scale: lin.lora.scale,
      x,
      base: lin.base,
      a16: lin.lora.a16,
      b16: lin.lora.b16,
      u,
      y,
      yType: "f16",
    });
  } else if (lin.base.kind === "nf4") {
    await nf4Matmul(enc, { x, w: lin.base.w, y, T: 1, mode: "fwd", out: "f16" });
  } else {
    await matmul(enc, { a: x, b: lin.base.w, c: y, M: 1, N: lin.out, K: lin.in, layout: "nt", out: "f16" });
  }
  if (addInto) await residualAdd(enc, { a: addInto, b: y, n: lin.out });
}

/** Moves a tensor to another device through host memory (the source is released). */
async function moveTensor(t: Tensor, gpu: Gpu): Promise<Tensor> {
  if (t.gpu === gpu) return t;
  const bytes = new Uint8Array(await readBytes(t.gpu, t.buffer, t.bytes));
  const out = new Tensor(gpu, upload(gpu, bytes, t.category, t.label), t.shape, t.dtype, t.category, t.label);
  t.release();
  return out;
}

// ------------------------------------------------------------------------------------ generation

/** Sampling and length settings of one generation (greedy unless doSample with a temperature > 0). */
export interface GenerationSettings extends SamplingOptions {
  /** Most new tokens; DEFAULT_MAX_NEW_TOKENS by default. */
  maxNewTokens?: number;
  /** Seed of the sampling Rng; 0 by default. */
  seed?: number;
}

export type StopReason = "eos" | "max_new_tokens" | "cache_full";

export interface GenerationResult {
  /** New token ids (the stop token left out). */
  ids: number[];
  /** The stop token that ended the generation, or null. */
  stopToken: number | null;
  stopReason: StopReason;
  promptTokens: number;
  /** Milliseconds: prefill (prompt to first logits), decode steps, whole call. */
  prefillMs: number;
  decodeMs: number;
  latencyMs: number;
}

/** The settings with their defaults filled in, as written into GeneratedResponses.json. */
export function resolvedSettings(s: GenerationSettings = {}): Required<GenerationSettings> {
  const temperature = s.temperature ?? (s.doSample ? 1 : 0);
  return {
    doSample: (s.doSample ?? temperature > 0) && temperature > 0,
    temperature,
    topK: s.topK ?? 0,
    topP: s.topP ?? 1,
    repetitionPenalty: s.repetitionPenalty ?? 1,
    maxNewTokens: s.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS,
    seed: s.seed ?? 0,
  };
}

/** Generates from `prompt` ids: the cache is brought to the prompt (reusing a cached prefix), then
 * tokens are chosen until a stop token, maxNewTokens, or a full cache. `onToken` sees each new id. */
export async function generateIds(
  kv: KvCacheModel,
  prompt: ArrayLike<number>,
  settings: GenerationSettings,
  stopTokenIds: readonly number[],
  onToken?: (id: number) => void,
): Promise<GenerationResult> {
  const s = resolvedSettings(settings);
  if (!Number.isInteger(s.maxNewTokens) || s.maxNewTokens < 1) {
    throw new RangeError(`maxNewTokens = ${s.maxNewTokens} must be a whole number >= 1`);
  }
  const sampler = new TokenSampler(
    {
      doSample: s.doSample,
      temperature: s.temperature,
      topK: s.topK,
      topP: s.topP,
      repetitionPenalty: s.repetitionPenalty,
    },
    new Rng(s.seed),
  );
  const t0 = performance.now();
  let logits = await kv.extend(prompt);
  const t1 = performance.now();
  const context = Array.from(prompt);
  const ids: number[] = [];
  let stopReason: StopReason = "max_new_tokens";
  let stopToken: number | null = null;
  // A chosen token: a stop token ends the generation (and is not part of it), another is kept.
  const accept = (id: number): boolean => {
    if (isStopToken(id, stopTokenIds)) {
      stopReason = "eos";
      stopToken = id;
      return false;
    }
    ids.push(id);
    context.push(id);
    onToken?.(id);
    return true;
  };
  if (!s.doSample && s.repetitionPenalty === 1 && kv.pipelinesGreedy) {
    // Greedy: after the first token, the argmax runs on the GPU and the host stays ahead of it.
    if (accept(sampler.next(logits, context)) && ids.length < s.maxNewTokens) {
      const steps = Math.min(s.maxNewTokens - 1, kv.capacity - kv.length);
      const stopped = await kv.decodeGreedy(ids[0], steps, accept);
      if (!stopped && ids.length < s.maxNewTokens) stopReason = "cache_full";
    }
  } else {
    while (accept(sampler.next(logits, context)) && ids.length < s.maxNewTokens) {
      if (kv.length >= kv.capacity) {
        stopReason = "cache_full";
        break;
      }
      logits = await kv.step(ids.at(-1)!);
    }
  }
  const t2 = performance.now();
  return {
    ids,
    stopToken,
    stopReason,
    promptTokens: prompt.length,
    prefillMs: t1 - t0,
    decodeMs: t2 - t1,
    latencyMs: t2 - t0,
  };
}

/** Turns a stream of token ids into text pieces that never split a UTF-8 character: text whose
 * bytes end inside a character (decoded as U+FFFD at the end) is held back until it completes. */
export class TextStreamer {
  /** Ids since the last complete character boundary. */
  #ids: number[] = [];

  constructor(readonly decode: (ids: number[]) => string) {}

  /** The new text that token `id` completes ("" while a character is incomplete). */
  push(id: number): string {
    this.#ids.push(id);
    const text = this.decode(this.#ids);
    if (text.endsWith("\uFFFD")) return "";
    // A complete character boundary: the next window starts here (byte-level pieces concatenate).
    this.#ids = [];
    return text;
  }

  /** What is held back (an incomplete character at the very end), as decoded. */
  flush(): string {
    const text = this.#ids.length ? this.decode(this.#ids) : "";
    this.#ids = [];
    return text;
  }
}

export interface ChatGenerationResult extends GenerationResult {
  /** The decoded response (special tokens skipped). */
  text: string;
}

/** Chat generation: tokenizer + chat template + KV cache. */
export class Generator {
  readonly stopTokenIds: number[];

  constructor(
    readonly kv: KvCacheModel,
    readonly tokenizer: LlamaTokenizer,
    readonly template: ChatTemplate,
  ) {
    const stops = new Set<number>([...kv.config.eosTokenIds, ...tokenizer.eosIds, tokenizer.eotId]);
    this.stopTokenIds = [...stops].sort((a, b) => a - b);
  }

  /** The prompt ids of a conversation with the assistant header appended. */
  promptIds(messages: readonly ChatMessage[]): Int32Array {
    return encodePrompt(this.tokenizer, this.template, messages);
  }

  /** The next assistant turn of `messages`; `onText` receives the response as it is produced. */
  async chat(
    messages: readonly ChatMessage[],
    settings: GenerationSettings = {},
    onText?: (piece: string) => void,
  ): Promise<ChatGenerationResult> {
    const prompt = this.promptIds(messages);
    const decode = (ids: number[]) => this.tokenizer.decode(ids, { skipSpecialTokens: true });
    const streamer = new TextStreamer(decode);
    const r = await generateIds(this.kv, prompt, settings, this.stopTokenIds, (id) => {
      const piece = streamer.push(id);
      if (piece && onText) onText(piece);
    });
    const rest = streamer.flush();
    if (rest && onText) onText(rest);
    return { ...r, text: decode(r.ids) };
  }
}
