// Generation with the KV cache against the full forward: greedy tokens and logits equal those of
// Llama.logits on the growing sequence; merged LoRA against unmerged; prefix reuse; the stop rules;
// UTF-8-safe streaming of decoded text.

import { ok as assert, rejects } from "node:assert";
import { gpuTest, relativeError, Rng } from "../engine/testing.ts";
import type { Gpu } from "../engine/gpu.ts";
import { LlamaTokenizer } from "../data/tokenizer.ts";
import { Llama, moduleShape, type WeightSource } from "./llama.ts";
import { generateIds, KvCacheModel, resolvedSettings, TextStreamer } from "./generate.ts";
import { argmax } from "./sampling.ts";
import { profileGpu } from "../engine/profile.ts";
import { BUNDLED_TOKENIZER } from "./train_run.ts";
import { ALL_LORA_TARGETS, type BaseFormat, type LlamaConfig, type LoraConfig, NO_LORA } from "./types.ts";

export const GEN_TINY: LlamaConfig = {
  hiddenSize: 64,
  intermediateSize: 128,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 16,
  vocabSize: 256,
  rmsNormEps: 1e-5,
  ropeTheta: 500000,
  ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
  maxPositionEmbeddings: 1024,
  tieWordEmbeddings: false,
  bosTokenId: 1,
  eosTokenIds: [2],
};

const LORA: LoraConfig = { r: 4, alpha: 8, dropout: 0.1, targets: [...ALL_LORA_TARGETS], useRslora: false };

/** Gaussian weights with well-separated logits (embeddings std 0.5, linears 1/sqrt(in)). */
export function normalSource(seed: number): WeightSource {
  const rng = new Rng(seed);
  const std = (name: string, shape: number[]): [number, number] => {
    if (name.endsWith("norm.weight")) return [0.1, 1];
    if (name.includes("embed_tokens")) return [0.5, 0];
    return [1 / Math.sqrt(shape[1]), 0];
  };
  return {
    has: () => true,
    read(name, shape) {
      const n = shape.reduce((a, b) => a * b, 1);
      const [s, c] = std(name, shape);
      const v = new Float32Array(n);
      for (let i = 0; i < n; i++) v[i] = c + s * rng.normal();
      return Promise.resolve({ dtype: "F32", bytes: new Uint8Array(v.buffer) });
    },
  };
}

/** A tiny model whose LoRA B factors are random too (so the adapter changes the output). */
export async function tinyModel(
  gpu: Parameters<typeof Llama.build>[2]["gpus"],
  cfg: LlamaConfig,
  baseFormat: BaseFormat,
  seed = 5,
  lora: LoraConfig = LORA,
): Promise<Llama> {
  const model = await Llama.build(cfg, normalSource(seed), { gpus: gpu, lora, baseFormat, seed });
  const rng = new Rng(seed + 1);
  for (const p of model.parameters()) {
    if (!p.key.includes("lora_B")) continue;
    const m = ALL_LORA_TARGETS.find((t) => p.key.includes(t))!;
    const [out] = moduleShape(cfg, m);
    const v = new Float32Array(out * LORA.r);
    for (let i = 0; i < v.length; i++) v[i] = 0.3 * rng.normal();
    model.setParameter(p.key, v);
  }
  return model;
}

function lastRow(logits: Float32Array, V: number): Float32Array {
  return logits.subarray(logits.length - V);
}

/** Shapes where q, k and v take one fused product in a decode step (each weight's NF4 blocks a
 * multiple of 256). */
const GEN_QKV: LlamaConfig = { ...GEN_TINY, hiddenSize: 256, intermediateSize: 512, headDim: 64 };

for (const [name, cfg, perLayer] of [["", GEN_TINY, 11], [", q, k and v fused", GEN_QKV, 9]] as const) {
  await gpuTest(
    `generate: greedy with the KV cache equals the full forward (NF4 base + LoRA${name})`,
    async (gpu) => {
      await greedyMatchesFullForward(gpu, cfg, perLayer);
    },
  );
}

// Without an adapter the fused q, k, v and gate, up passes read the RMSNorm of the residual stream
// themselves (from the weighted copy that the o and down products write): q, k, v, attention, o,
// gate + up + SwiGLU and down are a layer's 5 dispatches, and the first layer's attention norm one
// more (no product writes the embedding).
await gpuTest(
  "generate: greedy with the KV cache equals the full forward (NF4 base, norms folded)",
  async (gpu) => {
    await greedyMatchesFullForward(gpu, GEN_QKV, 5, NO_LORA, 1);
  },
);

/** Greedy decoding and every position's logits against the full forward; a greedy decode step
 * encodes perLayer dispatches per layer on the matvec path (with one attention pass), plus 5 (the
 * embedding, the final norm, the head and the argmax's two passes) and `extra`. */
async function greedyMatchesFullForward(
  gpu: Gpu,
  cfg: LlamaConfig,
  perLayer: number,
  lora: LoraConfig = LORA,
  extra = 0,
): Promise<void> {
  const V = cfg.vocabSize;
  const model = await tinyModel(gpu, cfg, "nf4", 5, lora);
  const kv = await KvCacheModel.create(model, { maxTokens: 64 });
  try {
    const prompt = [1, 17, 99, 4, 200, 31, 77, 5, 12, 250, 8];
    const steps: Float32Array[] = [];
    const r = await generateIds(kv, prompt, { maxNewTokens: 8 }, [], undefined);
    assert(r.ids.length === 8 && r.stopReason === "max_new_tokens", JSON.stringify(r));
    const t = kv.decodeTimes;
    const want1 = cfg.numLayers * perLayer + 5 + extra;
    assert(
      t.dispatches === t.steps * want1,
      `${t.dispatches / t.steps} dispatches per step, expected ${want1}`,
    );
    // The full forward on the growing sequence, argmax of the last position.
    const seq = [...prompt];
    const want: number[] = [];
    for (let i = 0; i < 8; i++) {
      const full = lastRow(await model.logits(Int32Array.from(seq)), V);
      want.push(argmax(full));
      seq.push(want.at(-1)!);
      steps.push(full);
    }
    assert(
      r.ids.every((id, i) => id === want[i]),
      `cached greedy ${r.ids} differs from the full forward's ${want}`,
    );
    // Logits of every cached position against the full forward's (prefill, then decode steps).
    kv.reset();
    let got = await kv.prefill(prompt);
    for (let i = 0; i < 8; i++) {
      const err = relativeError(got, steps[i]);
      assert(err < 1e-2, `step ${i}: cached logits differ from the full forward's by ${err}`);
      got = await kv.step(r.ids[i]);
    }
    // Prefix reuse: extending the cache to a longer sequence feeds only the new tokens.
    const longer = [...prompt, ...r.ids.slice(0, 3), 42, 43];
    const ext = await kv.extend(longer);
    const full = lastRow(await model.logits(Int32Array.from(longer)), V);
    const err = relativeError(ext, full);
    assert(err < 1e-2, `extend: logits differ from the full forward's by ${err}`);
    assert(kv.length === longer.length, `cache holds ${kv.length} tokens, expected ${longer.length}`);
  } finally {
    kv.destroy();
    model.destroy();
  }
}

await gpuTest(
  "generate: greedy with the argmax on the GPU equals step-by-step greedy; a stop drops the queued steps",
  async (gpu) => {
    const model = await tinyModel(gpu, GEN_TINY, "nf4", 17);
    const kv = await KvCacheModel.create(model, { maxTokens: 40 });
    try {
      assert(kv.pipelinesGreedy, "one device: greedy decoding should pipeline");
      const prompt = [1, 9, 80, 81, 82, 3];
      // Step by step: the host chooses every token from the logits.
      const want = [argmax(await kv.prefill(prompt))];
      const logits: Float32Array[] = [];
      for (let i = 0; i < 10; i++) {
        logits.push(await kv.step(want.at(-1)!));
        want.push(argmax(logits.at(-1)!));
      }
      // Pipelined, all ten steps.
      let got: number[] = [];
      await kv.prefill(prompt);
      let stopped = await kv.decodeGreedy(want[0], 10, (id) => (got.push(id), true));
      assert(
        !stopped && got.join() === want.slice(1).join(),
        `pipelined ${got}, step by step ${want.slice(1)}`,
      );
      assert(kv.tokens.join() === [...prompt, ...want.slice(0, 10)].join(), `cache holds ${kv.tokens}`);
      // Stopped at the fourth token: steps queued after it are dropped, and the cache holds exactly the
      // inputs of the steps before, so the next step's logits equal the step-by-step ones.
      got = [];
      await kv.prefill(prompt);
      stopped = await kv.decodeGreedy(want[0], 10, (id) => got.length < 3 && (got.push(id), true));
      assert(stopped && got.join() === want.slice(1, 4).join(), `stopped run gave ${got}`);
      assert(
        kv.tokens.join() === [...prompt, ...want.slice(0, 4)].join(),
        `after the stop the cache holds ${kv.tokens}`,
      );
      const next = await kv.step(want[4]);
      assert(relativeError(next, logits[4]) === 0, "the step after a stop differs from step-by-step");
      // No steps: nothing cached, nothing accepted.
      await kv.prefill(prompt);
      assert(!(await kv.decodeGreedy(want[0], 0, () => true)) && kv.length === prompt.length);
      await rejects(() => kv.decodeGreedy(want[0], 35, () => true), /exceed the KV cache of 40/);
    } finally {
      kv.destroy();
      model.destroy();
    }
  },
);

await gpuTest(
  "generate: replayed decode steps equal steps encoded by the launchers, across a chunk of the cache",
  async (gpu) => {
    const model = await tinyModel(gpu, GEN_QKV, "nf4", 23);
    const replayed = await KvCacheModel.create(model, { maxTokens: 160 });
    const encoded = await KvCacheModel.create(model, { maxTokens: 160, replaySteps: false });
    try {
      // 120 prompt tokens, then steps at positions 120 .. 139: attention spans one chunk of 128
      // cached rows, then two (a second recording), so replays run at positions that differ from
      // the recorded ones and on both kinds.
      const rng = new Rng(3);
      const prompt = Array.from({ length: 120 }, () => 3 + Math.floor(rng.next() * 250));
      let a = await replayed.prefill(prompt);
      let b = await encoded.prefill(prompt);
      for (let i = 0; i < 20; i++) {
        assert(relativeError(a, b) === 0, `step ${i}: replayed logits differ from the launchers'`);
        const id = argmax(b);
        [a, b] = [await replayed.step(id), await encoded.step(id)];
      }
      assert(relativeError(a, b) === 0, "last step: replayed logits differ from the launchers'");
      const t = replayed.decodeTimes;
      assert(t.steps === 20 && t.replayed === 18, `${t.replayed} of ${t.steps} steps replayed, expected 18`);
      assert(encoded.decodeTimes.replayed === 0, "replaySteps: false still replayed");
      // Greedy with the argmax on the GPU: its own recordings, the readback slot outside them.
      const first = argmax(await replayed.prefill(prompt));
      await encoded.prefill(prompt);
      const got: number[] = [];
      const want: number[] = [];
      await replayed.decodeGreedy(first, 12, (id) => (got.push(id), true));
      await encoded.decodeGreedy(first, 12, (id) => (want.push(id), true));
      assert(got.join() === want.join(), `replayed greedy ${got}, launchers ${want}`);
      assert(replayed.tokens.join() === encoded.tokens.join(), "the caches hold different tokens");
    } finally {
      replayed.destroy();
      encoded.destroy();
      model.destroy();
    }
  },
);

await gpuTest("generate: merged LoRA (f16 base) matches unmerged; stop token and full cache", async (gpu) => {
  const cfg = GEN_TINY;
  const model = await tinyModel(gpu, cfg, "f16", 9);
  const plain = await KvCacheModel.create(model, { maxTokens: 16 });
  const merged = await KvCacheModel.create(model, { maxTokens: 16, merge: true });
  try {
    assert(merged.merged && !plain.merged);
    const prompt = [1, 3, 5, 7, 11, 13];
    const a = await plain.prefill(prompt);
    const b = await merged.prefill(prompt);
    assert(relativeError(b, a) < 2e-2, `merged prefill logits differ by ${relativeError(b, a)}`);
    const a2 = await plain.step(argmax(a));
    const b2 = await merged.step(argmax(a));
    assert(relativeError(b2, a2) < 2e-2, `merged decode logits differ by ${relativeError(b2, a2)}`);

    // A stop token ends the generation and is not part of the output.
    const greedy = await generateIds(plain, prompt, { maxNewTokens: 5 }, []);
    const stop = greedy.ids[2];
    const stopped = await generateIds(plain, prompt, { maxNewTokens: 5 }, [stop]);
    const firstStop = greedy.ids.indexOf(stop);
    assert(
      stopped.stopReason === "eos" && stopped.stopToken === stop && stopped.ids.length === firstStop,
      `stop at ${stop}: ${JSON.stringify(stopped)}`,
    );
    // A full cache ends it too: capacity 16, prompt 12 -> 4 cached steps and a 5th token chosen.
    const long = Array.from({ length: 12 }, (_, i) => (i * 37 + 3) % cfg.vocabSize);
    const full = await generateIds(plain, long, { maxNewTokens: 50 }, []);
    assert(full.stopReason === "cache_full" && full.ids.length === 5, JSON.stringify(full));
    await rejects(() => plain.prefill(Array(17).fill(3)), /exceed the KV cache of 16 tokens/);
    // Sampling with a seed reproduces itself.
    const s1 = await generateIds(
      plain,
      prompt,
      { temperature: 0.8, topP: 0.9, seed: 7, maxNewTokens: 6 },
      [],
    );
    const s2 = await generateIds(
      plain,
      prompt,
      { temperature: 0.8, topP: 0.9, seed: 7, maxNewTokens: 6 },
      [],
    );
    assert(s1.ids.join() === s2.ids.join(), `seeded sampling differs: ${s1.ids} vs ${s2.ids}`);
  } finally {
    plain.destroy();
    merged.destroy();
    model.destroy();
  }
  await rejects(
    async () => {
      const nf4 = await tinyModel(gpu, cfg, "nf4", 9);
      try {
        await KvCacheModel.create(nf4, { merge: true });
      } finally {
        nf4.destroy();
      }
    },
    /needs an f16 base/,
  );
});

await gpuTest(
  "generate: the bench's sequence (prefill, steps, re-prefill, a second cache) on a step of many dispatches",
  async (gpu) => {
    // Four layers: a step encodes about 90 dispatches, more than one uniform buffer of parameter slots
    // held when the step bindings started, so the slots grow during the first step.
    const cfg: LlamaConfig = { ...GEN_TINY, numLayers: 4 };
    const model = await tinyModel(gpu, cfg, "nf4", 13);
    const prompt = [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50];
    const run = async (kv: KvCacheModel, steps: number) => {
      const out = [await kv.prefill(prompt)];
      for (let i = 0; i < steps; i++) out.push(await kv.step(argmax(out.at(-1)!)));
      return out;
    };
    const first = await KvCacheModel.create(model, { maxTokens: 32 });
    let want: Float32Array[];
    try {
      want = await run(first, 2);
      for (let rep = 0; rep < 2; rep++) {
        const again = await run(first, 5);
        for (let i = 0; i < want.length; i++) {
          assert(relativeError(again[i], want[i]) === 0, `rep ${rep} step ${i}: logits changed on a re-run`);
        }
      }
      await gpu.sync();
    } finally {
      first.destroy();
    }
    await rejects(() => first.step(3), /destroyed/);
    const second = await KvCacheModel.create(model, { maxTokens: 32 });
    try {
      const got = await run(second, 2);
      for (let i = 0; i < want.length; i++) {
        assert(
          relativeError(got[i], want[i]) === 0,
          `second cache, step ${i}: logits differ from the first's`,
        );
      }
      const seq = [...prompt, argmax(want[0]), argmax(want[1])];
      const full = lastRow(await model.logits(Int32Array.from(seq)), cfg.vocabSize);
      const err = relativeError(got[2], full);
      assert(err < 1e-2, `second cache: decode logits differ from the full forward's by ${err}`);
      await gpu.sync();
    } finally {
      second.destroy();
      model.destroy();
    }
  },
);

await gpuTest(
  "generate: a profiled decode step gives the same logits and times every dispatch",
  async (gpu) => {
    const model = await tinyModel(gpu, GEN_TINY, "nf4", 21);
    const kv = await KvCacheModel.create(model, { maxTokens: 32 });
    try {
      const prompt = [1, 7, 8, 9, 10];
      const first = await kv.prefill(prompt);
      const plain = await kv.step(argmax(first));
      await kv.prefill(prompt);
      if (!gpu.caps.timestamps) {
        await rejects(() => profileGpu(gpu, () => kv.step(argmax(first))), /timestamp-query/);
        return;
      }
      const { result: timed, profile: p } = await profileGpu(gpu, () => kv.step(argmax(first)));
      assert(relativeError(timed, plain) === 0, "a profiled step changed the logits");
      assert(gpu.profile === undefined, "the profile stayed attached");
      // Per layer at least: the two LoRA down-products (which compute the norms), q, k, v, o, gate and
      // up with SwiGLU, down, attention; then the embedding, the final norm and the head.
      const minimum = GEN_TINY.numLayers * 9 + 3;
      assert(
        p.dispatches.length >= minimum,
        `${p.dispatches.length} dispatches profiled, expected >= ${minimum}`,
      );
      assert(p.dispatches.every((d) => d.ms >= 0 && d.startMs >= 0), "negative dispatch times");
      assert(p.busyMs > 0 && p.spanMs >= p.busyMs * 0.999, `span ${p.spanMs} ms, busy ${p.busyMs} ms`);
      const total = p.byLabel.reduce((a, g) => a + g.count, 0);
      assert(total === p.dispatches.length, "the summary by label lost dispatches");
      assert(
        p.byLabel.some((g) => g.label.includes("matvec")),
        `no matvec in ${p.byLabel.map((g) => g.label)}`,
      );
    } finally {
      kv.destroy();
      model.destroy();
    }
  },
);

Deno.test("generate: streamed text never splits a UTF-8 character", async () => {
  const tok = await LlamaTokenizer.fromDir(BUNDLED_TOKENIZER);
  const text = "আমি খুব দুঃখিত 😀 — ok ৷ 🙏🏽 ঞ্জ";
  const ids = Array.from(tok.encode(text));
  const decode = (xs: number[]) => tok.decode(xs, { skipSpecialTokens: true });
  // The small tokenizer spells rare characters byte by byte, so some characters span tokens.
  const spans = ids.filter((id) => decode([id]).includes("\uFFFD")).length;
  assert(spans > 0, "the test text has no character split across tokens; pick rarer characters");
  const streamer = new TextStreamer(decode);
  const pieces = ids.map((id) => streamer.push(id));
  pieces.push(streamer.flush());
  for (const p of pieces) {
    assert(!p.includes("\uFFFD"), `a piece holds a broken character: ${JSON.stringify(p)}`);
  }
  assert(pieces.join("") === text, `streamed ${JSON.stringify(pieces.join(""))}`);
});

Deno.test("generate: settings defaults are greedy", () => {
  const s = resolvedSettings({});
  assert(!s.doSample && s.temperature === 0 && s.maxNewTokens === 256 && s.topP === 1);
  const t = resolvedSettings({ temperature: 0.7 });
  assert(t.doSample && t.temperature === 0.7);
  const u = resolvedSettings({ doSample: true });
  assert(u.doSample && u.temperature === 1);
});
