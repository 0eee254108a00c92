// The whole model against transformers + PEFT (float64 on the CPU) on a tiny random Llama-3.1:
// logits, per-token NLL, every LoRA gradient and 5 AdamW steps, for the f16 and the NF4 base (the
// fixture's base weights are NF4-exact, so one reference pins both; see
// bench/reference/make_model_golden.py, which makes model/testdata/).
//
// First, on the CPU, the float64 reference of model/llama_ref.ts must reproduce the fixture's logits
// (1e-6): that pins our reading of the fixture (config.json in the layout of the transformers version
// that wrote it, the PEFT adapter and its scaling alpha / r, the label shift) independently of the GPU.
// When the GPU logits miss, the failure names the first activation where the GPU forward parts from
// that reference (Llama.logits with a capture map).
//
// Tolerances follow f16 activations: every stored activation is rounded to 11 significant bits (unit
// roundoff u = 2^-11 = 4.9e-4), so each one carries about 1u of relative error and matmuls (f32
// accumulation) add little; through 2 blocks the logits end near 1.2u (6.1e-4 relative L2, measured on
// lavapipe with Dawn and with Deno's WebGPU) and the worst LoRA gradient near 2.6u (1.3e-3). Limits,
// with room for other accumulation orders (tensor cores): logits 3e-3 and every LoRA gradient 5e-3
// relative L2 error; per-token NLL 1e-2 absolute (measured 1.6e-3); the NLL sum 2e-4 relative (measured
// 1.2e-5: per-token errors are independent and partly cancel); the mean losses of the AdamW steps 2e-3
// absolute (measured 5.7e-4: Adam normalizes each update, so small noisy gradient entries move their
// weights as far as large ones).

import { ok as assert } from "node:assert";
import { createBuffer, releaseBuffer } from "../engine/buffers.ts";
import { Encoder } from "../engine/encoder.ts";
import { gpuTest, relativeError } from "../engine/testing.ts";
import { adamw } from "../kernels/optim/optim.ts";
import { readF32 } from "../engine/buffers.ts";
import { Llama } from "./llama.ts";
import {
  compareActivations,
  llamaRefForward,
  loadRefModel,
  refActivations,
  refTokenNll,
} from "./llama_ref.ts";
import { loadAdapter, loadAdapterConfig } from "./peft.ts";
import { decodeFloats, SafetensorsFile } from "./safetensors.ts";

const here = new URL(".", import.meta.url).pathname;
const MODEL = `${here}testdata/tiny_llama`;
const GOLDEN = `${here}testdata/tiny_llama_golden.safetensors`;
const HOW =
  "Make it with `python3 bench/reference/make_model_golden.py` (torch, transformers, peft, safetensors; " +
  "about 10 s on a CPU) and commit model/testdata/.";

let golden: SafetensorsFile | undefined;
try {
  golden = await SafetensorsFile.open(GOLDEN);
} catch (e) {
  Deno.test("llama golden: fixture present", () => {
    throw new Error(
      `The golden fixture ${GOLDEN} is missing or unreadable (${(e as Error).message}). ${HOW}`,
    );
  });
}

if (golden) {
  const g = golden;
  const f32 = async (name: string) => decodeFloats("F32", await g.read(name));
  const i32 = async (name: string) => {
    const b = await g.read(name);
    return new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  };
  const ids = await i32("ids");
  const labels = await i32("labels");
  const refLogits = await f32("logits");
  const refNll = await f32("token_nll");
  const nllSum = Number(g.metadata.nll_sum);
  const tokens = Number(g.metadata.tokens);
  const adamLosses: number[] = JSON.parse(g.metadata.adamw_losses);
  const hyper = JSON.parse(g.metadata.adamw);
  const refModel = await loadRefModel(MODEL, `${MODEL}/adapter`);

  Deno.test("llama golden: the float64 reference (model/llama_ref.ts) reproduces the fixture", () => {
    const logits = llamaRefForward(refModel, ids);
    const e = relativeError(logits, refLogits);
    assert(
      e < 1e-6,
      `float64 reference vs the fixture's logits: relative error ${e}. The fixture and our reading of ` +
        `${MODEL}/config.json or the adapter disagree (RoPE parameters, LoRA scaling, tied lm_head?). ${HOW}`,
    );
    const nll = refTokenNll(logits, labels, refModel.config.vocabSize);
    let sum = 0;
    nll.forEach((x, t) => {
      if (Number.isNaN(x)) return;
      assert(Math.abs(x - refNll[t]) < 1e-5, `token ${t}: reference NLL ${x} vs fixture ${refNll[t]}`);
      sum += x;
    });
    assert(Math.abs(sum - nllSum) < 1e-6 * nllSum, `reference NLL sum ${sum} vs fixture ${nllSum}`);
  });

  for (const baseFormat of ["f16", "nf4"] as const) {
    await gpuTest(
      `llama golden (${baseFormat} base): logits, loss, LoRA gradients, AdamW steps`,
      async (gpu) => {
        const lora = await loadAdapterConfig(`${MODEL}/adapter`);
        const model = await Llama.fromPretrained(MODEL, { gpus: gpu, lora, baseFormat });
        const state: GPUBuffer[] = [];
        try {
          await loadAdapter(model, `${MODEL}/adapter`);
          const seen = new Map<string, Float32Array>();
          const logits = await model.logits(ids, seen);
          const eLogits = relativeError(logits, refLogits);
          if (!(eLogits < 3e-3)) {
            seen.set("logits", logits);
            const { rows, first } = compareActivations(seen, refActivations(refModel, ids), 3e-3);
            const table = rows.map((r) => `${r.name} ${r.error.toExponential(2)}`).join(", ");
            assert(
              false,
              `logits relative error ${eLogits}; the GPU forward first parts from the float64 reference ` +
                `at ${first ?? "(no single activation)"}; relative error per activation: ${table}`,
            );
          }
          await model.zeroGrads();
          const fb = await model.forwardBackward(ids, labels, 1, 0);
          assert(fb.tokens === tokens, `tokens ${fb.tokens} vs ${tokens}`);
          assert(Math.abs(fb.nll - nllSum) < 2e-4 * Math.abs(nllSum), `NLL sum ${fb.nll} vs ${nllSum}`);
          // Per-token NLL from the logits (position t predicts labels[t + 1]).
          const V = model.config.vocabSize;
          for (let t = 0; t + 1 < ids.length; t++) {
            if (labels[t + 1] === -100) continue;
            const row = logits.subarray(t * V, (t + 1) * V);
            const max = row.reduce((a, b) => Math.max(a, b), -Infinity);
            const lse = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
            const nll = lse - row[labels[t + 1]];
            assert(Math.abs(nll - refNll[t]) < 1e-2, `token ${t}: NLL ${nll} vs ${refNll[t]}`);
          }
          let worst = 0;
          let worstKey = "";
          for (const p of model.parameters()) {
            const got = await readF32(p.gpu, p.grad, p.numel);
            const e = relativeError(got, await f32(`${p.key}.grad`));
            if (!(e <= worst)) [worst, worstKey] = [e, p.key];
          }
          assert(worst < 5e-3, `LoRA gradient relative error ${worst} at ${worstKey}`);
          // 5 AdamW steps (f32 kernel, torch order) on the mean loss.
          const params = model.parameters();
          for (const p of params) {
            for (let k = 0; k < 2; k++) {
              const b = createBuffer(gpu, p.numel * 4, "optimizer", "adam state");
              state.push(b);
            }
          }
          const zero = gpu.device.createCommandEncoder();
          for (const b of state) zero.clearBuffer(b);
          gpu.device.queue.submit([zero.finish()]);
          const losses: number[] = [];
          for (let step = 1; step <= 5; step++) {
            await model.zeroGrads();
            const r = await model.forwardBackward(ids, labels, 1 / tokens, 0);
            losses.push(r.nll / r.tokens);
            const enc = new Encoder(gpu, { label: "adamw" });
            for (let i = 0; i < params.length; i++) {
              await adamw(enc, {
                param: params[i].weight,
                grad: params[i].grad,
                m: state[2 * i],
                v: state[2 * i + 1],
                n: params[i].numel,
                hyper: { ...hyper, weightDecay: hyper.weight_decay, step },
                order: "torch",
              });
            }
            await enc.submit();
          }
          const last = await model.loss(ids, labels);
          losses.push(last.nll / last.tokens);
          const gap = Math.max(...losses.map((l, i) => Math.abs(l - adamLosses[i])));
          assert(
            gap < 2e-3,
            `AdamW mean losses [${losses}] vs the fixture's [${adamLosses}] (worst gap ${gap})`,
          );
          assert(losses[5] < losses[0], `the loss did not fall: ${losses}`);
        } finally {
          for (const b of state) releaseBuffer(b);
          model.destroy();
        }
      },
    );
  }
}
