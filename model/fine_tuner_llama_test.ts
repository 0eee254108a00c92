// The trainer on the real model (model/llama.ts, random tiny weights, NF4 base): N steps straight
// equal N/2 steps, a checkpoint, a fresh model resumed from it, and N/2 more, bit for bit.
import { join } from "node:path";
import { readBytes } from "../engine/buffers.ts";
import type { Gpu } from "../engine/gpu.ts";
import { gpuTest } from "../engine/testing.ts";
import { LLAMAFineTuner, type TrainExample } from "./fine_tuner.ts";
import { createStrategy } from "./strategy.ts";
import { DEFAULT_TRAINING_CONFIG, loraConfigOf, type TrainingConfig } from "./training_config.ts";
import type { LlamaConfig } from "./types.ts";

const CFG: LlamaConfig = {
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

function examples(n: number, prefix: string): TrainExample[] {
  return Array.from({ length: n }, (_, k) => {
    const T = 8 + ((k * 5) % 9);
    const ids = Array.from({ length: T }, (_, t) => (t === 0 ? 1 : 3 + ((k * 13 + t * 7) % 250)));
    return { id: `${prefix}:${k}`, input_ids: ids, labels: ids.map((id, t) => (t >= 4 ? id : -100)) };
  });
}

const CONFIG: TrainingConfig = {
  ...structuredClone(DEFAULT_TRAINING_CONFIG) as TrainingConfig,
  // r 64 makes q_proj's A (64 x 64) large enough for 8-bit optimizer states.
  loraR: 64,
  loraAlpha: 64,
  maxSteps: 4,
  sequencesPerStep: 2,
  learningRate: 5e-3,
  warmupSteps: 1,
  evalEvery: 0,
  saveEvery: 0,
};

async function tuner(gpu: Gpu, runDir: string, seed: number): Promise<LLAMAFineTuner> {
  const strategy = createStrategy("qlora");
  const model = await strategy.createModel(
    [gpu],
    { kind: "random", config: CFG, seed: 7 },
    loraConfigOf(CONFIG),
    seed,
  );
  return new LLAMAFineTuner({
    config: CONFIG,
    strategy,
    model,
    train: examples(6, "train"),
    val: examples(2, "val"),
    runDir,
    baseModelName: "tiny",
  });
}

async function snapshot(t: LLAMAFineTuner): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (const p of t.params) out.push(new Uint8Array(await readBytes(p.gpu, p.weight, p.numel * 4)));
  for (const x of await t.optimizerTensors()) out.push(x.data as Uint8Array);
  return out;
}

await gpuTest(
  "fine tuner on the tiny Llama (QLoRA): straight == checkpoint + resume, bit for bit",
  async (gpu) => {
    const root = await Deno.makeTempDir({ prefix: "fine_tuner_llama_test_" });
    try {
      const a = await tuner(gpu, join(root, "a"), 11);
      const losses: number[] = [];
      for (let k = 0; k < 4; k++) losses.push((await a.trainStep()).loss);
      if (!losses.every(Number.isFinite)) throw new Error(`non-finite losses ${losses}`);
      if (!a.params.some((p) => p.numel >= 4096)) throw new Error("no parameter uses 8-bit optimizer states");
      const want = await snapshot(a);

      const b = await tuner(gpu, join(root, "b"), 11);
      for (let k = 0; k < 2; k++) await b.trainStep();
      const dir = await b.saveCheckpoint();
      const r = await tuner(gpu, join(root, "b"), 99);
      await r.resume(dir);
      const rest: number[] = [];
      for (let k = 0; k < 2; k++) rest.push((await r.trainStep()).loss);
      if (rest[0] !== losses[2] || rest[1] !== losses[3]) {
        throw new Error(`resumed losses ${rest} differ from the straight run's ${losses.slice(2)}`);
      }
      const got = await snapshot(r);
      got.forEach((x, i) => {
        const y = want[i];
        if (x.length !== y.length || x.some((v, j) => v !== y[j])) {
          throw new Error(`tensor ${i} differs after resume`);
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
