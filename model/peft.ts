// The LoRA adapter in PEFT format (FACTS.md): adapter_model.safetensors (F32 factors, metadata
// {"format":"pt"}, keys base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight)
// and adapter_config.json. Saving reads the f32 masters back from the GPU one factor at a time;
// loading checks the config against the model and writes the factors onto it.

import { readF32, writeBuffer } from "../engine/buffers.ts";
import { bytesOf, decodeFloats, SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
import { writeFileAtomic } from "./run_outputs.ts";
import { ALL_LORA_TARGETS, type LlamaModel, type LoraConfig, type LoraTarget } from "./types.ts";

export class PeftError extends Error {
  override name = "PeftError";
}

/** adapter_config.json for a LoRA config. */
export function adapterConfigJson(lora: LoraConfig, baseModel: string): Record<string, unknown> {
  return {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    base_model_name_or_path: baseModel,
    r: lora.r,
    lora_alpha: lora.alpha,
    lora_dropout: lora.dropout,
    target_modules: [...lora.targets].sort(),
    bias: "none",
    use_rslora: lora.useRslora,
    fan_in_fan_out: false,
    init_lora_weights: true,
    inference_mode: true,
    modules_to_save: null,
    use_dora: false,
  };
}

/** Writes `dir`/adapter_model.safetensors and `dir`/adapter_config.json (each atomically). */
export async function saveAdapter(model: LlamaModel, dir: string, baseModel: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const tensors = model.parameters().map((p) => ({
    name: p.key,
    dtype: "F32" as const,
    shape: [...p.shape],
    data: async () => bytesOf(await readF32(p.gpu, p.weight, p.numel)),
  }));
  await writeSafetensors(`${dir}/adapter_model.safetensors`, tensors, { format: "pt" });
  await writeFileAtomic(
    `${dir}/adapter_config.json`,
    JSON.stringify(adapterConfigJson(model.lora, baseModel), null, 2) + "\n",
  );
}

/** Parses adapter_config.json into a LoraConfig. */
export function parseAdapterConfig(raw: unknown, source = "adapter_config.json"): LoraConfig {
  const c = raw as Record<string, unknown>;
  const fail = (f: string, msg: string): never => {
    throw new PeftError(`${source}: "${f}" ${msg}`);
  };
  if (typeof c !== "object" || c === null) throw new PeftError(`${source}: expected a JSON object`);
  if (c.peft_type !== "LORA") {
    fail("peft_type", `is ${JSON.stringify(c.peft_type)}; only "LORA" is supported`);
  }
  if (c.use_dora === true) fail("use_dora", "is true; DoRA is not supported");
  if (c.bias !== undefined && c.bias !== "none") {
    fail("bias", `is ${JSON.stringify(c.bias)}; only "none" is supported`);
  }
  if (!Number.isInteger(c.r) || (c.r as number) < 1) {
    fail("r", `is ${JSON.stringify(c.r)}; expected a positive integer`);
  }
  if (typeof c.lora_alpha !== "number") {
    fail("lora_alpha", `is ${JSON.stringify(c.lora_alpha)}; expected a number`);
  }
  let targets = c.target_modules;
  if (typeof targets === "string") targets = [targets];
  if (!Array.isArray(targets) || !targets.every((t) => ALL_LORA_TARGETS.includes(t))) {
    fail(
      "target_modules",
      `is ${JSON.stringify(c.target_modules)}; expected names among ${ALL_LORA_TARGETS.join(", ")}`,
    );
  }
  return {
    r: c.r as number,
    alpha: c.lora_alpha as number,
    dropout: typeof c.lora_dropout === "number" ? c.lora_dropout : 0,
    targets: ALL_LORA_TARGETS.filter((t) => (targets as string[]).includes(t)) as LoraTarget[],
    useRslora: c.use_rslora === true,
  };
}

/** Reads `dir`/adapter_config.json. */
export async function loadAdapterConfig(dir: string): Promise<LoraConfig> {
  const path = `${dir}/adapter_config.json`;
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new PeftError(`${path}: cannot read (${(e as Error).message})`);
  }
  return parseAdapterConfig(raw, path);
}

/** Loads an adapter saved by PEFT (or saveAdapter) onto the model: the config must match the model's
 * LoRA shape (r, targets); every factor of the model must be in the file, with its shape. The
 * scaling comes from the model's own LoraConfig, so build the model with loadAdapterConfig's. */
export async function loadAdapter(model: LlamaModel, dir: string): Promise<void> {
  const cfg = await loadAdapterConfig(dir);
  const mine = model.lora;
  if (cfg.r !== mine.r || cfg.alpha !== mine.alpha || cfg.useRslora !== mine.useRslora) {
    throw new PeftError(
      `${dir}/adapter_config.json: r ${cfg.r}, alpha ${cfg.alpha}, rslora ${cfg.useRslora} differ from the model's ` +
        `r ${mine.r}, alpha ${mine.alpha}, rslora ${mine.useRslora}; build the model with the adapter's config`,
    );
  }
  if ([...cfg.targets].sort().join() !== [...mine.targets].sort().join()) {
    throw new PeftError(
      `${dir}/adapter_config.json: target_modules [${cfg.targets}] differ from the model's [${mine.targets}]`,
    );
  }
  const file = `${dir}/adapter_model.safetensors`;
  const ckpt = await SafetensorsCheckpoint.open(file);
  try {
    const params = model.parameters();
    const expected = new Set(params.map((p) => p.key));
    for (const name of ckpt.tensors.keys()) {
      if (!expected.has(name.replace(/\.lora_([AB])\.default\.weight$/, ".lora_$1.weight"))) {
        throw new PeftError(`${file}: tensor "${name}" matches no LoRA factor of the model`);
      }
    }
    for (const p of params) {
      if (!ckpt.has(p.key)) throw new PeftError(`${file}: no tensor "${p.key}"`);
      const info = ckpt.info(p.key);
      if (info.shape.length !== 2 || info.shape[0] !== p.shape[0] || info.shape[1] !== p.shape[1]) {
        throw new PeftError(`${file}: "${p.key}" is [${info.shape}], the model's factor is [${p.shape}]`);
      }
      if (info.dtype !== "F32" && info.dtype !== "F16" && info.dtype !== "BF16") {
        throw new PeftError(`${file}: "${p.key}" is ${info.dtype}; expected F32, F16 or BF16`);
      }
      writeBuffer(p.gpu, p.weight, decodeFloats(info.dtype, await ckpt.read(p.key)));
    }
  } finally {
    ckpt.close();
  }
  for (const g of model.gpus) await g.sync();
}
