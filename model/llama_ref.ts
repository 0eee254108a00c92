// Float64 CPU reference of the Llama-3.1 forward with LoRA, in the Hugging Face convention (FACTS.md):
// the specification the GPU model (model/llama.ts) is checked against in tests and diagnostics. Only
// for tiny shapes (plain loops).
//
// Dimension letters: T tokens, C hidden, H heads, KVH kv heads, D head dim, I intermediate,
// V vocabulary, R LoRA rank.
//
//   x = embed[ids]
//   per layer: h = rmsnorm(x) * w; q, k, v = h W^T + s (h A^T) B^T; rotate-half RoPE of q, k at
//     positions 0..T-1; causal softmax(q k^T / sqrt(D)) v with query head h on kv head
//     floor(h / (H / KVH)); x += o_proj(attn); h = rmsnorm(x) * w'; x += down(silu(gate(h)) * up(h))
//   logits = rmsnorm(x) * w_final lm_head^T

import { nf4DequantRef, nf4QuantizeRef } from "../kernels/nf4/nf4_ref.ts";
import { ropeInvFreq } from "../kernels/rope/rope.ts";
import { loadLlamaConfig } from "./config.ts";
import { MODULE_PATH, moduleShape } from "./llama.ts";
import { loadAdapterConfig } from "./peft.ts";
import { decodeFloats, SafetensorsCheckpoint, type SafetensorsDType } from "./safetensors.ts";
import {
  ALL_LORA_TARGETS,
  type BaseFormat,
  type LlamaConfig,
  type LoraConfig,
  type LoraTarget,
} from "./types.ts";

/** One LoRA factor pair: A [R, in], B [out, R], scaling s. */
export interface RefLora {
  a: Float64Array;
  b: Float64Array;
  R: number;
  scale: number;
}

/** The weights of the reference: every tensor by its HF name, LoRA factor pairs by "l.module". */
export interface RefModel {
  config: LlamaConfig;
  weights: Map<string, Float64Array>;
  lora: Map<string, RefLora>;
}

/** Observes intermediate activations: name (e.g. "l0.attn_norm", "final_norm") and its values. */
export type RefCapture = (name: string, values: Float64Array) => void;

/** Reads a HF folder (config.json, safetensors) and optionally a PEFT adapter folder. */
export async function loadRefModel(dir: string, adapterDir?: string): Promise<RefModel> {
  const config = await loadLlamaConfig(dir);
  const weights = new Map<string, Float64Array>();
  const ckpt = await SafetensorsCheckpoint.open(dir);
  try {
    for (const [name, info] of ckpt.tensors) {
      weights.set(
        name,
        Float64Array.from(decodeFloats(info.dtype as SafetensorsDType, await ckpt.read(name))),
      );
    }
  } finally {
    ckpt.close();
  }
  const lora = new Map<string, RefLora>();
  if (adapterDir) {
    const cfg = await loadAdapterConfig(adapterDir);
    const scale = cfg.useRslora ? cfg.alpha / Math.sqrt(cfg.r) : cfg.alpha / cfg.r;
    const ad = await SafetensorsCheckpoint.open(`${adapterDir}/adapter_model.safetensors`);
    try {
      const read = async (key: string) => {
        const name = ad.has(key) ? key : key.replace(/\.weight$/, ".default.weight");
        const info = ad.info(name);
        return Float64Array.from(decodeFloats(info.dtype as SafetensorsDType, await ad.read(name)));
      };
      for (let l = 0; l < config.numLayers; l++) {
        for (const m of cfg.targets) {
          const key = `base_model.model.model.layers.${l}.${MODULE_PATH[m]}`;
          lora.set(`${l}.${m}`, {
            a: await read(`${key}.lora_A.weight`),
            b: await read(`${key}.lora_B.weight`),
            R: cfg.r,
            scale,
          });
        }
      }
    } finally {
      ad.close();
    }
  }
  return { config, weights, lora };
}

/** y [T, out] = x [T, in] W^T for W [out, in]. */
function matmulNT(x: Float64Array, w: Float64Array, T: number, inDim: number, out: number): Float64Array {
  const y = new Float64Array(T * out);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < out; o++) {
      let s = 0;
      for (let i = 0; i < inDim; i++) s += x[t * inDim + i] * w[o * inDim + i];
      y[t * out + o] = s;
    }
  }
  return y;
}

function rmsnormRef(x: Float64Array, w: Float64Array, T: number, C: number, eps: number): Float64Array {
  const y = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[t * C + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) y[t * C + c] = x[t * C + c] * r * w[c];
  }
  return y;
}

function weight(model: RefModel, name: string): Float64Array {
  const w = model.weights.get(name);
  if (!w) throw new Error(`llama_ref: the checkpoint has no tensor "${name}"`);
  return w;
}

/** Logits f64 [T, V] of `ids` at positions 0..T-1; `capture` sees the intermediate activations. */
export function llamaRefForward(model: RefModel, ids: ArrayLike<number>, capture?: RefCapture): Float64Array {
  const cfg = model.config;
  const { hiddenSize: C, numHeads: H, numKvHeads: KVH, headDim: D, vocabSize: V, rmsNormEps: eps } = cfg;
  const T = ids.length;
  const see = capture ?? (() => {});
  const embed = weight(model, "model.embed_tokens.weight");
  let x = new Float64Array(T * C);
  for (let t = 0; t < T; t++) x.set(embed.subarray(ids[t] * C, (ids[t] + 1) * C), t * C);
  see("x0", x);
  const invFreq = ropeInvFreq(D, cfg.ropeTheta, cfg.ropeScaling ?? undefined);
  const rope = (v: Float64Array, heads: number) => {
    const half = D / 2;
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < heads; h++) {
        const base = (t * heads + h) * D;
        for (let i = 0; i < half; i++) {
          const a = t * invFreq[i];
          const c = Math.cos(a);
          const s = Math.sin(a);
          const x0 = v[base + i];
          const x1 = v[base + i + half];
          v[base + i] = x0 * c - x1 * s;
          v[base + i + half] = x1 * c + x0 * s;
        }
      }
    }
  };
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    const lin = (m: LoraTarget, h: Float64Array) => {
      const [out, inDim] = moduleShape(cfg, m);
      const y = matmulNT(h, weight(model, `${p}.${MODULE_PATH[m]}.weight`), T, inDim, out);
      const ad = model.lora.get(`${l}.${m}`);
      if (ad) {
        const xa = matmulNT(h, ad.a, T, inDim, ad.R);
        const d = matmulNT(xa, ad.b, T, ad.R, out);
        for (let i = 0; i < y.length; i++) y[i] += ad.scale * d[i];
      }
      return y;
    };
    const h = rmsnormRef(x, weight(model, `${p}.input_layernorm.weight`), T, C, eps);
    see(`l${l}.attn_norm`, h);
    const q = lin("q_proj", h);
    const k = lin("k_proj", h);
    const v = lin("v_proj", h);
    see(`l${l}.q`, q);
    see(`l${l}.k`, k);
    see(`l${l}.v`, v);
    rope(q, H);
    rope(k, KVH);
    see(`l${l}.q_rope`, q);
    see(`l${l}.k_rope`, k);
    const o = new Float64Array(T * H * D);
    const scale = 1 / Math.sqrt(D);
    const group = H / KVH;
    const sc = new Float64Array(T);
    for (let hq = 0; hq < H; hq++) {
      const hk = Math.floor(hq / group);
      for (let i = 0; i < T; i++) {
        let max = -Infinity;
        for (let j = 0; j <= i; j++) {
          let s = 0;
          for (let d = 0; d < D; d++) s += q[(i * H + hq) * D + d] * k[(j * KVH + hk) * D + d];
          sc[j] = s * scale;
          max = Math.max(max, sc[j]);
        }
        let sum = 0;
        for (let j = 0; j <= i; j++) sum += sc[j] = Math.exp(sc[j] - max);
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = 0; j <= i; j++) acc += sc[j] * v[(j * KVH + hk) * D + d];
          o[(i * H + hq) * D + d] = acc / sum;
        }
      }
    }
    see(`l${l}.attn`, o);
    const ao = lin("o_proj", o);
    see(`l${l}.o`, ao);
    const x2 = x.map((e, i) => e + ao[i]);
    see(`l${l}.resid1`, x2);
    const h2 = rmsnormRef(x2, weight(model, `${p}.post_attention_layernorm.weight`), T, C, eps);
    see(`l${l}.mlp_norm`, h2);
    const g = lin("gate_proj", h2);
    const u = lin("up_proj", h2);
    see(`l${l}.gate`, g);
    see(`l${l}.up`, u);
    const sw = g.map((e, i) => (e / (1 + Math.exp(-e))) * u[i]);
    see(`l${l}.swiglu`, sw);
    const dn = lin("down_proj", sw);
    see(`l${l}.down`, dn);
    x = x2.map((e, i) => e + dn[i]);
    see(`l${l}.resid2`, x);
  }
  const normed = rmsnormRef(x, weight(model, "model.norm.weight"), T, C, eps);
  see("final_norm", normed);
  const head = model.weights.get("lm_head.weight") ??
    (cfg.tieWordEmbeddings ? embed : weight(model, "lm_head.weight"));
  return matmulNT(normed, head, T, C, V);
}

/** Per-position NLL [T - 1] of the HF shifted loss: position t predicts labels[t + 1]; NaN where ignored. */
export function refTokenNll(logits: ArrayLike<number>, labels: ArrayLike<number>, V: number): Float64Array {
  const out = new Float64Array(labels.length - 1).fill(NaN);
  for (let t = 0; t + 1 < labels.length; t++) {
    const y = labels[t + 1];
    if (y === -100) continue;
    let max = -Infinity;
    for (let j = 0; j < V; j++) max = Math.max(max, logits[t * V + j]);
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(logits[t * V + j] - max);
    out[t] = max + Math.log(s) - logits[t * V + y];
  }
  return out;
}

/** The LoRA modules a reference model carries, for diagnostics. */
export function refLoraTargets(model: RefModel): LoraTarget[] {
  return ALL_LORA_TARGETS.filter((m) => model.lora.has(`0.${m}`));
}

/** Every intermediate activation of the reference forward by name (see llamaRefForward), plus "logits". */
export function refActivations(model: RefModel, ids: ArrayLike<number>): Map<string, Float64Array> {
  const out = new Map<string, Float64Array>();
  out.set("logits", llamaRefForward(model, ids, (name, values) => out.set(name, values.slice())));
  return out;
}

/** Relative L2 error of each activation the engine reported against the reference, in forward order;
 * `first` is the first one above `limit` (where the two forwards part), if any. */
export function compareActivations(
  got: Map<string, ArrayLike<number>>,
  ref: Map<string, Float64Array>,
  limit: number,
): { rows: { name: string; error: number }[]; first?: string } {
  const rows: { name: string; error: number }[] = [];
  let first: string | undefined;
  for (const [name, expected] of ref) {
    const actual = got.get(name);
    if (!actual) continue;
    let num = 0;
    let den = 0;
    for (let i = 0; i < expected.length; i++) {
      num += (actual[i] - expected[i]) ** 2;
      den += expected[i] ** 2;
    }
    const error = Math.sqrt(num / (den || 1));
    rows.push({ name, error });
    if (first === undefined && !(error <= limit)) first = name;
  }
  return { rows, first };
}

/** The reference with the base weights the engine computes with: every tensor rounded to f16 (how the
 * engine stores embeddings, norms, lm_head and f16 linear weights) and, for an NF4 base, each linear
 * weight quantized to NF4 from its stored values and dequantized to f16 as the NF4 matmul stages it.
 * LoRA factors are shared with `model`. */
export function withEngineBase(model: RefModel, baseFormat: BaseFormat): RefModel {
  const linear = new Set<string>();
  for (let l = 0; l < model.config.numLayers; l++) {
    for (const m of ALL_LORA_TARGETS) linear.add(`model.layers.${l}.${MODULE_PATH[m]}.weight`);
  }
  const weights = new Map<string, Float64Array>();
  for (const [name, w] of model.weights) {
    if (baseFormat === "nf4" && linear.has(name)) {
      const m = ALL_LORA_TARGETS.find((t) => name.endsWith(`${MODULE_PATH[t]}.weight`))!;
      const [out, inDim] = moduleShape(model.config, m);
      weights.set(name, nf4DequantRef(nf4QuantizeRef(Float32Array.from(w), out, inDim)));
    } else {
      weights.set(name, Float64Array.from(Float16Array.from(w)));
    }
  }
  return { config: model.config, weights, lora: model.lora };
}

/** Sets the reference's LoRA factors from PEFT-keyed values (e.g. the engine's f32 masters); every
 * factor pair of `lora.targets` in every layer must be given. */
export function setRefLora(
  model: RefModel,
  lora: LoraConfig,
  factors: Map<string, ArrayLike<number>>,
): void {
  const scale = lora.useRslora ? lora.alpha / Math.sqrt(lora.r) : lora.alpha / lora.r;
  model.lora.clear();
  for (let l = 0; l < model.config.numLayers; l++) {
    for (const m of lora.targets) {
      const key = `base_model.model.model.layers.${l}.${MODULE_PATH[m]}`;
      const get = (f: "A" | "B") => {
        const v = factors.get(`${key}.lora_${f}.weight`);
        if (!v) throw new Error(`setRefLora: no values for "${key}.lora_${f}.weight"`);
        return Float64Array.from(v);
      };
      model.lora.set(`${l}.${m}`, { a: get("A"), b: get("B"), R: lora.r, scale });
    }
  }
}

/** Sum of the HF shifted NLL over the labelled positions (the engine's LossSum.nll), in float64. */
export function refNllSum(model: RefModel, ids: ArrayLike<number>, labels: ArrayLike<number>): number {
  let sum = 0;
  for (const x of refTokenNll(llamaRefForward(model, ids), labels, model.config.vocabSize)) {
    if (!Number.isNaN(x)) sum += x;
  }
  return sum;
}
