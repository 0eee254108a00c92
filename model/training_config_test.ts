import {
  configFileLayer,
  configJson,
  DEFAULT_TRAINING_CONFIG,
  resolveConfig,
  warmupStepsOf,
} from "./training_config.ts";

function throwsWith(fn: () => unknown, ...parts: string[]): void {
  let msg = "";
  try {
    fn();
  } catch (e) {
    msg = (e as Error).message;
  }
  for (const p of parts) {
    if (!msg.includes(p)) {
      throw new Error(`expected an error containing ${JSON.stringify(p)}, got ${JSON.stringify(msg)}`);
    }
  }
}

Deno.test("training config: defaults are the reference job", () => {
  const c = resolveConfig([]).config;
  const want = {
    strategy: "qlora",
    loraR: 64,
    loraAlpha: 64,
    loraDropout: 0,
    maxSeqLength: 4096,
    maxSteps: 300,
    learningRate: 2e-4,
    lrScheduler: "cosine",
    optimizer: "adamw8bit",
    adamBeta1: 0.9,
    adamBeta2: 0.999,
    adamEpsilon: 1e-8,
    seed: 3407,
  };
  for (const [k, v] of Object.entries(want)) {
    if ((c as unknown as Record<string, unknown>)[k] !== v) {
      throw new Error(`default ${k} = ${(c as unknown as Record<string, unknown>)[k]}`);
    }
  }
  if (c.loraTargets.length !== 7) throw new Error("default targets are not all 7 projections");
  if (warmupStepsOf(c) !== 9) throw new Error(`warmup ${warmupStepsOf(c)}, expected ceil(0.03 * 300) = 9`);
});

Deno.test("training config: defaults <- file <- flags, sources named in errors, JSON round trip", () => {
  const file = configFileLayer(
    '{"maxSteps": 100, "learningRate": 1e-4, "loraTargets": ["q_proj", "v_proj"]}',
    "job.json",
  );
  const { config, sources } = resolveConfig([file, {
    values: { "max-steps": "50", "use-rslora": true },
    origin: "flag",
  }]);
  if (config.maxSteps !== 50 || config.learningRate !== 1e-4 || !config.useRslora) {
    throw new Error("precedence wrong");
  }
  if (config.loraTargets.join() !== "q_proj,v_proj") throw new Error("targets from the file lost");
  if (sources.maxSteps !== "flag --max-steps" || sources.learningRate !== "config job.json") {
    throw new Error("sources");
  }
  const again = resolveConfig([configFileLayer(configJson(config), "used.json")]).config;
  if (JSON.stringify(again) !== JSON.stringify(config)) {
    throw new Error("training_config.json does not round-trip");
  }
  if (JSON.stringify(resolveConfig([]).config) !== JSON.stringify(DEFAULT_TRAINING_CONFIG)) {
    throw new Error("mutated");
  }

  throwsWith(
    () => resolveConfig([configFileLayer('{"learningRate": -1}', "job.json")]),
    '"learningRate"',
    "-1",
    "job.json",
  );
  throwsWith(
    () => resolveConfig([{ values: { "lora-r": "abc" }, origin: "flag" }]),
    '"loraR"',
    "--lora-r",
    "number",
  );
  throwsWith(() => resolveConfig([{ values: { "lora-r": "2.5" }, origin: "flag" }]), "integer");
  throwsWith(
    () => resolveConfig([configFileLayer('{"maxStep": 3}', "job.json")]),
    "unknown",
    '"maxStep"',
    "maxSteps",
  );
  throwsWith(() => resolveConfig([{ values: { strategy: "full" }, origin: "flag" }]), "qlora, lora");
  throwsWith(
    () => resolveConfig([{ values: { "warmup-steps": "400" }, origin: "flag" }]),
    '"warmupSteps"',
    "maxSteps",
  );
  throwsWith(() => configFileLayer("[1]", "job.json"), "job.json", "JSON object");
  throwsWith(() => configFileLayer("{", "job.json"), "job.json", "not valid JSON");
});
