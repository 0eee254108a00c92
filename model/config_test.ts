import { deepStrictEqual as assertEquals, throws } from "node:assert";
import { LLAMA31_8B, parseLlamaConfig } from "./config.ts";

const HF_8B = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  head_dim: 128,
  vocab_size: 128256,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
  max_position_embeddings: 131072,
  hidden_act: "silu",
  tie_word_embeddings: false,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  torch_dtype: "bfloat16",
  rope_scaling: {
    rope_type: "llama3",
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  },
};

Deno.test("config: Llama-3.1-8B config.json", () => {
  assertEquals(parseLlamaConfig(HF_8B), LLAMA31_8B);
});

Deno.test("config: defaults (head_dim, kv heads, eos as a number, no rope scaling)", () => {
  const c = parseLlamaConfig({
    hidden_size: 128,
    intermediate_size: 256,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    vocab_size: 512,
    eos_token_id: 2,
    tie_word_embeddings: true,
  });
  assertEquals([c.headDim, c.numKvHeads, c.eosTokenIds, c.ropeScaling, c.tieWordEmbeddings], [
    32,
    4,
    [2],
    null,
    true,
  ]);
});

Deno.test("config: errors name the field and value", () => {
  throws(
    () => parseLlamaConfig({ ...HF_8B, num_key_value_heads: 5 }),
    /"num_key_value_heads" 5 does not divide/,
  );
  throws(
    () => parseLlamaConfig({ ...HF_8B, rope_scaling: { rope_type: "yarn", factor: 4 } }),
    /rope_type" is "yarn"/,
  );
  throws(() => parseLlamaConfig({ ...HF_8B, hidden_size: undefined }), /"hidden_size" is missing/);
  throws(() => parseLlamaConfig({ ...HF_8B, eos_token_id: "x" }), /"eos_token_id" is "x"/);
  throws(
    () => parseLlamaConfig({ ...HF_8B, rope_scaling: { ...HF_8B.rope_scaling, factor: -1 } }),
    /rope_scaling.factor/,
  );
});
