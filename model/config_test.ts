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

Deno.test("config: transformers >= 5 layout (rope_parameters holds rope_theta and the llama3 scaling)", () => {
  const { rope_theta: _theta, rope_scaling, ...rest } = HF_8B;
  const v5 = { ...rest, rope_parameters: { ...rope_scaling, rope_theta: 500000 } };
  assertEquals(parseLlamaConfig(v5), LLAMA31_8B);
  // Both layouts at once must agree.
  assertEquals(parseLlamaConfig({ ...HF_8B, rope_parameters: v5.rope_parameters }), LLAMA31_8B);
  const plain = parseLlamaConfig({ ...rest, rope_parameters: { rope_type: "default", rope_theta: 10000 } });
  assertEquals([plain.ropeTheta, plain.ropeScaling], [10000, null]);
  throws(
    () => parseLlamaConfig({ ...v5, rope_theta: 10000 }),
    /"rope_theta" is 10000 but rope_parameters.rope_theta is 500000/,
  );
  throws(
    () => parseLlamaConfig({ ...HF_8B, rope_parameters: { ...v5.rope_parameters, factor: 4 } }),
    /"rope_scaling" .* they must describe the same RoPE/,
  );
  throws(
    () => parseLlamaConfig({ ...rest, rope_parameters: { ...v5.rope_parameters, rope_type: "yarn" } }),
    /rope_parameters.rope_type" is "yarn"/,
  );
  throws(
    () => parseLlamaConfig({ ...rest, rope_parameters: { full_attention: v5.rope_parameters } }),
    /per-layer-type RoPE is not supported/,
  );
});

Deno.test("config: the golden fixture's config.json (written by transformers 5) keeps its llama3 RoPE", async () => {
  const raw = JSON.parse(
    await Deno.readTextFile(new URL("testdata/tiny_llama/config.json", import.meta.url)),
  );
  const c = parseLlamaConfig(raw);
  assertEquals([c.ropeTheta, c.ropeScaling], [500000, {
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  }]);
});
