// config.json of a Hugging Face Llama checkpoint -> LlamaConfig, validated with errors that name the
// field, its value and what is expected.

import type { LlamaConfig } from "./types.ts";

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Parses a config.json object; `source` names the file in errors. */
export function parseLlamaConfig(raw: unknown, source = "config.json"): LlamaConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`${source}: expected a JSON object`);
  }
  const c = raw as Record<string, unknown>;
  const fail = (field: string, msg: string): never => {
    throw new ConfigError(`${source}: "${field}" ${msg}`);
  };
  const int = (field: string, fallback?: number): number => {
    const v = c[field] ?? fallback;
    if (v === undefined) fail(field, "is missing");
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      fail(field, `is ${JSON.stringify(v)}; expected a positive integer`);
    }
    return v as number;
  };
  const num = (field: string, fallback?: number): number => {
    const v = c[field] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      fail(field, `is ${JSON.stringify(v)}; expected a positive number`);
    }
    return v as number;
  };
  if (c.model_type !== undefined && c.model_type !== "llama") {
    fail("model_type", `is ${JSON.stringify(c.model_type)}; only "llama" is supported`);
  }
  if (c.hidden_act !== undefined && c.hidden_act !== "silu") {
    fail("hidden_act", `is ${JSON.stringify(c.hidden_act)}; Llama uses "silu"`);
  }
  for (const f of ["attention_bias", "mlp_bias"]) {
    if (c[f] === true) fail(f, "is true; biases are not supported (Llama-3.1 has none)");
  }
  const hiddenSize = int("hidden_size");
  const numHeads = int("num_attention_heads");
  const numKvHeads = int("num_key_value_heads", numHeads);
  if (hiddenSize % numHeads !== 0 && c.head_dim === undefined) {
    fail("hidden_size", `${hiddenSize} is not a multiple of num_attention_heads ${numHeads}; set head_dim`);
  }
  const headDim = int("head_dim", hiddenSize / numHeads);
  if (numHeads % numKvHeads !== 0) {
    fail(
      "num_key_value_heads",
      `${numKvHeads} does not divide num_attention_heads ${numHeads} (grouped-query attention needs it)`,
    );
  }
  // RoPE: transformers < 5 writes "rope_theta" and "rope_scaling" at the top level; transformers >= 5
  // writes one "rope_parameters" object holding rope_type, rope_theta and the scaling fields.
  const ropeScalingOf = (r: Record<string, unknown>, field: string): LlamaConfig["ropeScaling"] => {
    const type = r.rope_type ?? r.type;
    if (type === "default" || (type === undefined && field === "rope_parameters")) return null;
    if (type !== "llama3") {
      fail(`${field}.rope_type`, `is ${JSON.stringify(type)}; only "llama3" (or "default") is supported`);
    }
    const n = (k: string): number => {
      const v = r[k];
      if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
        fail(`${field}.${k}`, `is ${JSON.stringify(v)}; expected a positive number`);
      }
      return v as number;
    };
    const scaling = {
      factor: n("factor"),
      lowFreqFactor: n("low_freq_factor"),
      highFreqFactor: n("high_freq_factor"),
      originalMaxPositionEmbeddings: n("original_max_position_embeddings"),
    };
    if (scaling.highFreqFactor <= scaling.lowFreqFactor) {
      fail(`${field}.high_freq_factor`, "must be larger than low_freq_factor");
    }
    return scaling;
  };
  const objectField = (field: string): Record<string, unknown> | undefined => {
    const v = c[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "object" || Array.isArray(v)) {
      fail(field, `is ${JSON.stringify(v)}; expected an object or null`);
    }
    return v as Record<string, unknown>;
  };
  let ropeScaling: LlamaConfig["ropeScaling"] = null;
  let ropeTheta = num("rope_theta", 10000);
  const rs = objectField("rope_scaling");
  if (rs) ropeScaling = ropeScalingOf(rs, "rope_scaling");
  const rp = objectField("rope_parameters");
  if (rp) {
    if (rp.rope_type === undefined && rp.type === undefined && rp.rope_theta === undefined) {
      fail(
        "rope_parameters",
        `is ${
          JSON.stringify(rp)
        }; expected one object with rope_type and rope_theta (per-layer-type RoPE is not supported)`,
      );
    }
    const scaling = ropeScalingOf(rp, "rope_parameters");
    let theta = ropeTheta;
    if (rp.rope_theta !== undefined) {
      if (typeof rp.rope_theta !== "number" || !Number.isFinite(rp.rope_theta) || rp.rope_theta <= 0) {
        fail("rope_parameters.rope_theta", `is ${JSON.stringify(rp.rope_theta)}; expected a positive number`);
      }
      theta = rp.rope_theta as number;
      if (c.rope_theta !== undefined && c.rope_theta !== theta) {
        fail("rope_theta", `is ${c.rope_theta} but rope_parameters.rope_theta is ${theta}; they must agree`);
      }
    }
    if (rs && JSON.stringify(scaling) !== JSON.stringify(ropeScaling)) {
      fail(
        "rope_scaling",
        `is ${JSON.stringify(rs)} but rope_parameters is ${
          JSON.stringify(rp)
        }; they must describe the same RoPE`,
      );
    }
    ropeScaling = scaling;
    ropeTheta = theta;
  }
  const eos = c.eos_token_id;
  let eosTokenIds: number[];
  if (typeof eos === "number") eosTokenIds = [eos];
  else if (Array.isArray(eos) && eos.length > 0 && eos.every((e) => Number.isInteger(e) && e >= 0)) {
    eosTokenIds = eos as number[];
  } else if (eos === undefined || eos === null) eosTokenIds = [];
  else fail("eos_token_id", `is ${JSON.stringify(eos)}; expected a token id or a list of them`);
  const bos = c.bos_token_id ?? 0;
  if (!Number.isInteger(bos) || (bos as number) < 0) fail("bos_token_id", `is ${JSON.stringify(bos)}`);
  const tie = c.tie_word_embeddings ?? false;
  if (typeof tie !== "boolean") {
    fail("tie_word_embeddings", `is ${JSON.stringify(tie)}; expected true or false`);
  }
  const cfg: LlamaConfig = {
    hiddenSize,
    intermediateSize: int("intermediate_size"),
    numLayers: int("num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int("vocab_size"),
    rmsNormEps: num("rms_norm_eps", 1e-6),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: int("max_position_embeddings", 2048),
    tieWordEmbeddings: tie as boolean,
    bosTokenId: bos as number,
    eosTokenIds: eosTokenIds!,
  };
  validateLlamaConfig(cfg, source);
  return cfg;
}

/** Checks what the kernels need of a config (also for configs built in code). */
export function validateLlamaConfig(cfg: LlamaConfig, source = "config"): void {
  const fail = (msg: string): never => {
    throw new ConfigError(`${source}: ${msg}`);
  };
  if (cfg.numHeads % cfg.numKvHeads !== 0) {
    fail(`num_key_value_heads ${cfg.numKvHeads} must divide num_attention_heads ${cfg.numHeads}`);
  }
  if (cfg.headDim % 8 !== 0 || cfg.headDim > 128) {
    fail(`head_dim ${cfg.headDim} must be a multiple of 8 and at most 128 (flash attention kernels)`);
  }
  if (cfg.hiddenSize % 4 !== 0) {
    fail(`hidden_size ${cfg.hiddenSize} must be a multiple of 4 (RMSNorm kernels)`);
  }
  for (const id of [cfg.bosTokenId, ...cfg.eosTokenIds]) {
    if (id >= cfg.vocabSize) fail(`special token id ${id} is outside vocab_size ${cfg.vocabSize}`);
  }
}

/** Reads and parses `<dir>/config.json`. */
export async function loadLlamaConfig(dir: string): Promise<LlamaConfig> {
  const path = `${dir}/config.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new ConfigError(`${path}: cannot read (${(e as Error).message})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseLlamaConfig(raw, path);
}

/** Llama-3.1-8B's shape (FACTS.md). */
export const LLAMA31_8B: LlamaConfig = {
  hiddenSize: 4096,
  intermediateSize: 14336,
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 8,
  headDim: 128,
  vocabSize: 128256,
  rmsNormEps: 1e-5,
  ropeTheta: 500000,
  ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
  maxPositionEmbeddings: 131072,
  tieWordEmbeddings: false,
  bosTokenId: 128000,
  eosTokenIds: [128001, 128008, 128009],
};
