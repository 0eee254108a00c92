// The whole model against transformers + PEFT (float64 on the CPU) on a tiny random Llama-3.1:
// logits, per-token NLL, every LoRA gradient and 5 AdamW steps, for the f16 and the NF4 base (the
// fixture's base weights are NF4-exact, so one reference pins both; see
// bench/reference/make_model_golden.py, which makes model/testdata/).
//
// Tolerances follow f16 activations (11-bit mantissa) through 2 blocks: logits and gradients within
// 1e-2 relative L2 error of the float64 reference, per-token NLL within 2e-2 absolute, the NLL sum
// within 2e-3 relative, and the AdamW losses within 5e-3 absolute.

import { ok as assert } from "node:assert";
import { createBuffer, releaseBuffer } from "../engine/buffers.ts";
import { Encoder } from "../engine/encoder.ts";
import { gpuTest, relativeError } from "../engine/testing.ts";
import { adamw } from "../kernels/optim/optim.ts";
import { readF32 } from "../engine/buffers.ts";
import { Llama } from "./llama.ts";
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

  for (const baseFormat of ["f16", "nf4"] as const) {
    await gpuTest(
      `llama golden (${baseFormat} base): logits, loss, LoRA gradients, AdamW steps`,
      async (gpu) => {
        const lora = await loadAdapterConfig(`${MODEL}/adapter`);
        const model = await Llama.fromPretrained(MODEL, { gpus: gpu, lora, baseFormat });
        const state: GPUBuffer[] = [];
        try {
          await loadAdapter(model, `${MODEL}/adapter`);
          const logits = await model.logits(ids);
          const eLogits = relativeError(logits, refLogits);
          assert(eLogits < 1e-2, `logits relative error ${eLogits}`);
          await model.zeroGrads();
          const fb = await model.forwardBackward(ids, labels, 1, 0);
          assert(fb.tokens === tokens, `tokens ${fb.tokens} vs ${tokens}`);
          assert(Math.abs(fb.nll - nllSum) < 2e-3 * Math.abs(nllSum), `NLL sum ${fb.nll} vs ${nllSum}`);
          // Per-token NLL from the logits (position t predicts labels[t + 1]).
          const V = model.config.vocabSize;
          for (let t = 0; t + 1 < ids.length; t++) {
            if (labels[t + 1] === -100) continue;
            const row = logits.subarray(t * V, (t + 1) * V);
            const max = row.reduce((a, b) => Math.max(a, b), -Infinity);
            const lse = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
            const nll = lse - row[labels[t + 1]];
            assert(Math.abs(nll - refNll[t]) < 2e-2, `token ${t}: NLL ${nll} vs ${refNll[t]}`);
          }
          let worst = 0;
          let worstKey = "";
          for (const p of model.parameters()) {
            const got = await readF32(p.gpu, p.grad, p.numel);
            const e = relativeError(got, await f32(`${p.key}.grad`));
            if (!(e <= worst)) [worst, worstKey] = [e, p.key];
          }
          assert(worst < 1e-2, `LoRA gradient relative error ${worst} at ${worstKey}`);
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
          losses.forEach((l, i) =>
            assert(Math.abs(l - adamLosses[i]) < 5e-3, `AdamW loss ${i}: ${l} vs ${adamLosses[i]}`)
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
