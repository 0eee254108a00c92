// Predicted GPU bytes of one training step of model/llama.ts on one device, from the shapes alone:
// resident weights, LoRA (f32 masters and gradients, f16 copies), optimizer state, and the peak of
// the step (all block inputs kept by the recomputation checkpoints, plus the larger of the head's
// cross-entropy workspace and one block's recomputed activations with their gradients, and the
// matmul launcher's split-K workspace where LoRA's rank-R products split, and the NF4 launcher's
// f16 slice workspace on tensor cores).

import { nf4Counts } from "../kernels/nf4/nf4_ref.ts";
import { CROSS_ENTROPY_DEFAULT_CHUNK } from "../kernels/cross_entropy/cross_entropy.ts";
import { matmulSplitK, SPLIT_K_WORKSPACE_BYTES } from "../kernels/matmul/matmul.ts";
import { NF4_SLICE_WORKSPACE_BYTES } from "../kernels/nf4/nf4.ts";
import { moduleShape } from "./llama.ts";
import { ALL_LORA_TARGETS, type BaseFormat, type LlamaConfig, type LoraTarget } from "./types.ts";

export interface MemoryPlanInput {
  config: LlamaConfig;
  T: number;
  r: number;
  targets: readonly LoraTarget[];
  baseFormat: BaseFormat;
  /** Optimizer bytes per trainable parameter: 8 for AdamW f32 (m, v), about 2 for AdamW 8-bit. */
  optimizerBytesPerParam?: number;
  ceChunk?: number;
  /** Whether the products run on tensor cores (hasTensorCores): NF4 ones then use a workspace. */
  tensorCores?: boolean;
}

export interface MemoryPlan {
  weights: number;
  lora: number;
  optimizer: number;
  /** Block inputs kept for the recomputation. */
  checkpoints: number;
  /** Peak transient bytes of the step beyond the checkpoints. */
  transient: number;
  peak: number;
  loraParams: number;
}

const pad = (b: number) => Math.max(4, Math.ceil(b / 4) * 4);

export function planMemory(p: MemoryPlanInput): MemoryPlan {
  const cfg = p.config;
  const { hiddenSize: C, intermediateSize: I, numHeads: H, numKvHeads: KVH, headDim: D, vocabSize: V } = cfg;
  const L = cfg.numLayers;
  const T = p.T;
  const R = p.r;
  let weights = pad(V * C * 2) * (cfg.tieWordEmbeddings ? 1 : 2) + (2 * L + 1) * pad(C * 2) + pad(D * 2);
  let lora = 0;
  let loraParams = 0;
  let splits = false;
  for (const m of ALL_LORA_TARGETS) {
    const [out, inDim] = moduleShape(cfg, m);
    if (p.targets.includes(m)) {
      // U = X A^T, dU = dY B, dB = dY^T U, dA = dU^T X, on either matmul variant.
      const products = [[T, R, inDim], [T, R, out], [out, R, T], [R, inDim, T]];
      for (const v of ["tiled", "subgroup_matrix"] as const) {
        for (const [M, N, K] of products) splits ||= matmulSplitK(M, N, K, v).S > 1;
      }
    }
    if (p.baseFormat === "f16") weights += L * pad(out * inDim * 2);
    else {
      const { n, blocks, nested } = nf4Counts(out, inDim);
      weights += L * (Math.ceil(n / 8) * 4 + Math.ceil(blocks / 4) * 4 + (1 + nested) * 4 + 1024);
    }
    if (p.targets.includes(m)) {
      const a = R * inDim;
      const b = out * R;
      loraParams += L * (a + b);
      lora += L * (2 * pad(a * 4) + 2 * pad(b * 4) + pad(a * 2) + pad(b * 2));
    }
  }
  const optimizer = Math.round(loraParams * (p.optimizerBytesPerParam ?? 8));
  const checkpoints = L * T * C * 2;
  // One block on the recording tape: f16 tensors (each later with an f16 gradient) and f32 stats.
  const f16 = T * (C /* attn norm */ + H * D + 2 * KVH * D /* q k v */ + H * D + KVH * D /* ropes */ +
    H * D /* attention */ + 3 * C /* o, resid1, mlp norm */ + 3 * I /* gate up swiglu */ +
    2 * C /* down, resid2 */) *
    2;
  const loraU = p.targets.length * T * R * 2;
  const stats = 2 * T * 4 + H * T * 4;
  const scratch = p.targets.length * T * R * 2 + H * T * 4;
  const block = 2 * f16 + loraU + stats + scratch + T * C * 2 /* dx of the input */;
  const chunk = p.ceChunk ?? Math.min(CROSS_ENTROPY_DEFAULT_CHUNK, Math.ceil(V / 128) * 128);
  const head = T * C * 2 * 4 /* output, normed, its grad, dx */ + T * chunk * 6 + T * 16 + T * 8 + T * C * 4 +
    T * 4 + 8;
  // NF4 products on tensor cores dequantize weight slices into a workspace.
  const slices = p.baseFormat === "nf4" && (p.tensorCores ?? false);
  const transient = Math.max(block, head) + T * 4 * 2 /* positions, labels */ +
    (splits ? SPLIT_K_WORKSPACE_BYTES : 0) + (slices ? NF4_SLICE_WORKSPACE_BYTES : 0);
  return {
    weights,
    lora,
    optimizer,
    checkpoints,
    transient,
    peak: weights + lora + optimizer + checkpoints + transient,
    loraParams,
  };
}

export function formatMemoryPlan(plan: MemoryPlan): string {
  const gb = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
  return `predicted peak ${gb(plan.peak)}: weights ${gb(plan.weights)}, LoRA ${gb(plan.lora)} ` +
    `(${plan.loraParams.toLocaleString("en")} params), optimizer ${gb(plan.optimizer)}, ` +
    `checkpoints ${gb(plan.checkpoints)}, step transient ${gb(plan.transient)}`;
}
