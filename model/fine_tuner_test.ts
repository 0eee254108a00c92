import { join } from "node:path";
import { gpuTest } from "../engine/testing.ts";
import type { Gpu } from "../engine/gpu.ts";
import { readBytes } from "../engine/buffers.ts";
import { fakeBuilder, FakeModel } from "./fake_model.ts";
import { LLAMAFineTuner, type TrainExample } from "./fine_tuner.ts";
import { readMetrics, type StepMetrics } from "./run_outputs.ts";
import { createStrategy } from "./strategy.ts";
import { DEFAULT_TRAINING_CONFIG, type TrainingConfig } from "./training_config.ts";
import { ALL_LORA_TARGETS } from "./types.ts";

/** Examples of 6..20 tokens with labels on the second half; "poison" carries the poison token 999. */
function examples(n: number, prefix: string, poisonAt = -1): TrainExample[] {
  return Array.from({ length: n }, (_, k) => {
    const T = 6 + ((k * 7) % 15);
    const ids = Array.from({ length: T }, (_, t) => (k * 31 + t * 17) % 2000 + 2);
    const labels = ids.map((id, t) => (t >= T / 2 ? id : -100));
    if (k === poisonAt) labels[T - 1] = 999;
    return { id: `${prefix}:${k}`, input_ids: ids, labels };
  });
}

function config(over: Partial<TrainingConfig>): TrainingConfig {
  return {
    ...structuredClone(DEFAULT_TRAINING_CONFIG) as TrainingConfig,
    maxSteps: 8,
    sequencesPerStep: 3,
    learningRate: 1e-2,
    warmupSteps: 1,
    maxGradNorm: 1.0,
    initLossScale: 1024,
    evalEvery: 4,
    saveEvery: 0,
    ...over,
  };
}

async function tuner(
  gpu: Gpu,
  c: TrainingConfig,
  runDir: string,
  modelSeed: number,
  train: TrainExample[],
  onStep?: (m: StepMetrics) => void,
) {
  const strategy = createStrategy(c.strategy, fakeBuilder);
  const lora = { r: 8, alpha: 16, dropout: 0, targets: [...ALL_LORA_TARGETS], useRslora: false };
  const model = await strategy.createModel(
    [gpu],
    { kind: "hf", dir: "unused" },
    lora,
    modelSeed,
  ) as FakeModel;
  model.poisonToken = 999;
  return new LLAMAFineTuner({
    config: c,
    strategy,
    model,
    train,
    val: examples(4, "val"),
    runDir,
    baseModelName: "fake",
    onStep,
  });
}

/** Every LoRA weight and optimizer state byte of a fine tuner. */
async function snapshot(t: LLAMAFineTuner): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (const p of t.params) out.push(new Uint8Array(await readBytes(p.gpu, p.weight, p.numel * 4)));
  for (const x of await t.optimizerTensors()) out.push(x.data as Uint8Array);
  return out;
}

function sameBytes(a: Uint8Array[], b: Uint8Array[], what: string): void {
  if (a.length !== b.length) throw new Error(`${what}: ${a.length} tensors vs ${b.length}`);
  a.forEach((x, i) => {
    if (x.length !== b[i].length) {
      throw new Error(`${what}: tensor ${i} has ${x.length} vs ${b[i].length} bytes`);
    }
    for (let j = 0; j < x.length; j++) {
      if (x[j] !== b[i][j]) throw new Error(`${what}: tensor ${i} differs first at byte ${j}`);
    }
  });
}

for (const optimizer of ["adamw8bit", "adamw"] as const) {
  await gpuTest(
    `fine tuner: N steps straight == N/2 + checkpoint + resume + N/2, bit for bit (${optimizer})`,
    async (gpu) => {
      const root = await Deno.makeTempDir({ prefix: "fine_tuner_test_" });
      try {
        // 10 examples, 3 per step: 4 batches per epoch, so 8 steps cross an epoch boundary; the
        // poisoned example forces one skipped step per epoch.
        const train = examples(10, "train", 4);
        const c = config({ optimizer });
        const a = await tuner(gpu, c, join(root, "a"), 1, train);
        const resA = await a.train();
        if (resA.stopped || a.step !== 8) throw new Error(`straight run ended at step ${a.step}`);
        const metricsA = await readMetrics(join(root, "a", "metrics.jsonl"));
        if (metricsA.length !== 8) throw new Error(`metrics.jsonl has ${metricsA.length} lines, expected 8`);
        const skipped = metricsA.filter((m) => m.skipped);
        if (skipped.length !== 2) {
          throw new Error(`expected 2 skipped steps (one per epoch), got ${skipped.length}`);
        }
        const s = skipped[0].step;
        if (metricsA[s].loss_scale !== skipped[0].loss_scale / 2) {
          throw new Error(
            `loss scale after the skipped step ${s}: ${metricsA[s].loss_scale}, expected half of ${
              skipped[0].loss_scale
            }`,
          );
        }
        if (skipped[0].grad_norm !== null) throw new Error("a skipped step reports a finite grad norm");
        if (!metricsA.every((m) => m.lr >= 0 && m.tokens_per_s > 0)) throw new Error("bad lr or tokens/s");
        if (metricsA[0].lr !== 0) throw new Error(`step 1 lr is ${metricsA[0].lr}; warmup starts at 0 (HF)`);
        if (metricsA[3].val_loss === undefined || metricsA[7].val_loss === undefined) {
          throw new Error("validation loss missing at steps 4 and 8");
        }
        const first = metricsA.find((m) => !m.skipped)!.loss;
        const last = metricsA.at(-1)!.loss;
        const v0 = metricsA[3].val_loss!, v1 = metricsA[7].val_loss!;
        if (!(v1 < v0)) {
          throw new Error(`validation loss did not fall: ${v0} -> ${v1} (train ${first} -> ${last})`);
        }
        const want = await snapshot(a);

        // Part of the run, then a stop request (as Ctrl-C does) right after the first skipped step
        // (in the first epoch): train() writes a checkpoint that holds a lowered loss scale.
        const stopStep = s;
        let stopHere = (): void => {};
        const b = await tuner(gpu, c, join(root, "b"), 1, train, (m) => m.step === stopStep && stopHere());
        stopHere = () => b.requestStop();
        const resB = await b.train();
        if (!resB.stopped || b.step !== stopStep) throw new Error(`stopped run at step ${b.step}`);
        const ckpt = join(root, "b", "checkpoints", `step-${stopStep}`);
        for (
          const f of [
            "adapter_model.safetensors",
            "adapter_config.json",
            "optimizer.safetensors",
            "trainer_state.json",
          ]
        ) {
          await Deno.stat(join(ckpt, f));
        }
        // A fresh model with other weights, restored from the checkpoint, then the second half.
        const r = await tuner(gpu, c, join(root, "b"), 2, train);
        await r.resume(ckpt);
        if (r.step !== stopStep) throw new Error(`resumed at step ${r.step}`);
        await r.train();
        sameBytes(await snapshot(r), want, "resumed vs straight");
        const metricsB = await readMetrics(join(root, "b", "metrics.jsonl"));
        if (metricsB.length !== 8) throw new Error(`resumed metrics.jsonl has ${metricsB.length} lines`);
        metricsB.forEach((m, i) => {
          if (
            m.loss !== metricsA[i].loss || m.skipped !== metricsA[i].skipped || m.lr !== metricsA[i].lr ||
            m.loss_scale !== metricsA[i].loss_scale
          ) {
            throw new Error(
              `resumed step ${m.step}: ${JSON.stringify(m)} vs straight ${JSON.stringify(metricsA[i])}`,
            );
          }
        });
        for (const t of [a, b, r]) {
          t.destroy();
          t.model.destroy();
        }
      } finally {
        await Deno.remove(root, { recursive: true });
      }
    },
  );
}

await gpuTest("fine tuner: resume refuses a changed config field or other data", async (gpu) => {
  const root = await Deno.makeTempDir({ prefix: "fine_tuner_test_" });
  try {
    const train = examples(6, "train");
    const c = config({ maxSteps: 4, saveEvery: 2, optimizer: "adamw" });
    const a = await tuner(gpu, c, root, 1, train);
    for (let k = 0; k < 2; k++) await a.trainStep();
    const dir = await a.saveCheckpoint();
    const b = await tuner(
      gpu,
      config({ maxSteps: 4, saveEvery: 2, optimizer: "adamw", learningRate: 5e-3 }),
      root,
      1,
      train,
    );
    let msg = "";
    await b.resume(dir).catch((e) => (msg = (e as Error).message));
    if (!msg.includes(`"learningRate"`)) throw new Error(`changed learningRate not refused: ${msg}`);
    const d = await tuner(gpu, c, root, 1, examples(7, "train"));
    msg = "";
    await d.resume(dir).catch((e) => (msg = (e as Error).message));
    if (!msg.includes("training data had 6 examples")) throw new Error(`other data not refused: ${msg}`);
    for (const t of [a, b, d]) {
      t.destroy();
      t.model.destroy();
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
