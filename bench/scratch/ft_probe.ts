// Where an 8B fine-tuner step's time goes beyond the forward + backward.
import { openGpu } from "../../engine/gpu.ts";
import { formatGaps, formatProfile, profileGpu } from "../../engine/profile.ts";
import { Rng } from "../../engine/rng.ts";
import { LLAMA31_8B } from "../../model/config.ts";
import { LLAMAFineTuner } from "../../model/fine_tuner.ts";
import { createStrategy } from "../../model/strategy.ts";
import { DEFAULT_TRAINING_CONFIG, loraConfigOf } from "../../model/training_config.ts";
const gpu = await openGpu({ backend: "dawn" });
const T = 4096, steps = 6;
const config = {
  ...DEFAULT_TRAINING_CONFIG,
  maxSteps: steps,
  sequencesPerStep: 1,
  maxSeqLength: T,
  evalEvery: 0,
  saveEvery: 0,
};
const strategy = createStrategy("qlora");
const runDir = await Deno.makeTempDir();
const llama = await strategy.createModel(
  [gpu],
  { kind: "random", config: LLAMA31_8B, seed: 1 },
  loraConfigOf(config),
  1,
);
const rng = new Rng(2);
const train = Array.from({ length: steps }, (_, i) => {
  const ids = Array.from({ length: T }, () => rng.int(LLAMA31_8B.vocabSize));
  return { id: `r${i}`, input_ids: ids, labels: ids };
});
const tuner = new LLAMAFineTuner({
  config,
  strategy,
  model: llama,
  train,
  val: [],
  runDir,
  baseModelName: "x",
});
for (let s = 0; s < 3; s++) {
  const t0 = performance.now();
  await tuner.trainStep();
  await gpu.sync();
  console.log(`step ${s}: ${(performance.now() - t0).toFixed(1)} ms`);
}
const t0 = performance.now();
const { profile } = await profileGpu(gpu, async () => {
  await tuner.trainStep();
  await gpu.sync();
});
console.log(`profiled step: ${(performance.now() - t0).toFixed(1)} ms wall`);
console.log(formatProfile(profile, 25, true));
console.log(formatGaps(profile, 20));
// The tail after the last backward dispatch (optimizer etc.)
const d = profile.dispatches;
const lastFa =
  d.map((x, i) => [x, i] as const).filter(([x]) => x.label.includes("flash_attention_bwd")).at(-1)![1];
const tail = d.slice(lastFa + 1);
console.log(
  `after the last attention backward: ${tail.length} dispatches, ${
    (tail.at(-1)!.startMs + tail.at(-1)!.ms - d[lastFa].startMs).toFixed(1)
  } ms span, busy ${tail.reduce((s, x) => s + x.ms, 0).toFixed(1)} ms`,
);
const firstFa = d.findIndex((x) => x.label.includes("flash_attention_fwd"));
console.log(
  `before the first attention forward: ${firstFa} dispatches, start of it at ${
    d[firstFa].startMs.toFixed(1)
  } ms`,
);
const acc = strategy.accumulate.bind(strategy);
let accMs = 0;
strategy.accumulate = async (...a: Parameters<typeof acc>) => {
  const t = performance.now();
  const r = await acc(...a);
  accMs = performance.now() - t;
  return r;
};
const zg = llama.zeroGrads.bind(llama);
let zgMs = 0;
llama.zeroGrads = async () => {
  const t = performance.now();
  await zg();
  zgMs = performance.now() - t;
};
for (let s = 0; s < 3; s++) {
  const t1 = performance.now();
  await tuner.trainStep();
  await gpu.sync();
  console.log(
    `step: ${(performance.now() - t1).toFixed(1)} ms (accumulate ${accMs.toFixed(1)} of which zeroGrads ${
      zgMs.toFixed(1)
    })`,
  );
}
Deno.exit(0);
