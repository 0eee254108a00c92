// LLAMAFineTuner: the training loop around a LlamaModel and a FineTuningStrategy.
//
// One optimizer step (training step k, 0-based):
//   1. data: the next batch of the epoch's plan (data/batching.ts: examples grouped by length,
//      group order shuffled with seed + epoch); a batch holds up to sequencesPerStep sequences.
//   2. accumulation: every sequence runs forward and backward (B = 1) with
//      gradScale = lossScale / tokensInStep, so the gradients sum to lossScale * d(mean NLL over
//      all label tokens of the step)/d(theta). Dropout seeds come from the trainer's RNG.
//   3. on the GPU, per device: unscale (1 / lossScale), gradient statistics (global L2 norm and a
//      non-finite flag); the norms of all devices are combined on the CPU.
//   4. non-finite: the update is skipped and the loss scale halved (engine/loss_scaler.ts);
//      otherwise clip to maxGradNorm, then AdamW 8-bit (or f32 AdamW) with lr = schedule(k).
//      The schedule advances on skipped steps too (as the HF Trainer does); Adam's bias-correction
//      count only on taken updates. With one device, 3 and 4 go out in one submit right behind the
//      backward, the skip decided on the GPU from the statistics; the CPU reads them afterwards.
// Validation every evalEvery steps: token-weighted mean NLL over the validation set, perplexity =
// exp of it. Checkpoints every saveEvery steps into RUN/checkpoints/step-N/ (written whole, then
// renamed into place): the LoRA weights as a PEFT adapter, optimizer.safetensors (bitsandbytes
// names: state1/state2 codes or f32 moments, absmax1/absmax2), trainer_state.json (step, optimizer
// step count, loss scaler, RNG, data order and position, dataset fingerprint, the config).
// resume() continues bit for bit: N steps straight equal N/2 steps, a checkpoint, and N/2 more.

import { join } from "node:path";
import { createBuffer, readBytes, releaseBuffer, writeBuffer } from "../engine/buffers.ts";
import type { Encoder } from "../engine/encoder.ts";
import { ReplayBindings, ReplayEncoder } from "../engine/replay_encoder.ts";
import type { Gpu } from "../engine/gpu.ts";
import { LossScaler, type LossScalerState } from "../engine/loss_scaler.ts";
import {
  adamw,
  adamw8bit,
  type AdamW8bitState,
  type AdamWHyper,
  createAdamW8bitState,
  GRAD_STATS_BYTES,
  gradClip,
  gradStats,
  gradStatsWorkspaceBytes,
  type GradTensor,
  gradUnscale,
} from "../kernels/optim/optim.ts";
import { type BatchPlan, LengthBucketedBatcher } from "../data/batching.ts";
import { IGNORE_INDEX } from "../data/chat_template.ts";
import { writeDirAtomic } from "../data/fs_util.ts";
import { SafetensorsFile, type TensorToWrite, writeSafetensors } from "./safetensors.ts";
import { learningRate, type ScheduleOptions } from "./schedule.ts";
import type { FineTuningStrategy, StepSequence } from "./strategy.ts";
import { configJson, type TrainingConfig, warmupStepsOf } from "./training_config.ts";
import type { LlamaModel, LoraParameter } from "./types.ts";
import { readMetrics, type StepMetrics, writeFileAtomic } from "./run_outputs.ts";
import { loadAdapter, saveAdapter } from "./peft.ts";

/** A tokenized training or validation example (a line of train.jsonl / val.jsonl). */
export interface TrainExample {
  id: string;
  input_ids: ArrayLike<number>;
  labels: ArrayLike<number>;
}

export interface EvalResult {
  /** Token-weighted mean NLL over the label tokens of the evaluated examples. */
  loss: number;
  perplexity: number;
  tokens: number;
  examples: number;
}

export interface FineTunerOptions {
  config: TrainingConfig;
  strategy: FineTuningStrategy;
  model: LlamaModel;
  train: readonly TrainExample[];
  val: readonly TrainExample[];
  /** Run folder: metrics.jsonl, checkpoints/ and the final outputs go here. */
  runDir: string;
  /** base_model_name_or_path of adapter_config.json. */
  baseModelName: string;
  /** Called after every step with its metrics line. */
  onStep?: (m: StepMetrics) => void;
  /** Called with messages for people (checkpoint written, stop requested...). */
  log?: (message: string) => void;
}

/** Optimizer state of one parameter. */
type OptimState =
  | { kind: "8bit"; state: AdamW8bitState }
  | { kind: "f32"; m: GPUBuffer; v: GPUBuffer; n: number };

/** trainer_state.json of a checkpoint. */
export interface TrainerState {
  format: 1;
  /** Training steps done (the checkpoint's N). */
  step: number;
  /** Updates actually applied (Adam's bias-correction count). */
  optimizerSteps: number;
  lossScaler: LossScalerState;
  /** State of the dropout-seed RNG (u32). */
  rngState: number;
  epoch: number;
  /** Next batch of the epoch's plan. */
  batchIndex: number;
  /** The epoch's plan: example indices per batch. */
  plan: number[][];
  dataset: { trainExamples: number; fingerprint: string };
  config: TrainingConfig;
  savedAt: string;
}

/** Config fields that must not change across a resume for it to be exact. */
const RESUME_FIXED: (keyof TrainingConfig)[] = [
  "strategy",
  "loraR",
  "loraAlpha",
  "loraDropout",
  "loraTargets",
  "useRslora",
  "maxSteps",
  "sequencesPerStep",
  "learningRate",
  "lrScheduler",
  "warmupRatio",
  "warmupSteps",
  "optimizer",
  "adamBeta1",
  "adamBeta2",
  "adamEpsilon",
  "weightDecay",
  "maxGradNorm",
  "seed",
  "maxSeqLength",
  "valFraction",
];

/** Throws an error for people when a checkpoint's state cannot continue exactly under `config` with
 * this training data. */
export function checkResumable(
  state: TrainerState,
  config: TrainingConfig,
  train: readonly TrainExample[],
  dir: string,
): void {
  if (state.format !== 1) {
    throw new Error(`${dir}/trainer_state.json: unknown checkpoint format ${state.format}.`);
  }
  for (const f of RESUME_FIXED) {
    if (JSON.stringify(state.config[f]) !== JSON.stringify(config[f])) {
      throw new Error(
        `cannot resume exactly from ${dir}: training config field "${f}" was ` +
          `${JSON.stringify(state.config[f])} there and is ${JSON.stringify(config[f])} now. ` +
          `Use the checkpoint's training_config.json (--config ${join(dir, "training_config.json")}).`,
      );
    }
  }
  const fp = datasetFingerprint(train);
  if (state.dataset.trainExamples !== train.length || state.dataset.fingerprint !== fp) {
    throw new Error(
      `cannot resume from ${dir}: its training data had ${state.dataset.trainExamples} examples ` +
        `(fingerprint ${state.dataset.fingerprint}); now ${train.length} (${fp}). ` +
        `Use the same --data, --tokenizer, --seed and --val-fraction as the run that wrote it.`,
    );
  }
  if (state.step > config.maxSteps) {
    throw new Error(
      `cannot resume from ${dir}: it is at step ${state.step}, past maxSteps ${config.maxSteps}.`,
    );
  }
}

/** Reads a checkpoint's trainer_state.json. */
export async function readTrainerState(dir: string): Promise<TrainerState> {
  const statePath = join(dir, "trainer_state.json");
  try {
    return JSON.parse(await Deno.readTextFile(statePath));
  } catch (e) {
    throw new Error(
      `${statePath}: cannot read the checkpoint's trainer state (${(e as Error).message}). ` +
        `--resume takes a folder RUN/checkpoints/step-N written by a training run.`,
    );
  }
}

/** FNV-1a over the ids, lengths and labels count of the train examples, in order. */
export function datasetFingerprint(train: readonly TrainExample[]): string {
  let h = 0x811c9dc5;
  const mix = (s: string) => {
    for (let i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
  };
  for (const e of train) mix(`${e.id}|${e.input_ids.length}|${labelTokens(e.labels)};`);
  return h.toString(16).padStart(8, "0");
}

/** Label tokens that carry a loss: positions 1..T-1 whose label is not -100 (position t's label
 * is predicted from the tokens before it, so position 0 never carries one). */
export function labelTokens(labels: ArrayLike<number>): number {
  let n = 0;
  for (let i = 1; i < labels.length; i++) if (labels[i] !== IGNORE_INDEX) n++;
  return n;
}

function pad4(n: number): number {
  return Math.ceil(n / 4) * 4;
}

/** Per device: its parameters (indices), the gradient statistics' workspace and result, and the
 * bind groups of the step's unscale, statistics, clip and optimizer dispatches, kept across steps. */
interface TrainerDevice {
  gpu: Gpu;
  params: number[];
  partials: GPUBuffer;
  stats: GPUBuffer;
  bindings: ReplayBindings;
}

export class LLAMAFineTuner {
  readonly config: TrainingConfig;
  readonly strategy: FineTuningStrategy;
  readonly model: LlamaModel;
  readonly runDir: string;
  readonly params: LoraParameter[];
  readonly schedule: ScheduleOptions;
  readonly batcher: LengthBucketedBatcher;
  readonly #opts: FineTunerOptions;
  readonly #train: readonly TrainExample[];
  readonly #val: readonly TrainExample[];
  readonly #states: OptimState[];
  readonly #devices: TrainerDevice[];
  #scaler: LossScaler;
  #step = 0;
  #optimizerSteps = 0;
  #rng: number;
  #epoch = 0;
  #batchIndex = 0;
  #plan: BatchPlan[];
  #stopRequested = false;
  #startedAt = performance.now();
  #destroyed = false;

  constructor(options: FineTunerOptions) {
    this.#opts = options;
    const c = options.config;
    this.config = c;
    this.strategy = options.strategy;
    this.model = options.model;
    this.runDir = options.runDir;
    this.#train = options.train;
    this.#val = options.val;
    if (this.#train.length === 0) {
      throw new Error("no training examples: the dataset's train split is empty.");
    }
    for (const e of this.#train) {
      if (labelTokens(e.labels) === 0) {
        throw new Error(`training example ${e.id} has no label tokens (no assistant text); re-run prepare.`);
      }
      if (e.input_ids.length > c.maxSeqLength) {
        throw new Error(
          `training example ${e.id} has ${e.input_ids.length} tokens, more than maxSeqLength ` +
            `${c.maxSeqLength}; examples are never truncated: raise maxSeqLength or drop the example.`,
        );
      }
    }
    this.params = this.strategy.trainableParameters(this.model);
    if (this.params.length === 0) throw new Error("the model has no trainable parameters (no LoRA targets).");
    this.schedule = {
      kind: c.lrScheduler,
      baseLr: c.learningRate,
      totalSteps: c.maxSteps,
      warmupSteps: warmupStepsOf(c),
    };
    this.batcher = new LengthBucketedBatcher(this.#train.map((e) => e.input_ids.length), {
      batchSize: c.sequencesPerStep,
      seed: c.seed,
    });
    this.#plan = this.batcher.plan(0);
    this.#rng = (c.seed ^ 0x9e3779b9) >>> 0;
    this.#scaler = this.#newScaler();
    this.#states = this.params.map((p, i) => {
      if (c.optimizer === "adamw8bit") {
        return { kind: "8bit", state: createAdamW8bitState(p.gpu, p.numel, `adamw8bit.${i}`) };
      }
      const zero = (name: string) => {
        const b = createBuffer(p.gpu, p.numel * 4, "optimizer", `adamw.${i}.${name}`);
        writeBuffer(p.gpu, b, new Float32Array(p.numel));
        return b;
      };
      return { kind: "f32", m: zero("m"), v: zero("v"), n: p.numel };
    });
    const byGpu = new Map<Gpu, number[]>();
    this.params.forEach((p, i) => {
      if (!byGpu.has(p.gpu)) byGpu.set(p.gpu, []);
      byGpu.get(p.gpu)!.push(i);
    });
    this.#devices = [...byGpu].map(([gpu, idx]) => ({
      gpu,
      params: idx,
      partials: createBuffer(
        gpu,
        gradStatsWorkspaceBytes(idx.map((i) => this.#grad(i))),
        "workspace",
        "trainer.grad_partials",
      ),
      stats: createBuffer(gpu, GRAD_STATS_BYTES, "workspace", "trainer.grad_stats"),
      bindings: new ReplayBindings(gpu, "trainer"),
    }));
  }

  /** Training steps done so far. */
  get step(): number {
    return this.#step;
  }

  get optimizerSteps(): number {
    return this.#optimizerSteps;
  }

  get lossScale(): number {
    return this.#scaler.scale;
  }

  get skippedSteps(): number {
    return this.#scaler.skippedSteps;
  }

  get epoch(): number {
    return this.#epoch;
  }

  /** Trainable parameter count. */
  get trainableParameters(): number {
    return this.params.reduce((s, p) => s + p.numel, 0);
  }

  /** Asks train() to stop after the current step (it writes a checkpoint first). */
  requestStop(): void {
    this.#stopRequested = true;
  }

  get stopRequested(): boolean {
    return this.#stopRequested;
  }

  #newScaler(): LossScaler {
    return new LossScaler({
      initScale: this.config.initLossScale,
      growthInterval: this.config.lossScaleGrowthInterval,
    });
  }

  #grad(i: number): GradTensor {
    return { buffer: this.params[i].grad, n: this.params[i].numel };
  }

  #nextSeed(): number {
    this.#rng = (this.#rng + 0x6d2b79f5) >>> 0;
    let t = this.#rng;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  #nextBatch(): BatchPlan {
    if (this.#batchIndex >= this.#plan.length) {
      this.#epoch++;
      this.#batchIndex = 0;
      this.#plan = this.batcher.plan(this.#epoch);
    }
    return this.#plan[this.#batchIndex++];
  }

  /** Peak bytes of the busiest device. */
  peakMemoryBytes(): number {
    return Math.max(0, ...this.model.memory().map((m) => m.peakBytes));
  }

  /** Runs one training step (optimizer update or a skipped one) and returns its metrics. */
  async trainStep(): Promise<StepMetrics> {
    if (this.#destroyed) throw new Error("fine tuner already destroyed");
    const t0 = performance.now();
    const k = this.#step;
    const batch = this.#nextBatch();
    const examples = batch.indices.map((i) => this.#train[i]);
    const sequences: StepSequence[] = examples.map((e) => ({
      ids: Int32Array.from(e.input_ids),
      labels: Int32Array.from(e.labels),
      seed: this.#nextSeed(),
    }));
    const labelCount = examples.reduce((s, e) => s + labelTokens(e.labels), 0);
    const allTokens = examples.reduce((s, e) => s + e.input_ids.length, 0);
    const scale = this.#scaler.scale;
    // Unscale and measure the gradients on every device. With one device the clip and the optimizer
    // step follow in the same submit, skipped on the GPU when a gradient is not finite, and that
    // submit goes out right behind the backward (before the loss read-back), so the GPU does not
    // wait while the host encodes it (some 1800 dispatches). With several, the clip needs the
    // global norm of all devices, read back first.
    const c = this.config;
    const lr = learningRate(this.schedule, k);
    const hyper = {
      lr,
      beta1: c.adamBeta1,
      beta2: c.adamBeta2,
      eps: c.adamEpsilon,
      weightDecay: c.weightDecay,
      step: this.#optimizerSteps + 1,
    };
    const onGpu = this.#devices.length === 1;
    const nextSlot = new Map<Gpu, number>();
    const encodeGradients = async (d: TrainerDevice, step: boolean) => {
      const grads = d.params.map((i) => this.#grad(i));
      const enc = new ReplayEncoder(
        d.bindings,
        step ? "trainer.unscale+stats+step" : "trainer.unscale+stats",
      );
      await gradUnscale(enc, { grads, lossScale: scale });
      await gradStats(enc, { grads, partials: d.partials, stats: d.stats });
      if (step) await this.#optimizerStep(enc, d, hyper);
      nextSlot.set(d.gpu, enc.nextSlot);
      await enc.submit();
    };
    const sum = await this.strategy.accumulate(
      this.model,
      sequences,
      scale / labelCount,
      onGpu ? () => encodeGradients(this.#devices[0], true) : undefined,
    );
    if (sum.tokens !== labelCount) {
      throw new Error(
        `the model counted ${sum.tokens} label tokens in step ${
          k + 1
        } but the trainer counted ${labelCount} ` +
          `(labels != -100 at positions 1..T-1): model and trainer disagree on the label convention.`,
      );
    }
    const loss = sum.nll / labelCount;
    let sq = 0;
    let gradsNonFinite = false;
    for (const d of this.#devices) {
      // (With one device the model ran encodeGradients after the backward.)
      if (!nextSlot.has(d.gpu)) await encodeGradients(d, onGpu);
      const bytes = await readBytes(d.gpu, d.stats, GRAD_STATS_BYTES);
      const norm = new Float32Array(bytes, 0, 1)[0];
      if (new Uint32Array(bytes, 4, 1)[0] !== 0 || !Number.isFinite(norm)) gradsNonFinite = true;
      sq += norm * norm;
    }
    const nonFinite = gradsNonFinite || !Number.isFinite(sum.nll);
    const gradNorm = Math.sqrt(sq);
    const skipped = this.#scaler.update(nonFinite);
    // With one device the GPU applied the step exactly when every gradient was finite (a non-finite
    // loss comes from non-finite logits, whose gradients are not finite either).
    const apply = onGpu ? !gradsNonFinite : !skipped;
    if (!onGpu && apply) {
      for (const d of this.#devices) {
        // The clip reads the global norm from the device's stats buffer.
        const s = new ArrayBuffer(GRAD_STATS_BYTES);
        new Float32Array(s, 0, 1)[0] = gradNorm;
        writeBuffer(d.gpu, d.stats, new Uint8Array(s));
        const enc = new ReplayEncoder(d.bindings, "trainer.clip+adamw", nextSlot.get(d.gpu));
        await this.#optimizerStep(enc, d, hyper);
        await enc.submit();
      }
    }
    if (apply) this.#optimizerSteps++;
    for (const d of this.#devices) await d.gpu.sync();
    this.#step++;
    const seconds = (performance.now() - t0) / 1000;
    return {
      step: this.#step,
      loss,
      lr,
      grad_norm: nonFinite ? null : gradNorm,
      loss_scale: scale,
      label_tokens: labelCount,
      tokens: allTokens,
      tokens_per_s: allTokens / Math.max(seconds, 1e-9),
      peak_memory_bytes: this.peakMemoryBytes(),
      skipped: !apply,
      elapsed_s: (performance.now() - this.#startedAt) / 1000,
      epoch: this.#epoch,
    };
  }

  /** Encodes the clip (the norm read from the device's stats) and the AdamW step of every parameter
   * of a device, which does nothing when the stats count a non-finite gradient. */
  async #optimizerStep(
    enc: Encoder,
    d: TrainerDevice,
    hyper: AdamWHyper,
  ): Promise<void> {
    const grads = d.params.map((i) => this.#grad(i));
    await gradClip(enc, { grads, stats: d.stats, maxNorm: this.config.maxGradNorm });
    for (const i of d.params) {
      const p = this.params[i];
      const st = this.#states[i];
      if (st.kind === "8bit") {
        await adamw8bit(enc, {
          param: p.weight,
          grad: p.grad,
          state: st.state,
          hyper,
          skipIfNonFinite: d.stats,
        });
      } else {
        await adamw(enc, {
          param: p.weight,
          grad: p.grad,
          m: st.m,
          v: st.v,
          n: st.n,
          hyper,
          order: "torch",
          skipIfNonFinite: d.stats,
        });
      }
    }
  }

  /** Token-weighted mean NLL over the validation set (the first evalMaxExamples when set). */
  async evaluate(): Promise<EvalResult> {
    const n = this.config.evalMaxExamples > 0
      ? Math.min(this.config.evalMaxExamples, this.#val.length)
      : this.#val.length;
    let nll = 0;
    let tokens = 0;
    for (let i = 0; i < n; i++) {
      const e = this.#val[i];
      const r = await this.model.loss(Int32Array.from(e.input_ids), Int32Array.from(e.labels));
      nll += r.nll;
      tokens += r.tokens;
    }
    const loss = tokens > 0 ? nll / tokens : NaN;
    return { loss, perplexity: Math.exp(loss), tokens, examples: n };
  }

  // ------------------------------------------------------------------------------------------
  // Checkpoints

  /** The optimizer state tensors (bitsandbytes names), read back from the GPU. */
  async optimizerTensors(): Promise<TensorToWrite[]> {
    const out: TensorToWrite[] = [];
    for (let i = 0; i < this.params.length; i++) {
      const p = this.params[i];
      const s = this.#states[i];
      const read = async (buf: GPUBuffer, bytes: number) =>
        new Uint8Array(await readBytes(p.gpu, buf, pad4(bytes))).slice(0, bytes);
      if (s.kind === "8bit" && s.state.quantized) {
        const blocks = s.state.absmaxM!.size / 4;
        out.push(
          { name: `${p.key}.state1`, dtype: "U8", shape: [p.numel], data: await read(s.state.m, p.numel) },
          { name: `${p.key}.state2`, dtype: "U8", shape: [p.numel], data: await read(s.state.v, p.numel) },
          {
            name: `${p.key}.absmax1`,
            dtype: "F32",
            shape: [blocks],
            data: await read(s.state.absmaxM!, blocks * 4),
          },
          {
            name: `${p.key}.absmax2`,
            dtype: "F32",
            shape: [blocks],
            data: await read(s.state.absmaxV!, blocks * 4),
          },
        );
      } else {
        const m = s.kind === "8bit" ? s.state.m : s.m;
        const v = s.kind === "8bit" ? s.state.v : s.v;
        out.push(
          { name: `${p.key}.state1`, dtype: "F32", shape: [p.numel], data: await read(m, p.numel * 4) },
          { name: `${p.key}.state2`, dtype: "F32", shape: [p.numel], data: await read(v, p.numel * 4) },
        );
      }
    }
    return out;
  }

  trainerState(): TrainerState {
    return {
      format: 1,
      step: this.#step,
      optimizerSteps: this.#optimizerSteps,
      lossScaler: this.#scaler.state(),
      rngState: this.#rng,
      epoch: this.#epoch,
      batchIndex: this.#batchIndex,
      plan: this.#plan.map((b) => b.indices),
      dataset: { trainExamples: this.#train.length, fingerprint: datasetFingerprint(this.#train) },
      config: this.config,
      savedAt: new Date().toISOString(),
    };
  }

  /** Writes RUN/checkpoints/step-N/ whole (replacing an older one of the same step). */
  async saveCheckpoint(): Promise<string> {
    const dir = join(this.runDir, "checkpoints", `step-${this.#step}`);
    const optimizer = await this.optimizerTensors();
    const state = this.trainerState();
    await writeDirAtomic(dir, async (tmp) => {
      await saveAdapter(this.model, tmp, this.#opts.baseModelName);
      await writeSafetensors(join(tmp, "optimizer.safetensors"), optimizer, {
        format: "pt",
        optimizer: this.config.optimizer,
      });
      await Deno.writeTextFile(join(tmp, "trainer_state.json"), JSON.stringify(state) + "\n");
      await Deno.writeTextFile(join(tmp, "training_config.json"), configJson(this.config));
    }, { overwrite: true });
    return dir;
  }

  /** Restores everything a checkpoint holds; the next trainStep() continues exactly. */
  async resume(dir: string): Promise<TrainerState> {
    const state = await readTrainerState(dir);
    checkResumable(state, this.config, this.#train, dir);
    await loadAdapter(this.model, dir);
    const path = join(dir, "optimizer.safetensors");
    const file = await SafetensorsFile.open(path);
    try {
      for (let i = 0; i < this.params.length; i++) {
        const p = this.params[i];
        const s = this.#states[i];
        const load = async (name: string, buf: GPUBuffer, bytes: number) => {
          const info = file.tensors.get(name);
          if (!info) throw new Error(`${path}: tensor ${name} is missing; the checkpoint is incomplete.`);
          const data = await file.read(name);
          if (data.byteLength !== bytes) {
            throw new Error(`${path}: tensor ${name} has ${data.byteLength} bytes, expected ${bytes}.`);
          }
          const padded = new Uint8Array(pad4(bytes));
          padded.set(data);
          writeBuffer(p.gpu, buf, padded);
        };
        if (s.kind === "8bit" && s.state.quantized) {
          const blocks = s.state.absmaxM!.size / 4;
          await load(`${p.key}.state1`, s.state.m, p.numel);
          await load(`${p.key}.state2`, s.state.v, p.numel);
          await load(`${p.key}.absmax1`, s.state.absmaxM!, blocks * 4);
          await load(`${p.key}.absmax2`, s.state.absmaxV!, blocks * 4);
        } else {
          await load(`${p.key}.state1`, s.kind === "8bit" ? s.state.m : s.m, p.numel * 4);
          await load(`${p.key}.state2`, s.kind === "8bit" ? s.state.v : s.v, p.numel * 4);
        }
      }
    } finally {
      file.close();
    }
    this.#step = state.step;
    this.#optimizerSteps = state.optimizerSteps;
    this.#scaler = this.#newScaler();
    this.#scaler.load(state.lossScaler);
    this.#rng = state.rngState >>> 0;
    this.#epoch = state.epoch;
    this.#batchIndex = state.batchIndex;
    this.#plan = state.plan.map((indices) => ({
      indices,
      seqLen: Math.max(...indices.map((i) => this.#train[i].input_ids.length)),
    }));
    for (const d of this.#devices) await d.gpu.sync();
    return state;
  }

  // ------------------------------------------------------------------------------------------
  // The loop

  /** Steps until maxSteps (or a stop request), with metrics.jsonl, evaluations and checkpoints.
   * Ctrl-C (SIGINT) finishes the current step, writes a checkpoint and returns; a second Ctrl-C
   * exits at once. */
  async train(): Promise<{ stopped: boolean; last: StepMetrics | null; lastEval: EvalResult | null }> {
    const c = this.config;
    const log = this.#opts.log ?? (() => {});
    const metricsPath = join(this.runDir, "metrics.jsonl");
    await Deno.mkdir(this.runDir, { recursive: true });
    // A resumed run keeps the metrics of the steps the checkpoint holds and drops later ones.
    const kept = (await readMetrics(metricsPath)).filter((m) => m.step <= this.#step);
    await writeFileAtomic(metricsPath, kept.map((m) => JSON.stringify(m) + "\n").join(""));
    await writeFileAtomic(join(this.runDir, "training_config.json"), configJson(c));
    this.#startedAt = performance.now();
    let onSignal: (() => void) | null = null;
    try {
      onSignal = () => {
        if (this.#stopRequested) {
          log("second Ctrl-C: exiting without a checkpoint.");
          Deno.exit(130);
        }
        this.#stopRequested = true;
        log("Ctrl-C: stopping after this step and writing a checkpoint (Ctrl-C again to quit at once).");
      };
      Deno.addSignalListener("SIGINT", onSignal);
    } catch {
      onSignal = null; // no signals on this platform
    }
    let last: StepMetrics | null = null;
    let lastEval: EvalResult | null = null;
    let savedAt = -1;
    try {
      while (this.#step < c.maxSteps && !this.#stopRequested) {
        const m = await this.trainStep();
        const s = this.#step;
        if ((c.evalEvery > 0 && s % c.evalEvery === 0) || s === c.maxSteps) {
          if (this.#val.length > 0) {
            lastEval = await this.evaluate();
            m.val_loss = lastEval.loss;
            m.val_perplexity = lastEval.perplexity;
          }
        }
        await Deno.writeTextFile(metricsPath, JSON.stringify(m) + "\n", { append: true });
        last = m;
        this.#opts.onStep?.(m);
        if ((c.saveEvery > 0 && s % c.saveEvery === 0) || s === c.maxSteps || this.#stopRequested) {
          const dir = await this.saveCheckpoint();
          savedAt = s;
          log(`checkpoint ${dir}`);
        }
      }
      if (this.#stopRequested && savedAt !== this.#step) {
        const dir = await this.saveCheckpoint();
        log(`checkpoint ${dir}`);
      }
    } finally {
      if (onSignal) Deno.removeSignalListener("SIGINT", onSignal);
    }
    return { stopped: this.#step < c.maxSteps, last, lastEval };
  }

  /** The LoRA weights as a PEFT adapter (adapter_model.safetensors + adapter_config.json) in `dir`. */
  async saveAdapter(dir: string): Promise<void> {
    await saveAdapter(this.model, dir, this.#opts.baseModelName);
  }

  /** Releases the optimizer states and workspaces (not the model). */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const s of this.#states) {
      if (s.kind === "8bit") s.state.destroy();
      else [s.m, s.v].forEach(releaseBuffer);
    }
    for (const d of this.#devices) {
      [d.partials, d.stats].forEach(releaseBuffer);
      d.bindings.destroy();
    }
  }
}
