import { join } from "node:path";
import { gpuTest } from "../engine/testing.ts";
import { fakeBuilder } from "./fake_model.ts";
import { readMetrics } from "./run_outputs.ts";
import { EXPERIMENTS_FILE, planRun, runTraining, summaryText } from "./train_run.ts";
import { configFileLayer, EMBEDDED_DEMO_OVERRIDES, resolveConfig } from "./training_config.ts";

function demoConfig(out: string, extra: Record<string, unknown> = {}) {
  return resolveConfig([
    { values: { ...EMBEDDED_DEMO_OVERRIDES }, origin: "embedded demo" },
    { values: { out, "max-steps": "6", "eval-every": "3", "save-every": "3", ...extra }, origin: "flag" },
  ]).config;
}

await gpuTest(
  "train run: bundled sample end to end (fake model), outputs, experiments log, resume",
  async (gpu) => {
    const root = await Deno.makeTempDir({ prefix: "train_run_test_" });
    try {
      const runA = join(root, "a");
      const plan = await planRun(demoConfig(runA));
      if (plan.train.length < 100 || plan.val.length < 10) {
        throw new Error(`sample split ${plan.train.length}/${plan.val.length}`);
      }
      const s = await runTraining(plan, { builder: fakeBuilder, gpus: [gpu] });
      if (s.stopped || s.steps !== 6 || s.adapterDir !== runA) {
        throw new Error(
          `summary ${JSON.stringify(s)}`,
        );
      }
      for (
        const f of [
          "training_config.json",
          "metrics.jsonl",
          "loss_curve.svg",
          "adapter_model.safetensors",
          "adapter_config.json",
          "data_stats.json",
          "checkpoints/step-3/trainer_state.json",
          "checkpoints/step-6/optimizer.safetensors",
        ]
      ) await Deno.stat(join(runA, f));
      const svg = await Deno.readTextFile(join(runA, "loss_curve.svg"));
      if (!svg.startsWith("<svg") || !svg.includes("<path") || (svg.match(/<circle/g) ?? []).length !== 3) {
        throw new Error("loss_curve.svg lacks the train line or the two validation points");
      }
      const used = configFileLayer(await Deno.readTextFile(join(runA, "training_config.json")), "used");
      const again = resolveConfig([used]).config;
      if (again.maxSteps !== 6 || again.loraR !== EMBEDDED_DEMO_OVERRIDES.loraR) {
        throw new Error("training_config.json does not round-trip as a --config file");
      }
      const adapterCfg = JSON.parse(await Deno.readTextFile(join(runA, "adapter_config.json")));
      if (adapterCfg.peft_type !== "LORA" || adapterCfg.r !== EMBEDDED_DEMO_OVERRIDES.loraR) {
        throw new Error(`adapter_config.json ${JSON.stringify(adapterCfg)}`);
      }
      const log = JSON.parse(await Deno.readTextFile(join(root, EXPERIMENTS_FILE)));
      if (
        !Array.isArray(log) || log.length !== 1 || log[0].id !== "a" || log[0].metrics.final_val_loss === null
      ) {
        throw new Error(`experiments log ${JSON.stringify(log).slice(0, 300)}`);
      }
      if (!summaryText(s, plan.config).includes("deno task train --model")) {
        throw new Error("the summary does not say how to run the real job");
      }

      // An earlier run's folder is never overwritten without --overwrite.
      let msg = "";
      await planRun(demoConfig(runA)).catch((e) => (msg = (e as Error).message));
      if (!msg.includes("--overwrite")) throw new Error(`existing run folder not refused: ${msg}`);

      // Resume from step 3 into the same folder: the same weights and metrics as the straight run.
      const straight = new Uint8Array(await Deno.readFile(join(runA, "adapter_model.safetensors")));
      const metricsA = await readMetrics(join(runA, "metrics.jsonl"));
      const ckpt = join(runA, "checkpoints", "step-3");
      const rplan = await planRun(demoConfig(runA), { resume: ckpt });
      const r = await runTraining(rplan, { builder: fakeBuilder, gpus: [gpu] });
      if (r.steps !== 6) throw new Error(`resumed run ended at ${r.steps}`);
      const resumed = new Uint8Array(await Deno.readFile(join(runA, "adapter_model.safetensors")));
      if (resumed.length !== straight.length || resumed.some((b, i) => b !== straight[i])) {
        throw new Error("resumed adapter differs from the straight run's");
      }
      const metricsR = await readMetrics(join(runA, "metrics.jsonl"));
      if (JSON.stringify(metricsR.map((m) => m.loss)) !== JSON.stringify(metricsA.map((m) => m.loss))) {
        throw new Error("resumed metrics.jsonl differs from the straight run's");
      }
      msg = "";
      await planRun(demoConfig(runA, { "learning-rate": "2e-3" }), { resume: ckpt })
        .catch((e) => (msg = (e as Error).message));
      if (!msg.includes(`"learningRate"`)) {
        throw new Error(`resume with another learning rate accepted: ${msg}`);
      }
      const log2 = JSON.parse(await Deno.readTextFile(join(root, EXPERIMENTS_FILE)));
      if (log2.length !== 1) {
        throw new Error(
          `a resumed run added a second experiments entry (${log2.length})`,
        );
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test("train run: bad inputs are refused before any GPU work", async () => {
  const root = await Deno.makeTempDir({ prefix: "train_run_test_" });
  try {
    const cases: [Record<string, unknown>, string][] = [
      [{ model: join(root, "missing") }, "not a folder"],
      [{ model: root }, "config.json"],
      [{ data: join(root, "none.csv") }, "file not found"],
      [{ data: root }, "without train.jsonl"],
      [{ "max-seq-length": "8" }, "no usable examples"],
    ];
    for (const [flags, want] of cases) {
      let msg = "";
      await planRun(demoConfig(join(root, "out"), flags)).catch((e) => (msg = (e as Error).message));
      if (!msg.includes(want)) throw new Error(`${JSON.stringify(flags)}: expected "${want}", got "${msg}"`);
    }
    let msg = "";
    await planRun(demoConfig(join(root, "out")), { resume: root }).catch((e) => (msg = (e as Error).message));
    if (!msg.includes("trainer_state.json")) throw new Error(`bad --resume accepted: ${msg}`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
