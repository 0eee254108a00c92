// The evaluator on a run of the embedded model made the way training makes it: the base rebuilt from
// the run's seed with the run's adapter gives the same logits; perplexity against a CPU computation
// from the logits; GeneratedResponses.json, the experiments entry and the report; re-evaluation keeps
// earlier results (and the human ratings of earlier responses).

import { ok as assert, rejects } from "node:assert";
import { join } from "node:path";
import { gpuTest, relativeError, Rng } from "../engine/testing.ts";
import { LlamaTokenizer } from "../data/tokenizer.ts";
import { evaluateRun, loadValidationSet, splitExample } from "./evaluator.ts";
import { aggregateRatings } from "./human_eval.ts";
import type { Llama } from "./llama.ts";
import { saveAdapter } from "./peft.ts";
import { findLatestEmbeddedRun, loadInferenceModel } from "./run_model.ts";
import { llamaBuilder } from "./strategy.ts";
import { BUNDLED_TOKENIZER, embeddedModelConfig } from "./train_run.ts";
import { configJson, EMBEDDED_DEMO_OVERRIDES, loraConfigOf, resolveConfig } from "./training_config.ts";
import { ChatTemplate, encodeChat } from "../data/chat_template.ts";

/** Token-weighted NLL of the label tokens from full logits [T, V] (labels unshifted, HF style). */
function nllFromLogits(logits: Float32Array, labels: number[], V: number): { nll: number; tokens: number } {
  let nll = 0;
  let tokens = 0;
  for (let t = 0; t + 1 < labels.length; t++) {
    const y = labels[t + 1];
    if (y === -100) continue;
    const row = logits.subarray(t * V, (t + 1) * V);
    let max = -Infinity;
    for (let i = 0; i < V; i++) max = Math.max(max, row[i]);
    let sum = 0;
    for (let i = 0; i < V; i++) sum += Math.exp(row[i] - max);
    nll += Math.log(sum) + max - row[y];
    tokens++;
  }
  return { nll, tokens };
}

await gpuTest(
  "evaluate: embedded run rebuilt from its seed + adapter; metrics, outputs, nothing lost",
  async (gpu) => {
    const root = await Deno.makeTempDir({ prefix: "evaluator_test_" });
    const runDir = join(root, "run-a");
    try {
      const tok = await LlamaTokenizer.fromDir(BUNDLED_TOKENIZER);
      // A prepared data folder with short validation chats (short sequences keep the test fast).
      const dataDir = join(root, "data");
      await Deno.mkdir(dataDir);
      const template = ChatTemplate.fromTokenizer(tok);
      const chats = [
        ["আমি খুব একা বোধ করি।", "আপনার কথা শুনে খারাপ লাগছে। আমি আছি।"],
        ["পরীক্ষায় ভালো করিনি।", "মন খারাপ করবেন না, আবার চেষ্টা করুন।"],
        ["ঘুম আসে না।", "আপনার দুশ্চিন্তার কথা বলুন।"],
      ];
      const lines = chats.map(([q, a], i) => {
        const messages = [{ role: "user" as const, content: q }, { role: "assistant" as const, content: a }];
        const enc = encodeChat(tok, template, messages);
        const labels = Array.from(enc.labels);
        return JSON.stringify({
          id: `v${i}`,
          messages,
          meta: {},
          num_tokens: enc.inputIds.length,
          num_label_tokens: labels.filter((x) => x !== -100).length,
          input_ids: Array.from(enc.inputIds),
          labels,
        });
      });
      await Deno.writeTextFile(join(dataDir, "val.jsonl"), lines.join("\n") + "\n");
      await Deno.writeTextFile(join(dataDir, "train.jsonl"), lines.join("\n") + "\n");
      const config = resolveConfig([
        { values: { ...EMBEDDED_DEMO_OVERRIDES }, origin: "embedded demo" },
        { values: { out: runDir, data: dataDir }, origin: "flag" },
      ]).config;
      const cfg = embeddedModelConfig(tok);
      // The trained model, as model/train_run.ts builds it, with a non-zero adapter.
      const trained = (await llamaBuilder({
        gpus: [gpu],
        source: { kind: "random", config: cfg, seed: config.seed },
        lora: loraConfigOf(config),
        baseFormat: "nf4",
        seed: config.seed,
      })) as Llama;
      const ids = Int32Array.from([tok.bosId, 40, 41, 300, 7, 999]);
      let want: Float32Array;
      try {
        const rng = new Rng(11);
        for (const p of trained.parameters()) {
          if (!p.key.includes("lora_B")) continue;
          const v = new Float32Array(p.numel);
          for (let i = 0; i < v.length; i++) v[i] = 0.05 * rng.normal();
          trained.setParameter(p.key, v);
        }
        want = await trained.logits(ids);
        await saveAdapter(trained, runDir, "tiny-llama-3.1-random (embedded)");
      } finally {
        trained.destroy();
      }
      await Deno.writeTextFile(join(runDir, "training_config.json"), configJson(config));
      await Deno.writeTextFile(join(runDir, "loss_curve.svg"), "<svg/>\n");
      await Deno.writeTextFile(
        join(root, "LLAMAExperiments.json"),
        JSON.stringify([{ id: "other", metrics: {} }, { id: "run-a", metrics: { final_val_loss: 7 } }]),
      );

      assert((await findLatestEmbeddedRun(root)) === runDir, "the latest embedded run was not found");
      await rejects(() => findLatestEmbeddedRun(join(root, "none")), /deno task train/);

      // The rebuilt base + adapter computes what the trained model computed.
      const loaded = await loadInferenceModel({ run: runDir, gpus: [gpu] });
      try {
        const got = await loaded.model.logits(ids);
        assert(relativeError(got, want) < 1e-6, `rebuilt model logits differ by ${relativeError(got, want)}`);
        // Perplexity of the first 3 validation examples against a CPU computation from the logits.
        const val = await loadValidationSet(loaded.trainingConfig!, loaded.tokenizer, loaded.template);
        assert(val.length >= 3, `validation set of ${val.length}`);
        let nll = 0;
        let tokens = 0;
        for (const e of val.slice(0, 3)) {
          const l = await loaded.model.logits(Int32Array.from(e.input_ids));
          const r = nllFromLogits(l, e.labels, cfg.vocabSize);
          nll += r.nll;
          tokens += r.tokens;
        }
        const cpuPpl = Math.exp(nll / tokens);
        const res = await evaluateRun(runDir, {
          gpus: [gpu],
          samples: 2,
          perplexityExamples: 3,
          generation: { maxNewTokens: 4 },
        });
        assert(
          Math.abs(res.perplexity - cpuPpl) / cpuPpl < 2e-3 && res.valTokens === tokens,
          `perplexity ${res.perplexity} (${res.valTokens} tokens) vs ${cpuPpl} (${tokens}) from the logits`,
        );
      } finally {
        loaded.model.destroy();
      }

      const responses = JSON.parse(await Deno.readTextFile(join(runDir, "GeneratedResponses.json")));
      assert(responses.length === 2, `${responses.length} responses`);
      for (const r of responses) {
        for (const f of ["experiment_id", "input_text", "reference", "response", "settings", "latency_ms"]) {
          assert(f in r, `GeneratedResponses.json entry lacks ${f}`);
        }
        assert(r.experiment_id === "run-a" && r.new_tokens <= 4 && r.prompt_tokens > 5, JSON.stringify(r));
        assert(r.settings.doSample === false && r.settings.maxNewTokens === 4, JSON.stringify(r.settings));
      }
      const log1 = JSON.parse(await Deno.readTextFile(join(root, "LLAMAExperiments.json")));
      const m1 = log1[1].metrics;
      for (const f of ["perplexity", "val_loss", "bleu", "bleu_13a", "rouge_l"]) {
        assert(typeof m1[f] === "number", `experiments entry lacks ${f}: ${JSON.stringify(m1)}`);
      }
      assert(
        m1.final_val_loss === 7 && log1[0].metrics.perplexity === undefined,
        "other fields or entries changed",
      );
      assert(m1.bleu_signature.includes("tok:intl") && m1.bleu_13a_signature.includes("tok:13a"));
      let md = await Deno.readTextFile(join(runDir, "evaluation_results.md"));
      assert(
        md.includes("loss_curve.svg") && md.includes(m1.bleu_signature),
        "report lacks curve or signature",
      );
      assert(!md.includes("## Human evaluation"), "a human evaluation section without ratings");

      // Ratings of these responses: the next evaluation with the same responses shows them.
      const ratings = [{
        index: 0,
        input_text: responses[0].input_text,
        empathy: 4,
        fluency: 3,
        relevance: 5,
      }];
      await Deno.writeTextFile(
        join(runDir, "human_ratings.json"),
        JSON.stringify({
          experiment_id: "run-a",
          ratings,
          skipped: [],
          aggregates: aggregateRatings(ratings as never, 0, 2),
        }),
      );
      await evaluateRun(runDir, {
        gpus: [gpu],
        samples: 2,
        perplexityExamples: 1,
        generation: { maxNewTokens: 4 },
      });
      md = await Deno.readTextFile(join(runDir, "evaluation_results.md"));
      assert(
        md.includes("## Human evaluation") && md.includes("| empathy | 4.00 | 1 |"),
        "ratings not in the report",
      );
      const m2 = JSON.parse(await Deno.readTextFile(join(root, "LLAMAExperiments.json")))[1].metrics;
      assert(
        m2.previous_evaluations?.length === 1 && m2.previous_evaluations[0].perplexity === m1.perplexity,
      );

      // Different responses (sampling): the earlier responses and their ratings are kept aside.
      const res3 = await evaluateRun(runDir, {
        gpus: [gpu],
        samples: 2,
        perplexityExamples: 1,
        generation: { maxNewTokens: 4, temperature: 1, seed: 3 },
      });
      assert(res3.keptAside.length === 2, `kept aside ${res3.keptAside}`);
      const kept = JSON.parse(await Deno.readTextFile(res3.keptAside.find((p) => p.includes("Generated"))!));
      assert(kept[0].response === responses[0].response, "the earlier responses were not kept");
      md = await Deno.readTextFile(join(runDir, "evaluation_results.md"));
      assert(!md.includes("## Human evaluation"), "ratings of earlier responses shown for new ones");
      const m3 = JSON.parse(await Deno.readTextFile(join(root, "LLAMAExperiments.json")))[1].metrics;
      assert(
        m3.human_eval === undefined && m3.previous_evaluations.length === 2 &&
          m3.evaluation.generation.doSample,
      );
    } finally {
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test("evaluate: prompt, user text and reference of a validation example", async () => {
  const tok = await LlamaTokenizer.fromDir(BUNDLED_TOKENIZER);
  ChatTemplate.fromTokenizer(tok);
  const e = {
    id: "x",
    messages: [
      { role: "system" as const, content: "sys" },
      { role: "user" as const, content: "প্রশ্ন" },
      { role: "assistant" as const, content: "উত্তর।" },
    ],
    meta: {},
    num_tokens: 0,
    num_label_tokens: 0,
    input_ids: [],
    labels: [],
  };
  const s = splitExample(e);
  assert(s.prompt.length === 2 && s.input === "প্রশ্ন" && s.reference === "উত্তর।");
  let msg = "";
  try {
    splitExample({ ...e, messages: e.messages.slice(0, 2) });
  } catch (err) {
    msg = (err as Error).message;
  }
  assert(msg.includes("no assistant answer"), msg);
});
