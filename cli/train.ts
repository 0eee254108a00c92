/**
 * deno task train [--model DIR --data CSV|JSONL|DIR] [--config FILE] [--resume CHECKPOINT]
 *   [--out DIR] [--overwrite] [any training config field as --kebab-case-flag VALUE]
 *
 * With no arguments: the embedded demo (a tiny Llama-3.1-shaped random model, the bundled sample
 * corpus and tokenizer, QLoRA, a few dozen steps). With --model and --data: the reference job
 * (model/training_config.ts), any field overridable by --config FILE or flags.
 * Config precedence: defaults <- embedded-demo settings (no model only) <- the checkpoint's
 * training_config.json (--resume) <- --config FILE <- flags.
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { formatBytes } from "../engine/memory.ts";
import {
  CONFIG_FIELDS,
  configFileLayer,
  type ConfigLayer,
  DEFAULT_TRAINING_CONFIG,
  EMBEDDED_DEMO_OVERRIDES,
  flagName,
  resolveConfig,
  type TrainingConfig,
} from "../model/training_config.ts";
import { planRun, runTraining, summaryText } from "../model/train_run.ts";
import type { StepMetrics } from "../model/run_outputs.ts";

const FIELD_HELP: Partial<Record<keyof TrainingConfig, string>> = {
  model: "Hugging Face model folder (config.json, safetensors, tokenizer); none = embedded tiny model",
  data: "corpus CSV / chat JSONL, or a `deno task prepare` folder; none = bundled sample",
  out: "run folder (default runs/<UTC timestamp>)",
  strategy: "qlora (NF4 base, default) or lora (f16 base)",
  tokenizer: "tokenizer folder (default: the model folder)",
  maxSteps: "optimizer steps (300)",
  sequencesPerStep: "sequences accumulated per step (8)",
  learningRate: "peak learning rate (2e-4)",
  loraR: "LoRA rank (64)",
  loraAlpha: "LoRA alpha (64)",
  loraTargets: "comma-separated projections, or all (all 7)",
  optimizer: "adamw8bit (default) or adamw",
  maxSeqLength: "longest example kept, never cut (4096)",
  evalEvery: "validation every N steps (50)",
  saveEvery: "checkpoint every N steps (50)",
  backend: "dawn (default) or deno",
};

const USAGE = `Usage: deno task train [options]
  (no options)            the embedded demo: tiny random Llama on the bundled sample, a few minutes on a CPU
  --model DIR --data CSV  the reference job (Llama-3.1-8B-Instruct, QLoRA r 64, 300 steps)
  --config FILE           JSON object of training config fields (see a run's training_config.json)
  --resume DIR            continue exactly from RUN/checkpoints/step-N (writes into RUN)
  --overwrite             replace a non-empty --out folder
  -h, --help              this text
Every training config field is a flag:
${
  CONFIG_FIELDS.map((f) =>
    `  --${flagName(f)}`.padEnd(30) +
    (FIELD_HELP[f] ?? `default ${JSON.stringify(DEFAULT_TRAINING_CONFIG[f])}`)
  )
    .join("\n")
}`;

const BOOLEAN_FIELDS = new Set<string>(["useRslora"]);

function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return "?";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h > 0
    ? `${h}h${String(m).padStart(2, "0")}m`
    : m > 0
    ? `${m}m${String(sec).padStart(2, "0")}s`
    : `${sec}s`;
}

/** The progress line of one step. */
export function progressLine(m: StepMetrics, total: number, etaSeconds: number): string {
  return [
    `step ${m.step}/${total}`,
    `loss ${m.loss.toFixed(4)}`,
    m.val_loss !== undefined ? `val ${m.val_loss.toFixed(4)}` : null,
    `lr ${m.lr.toExponential(2)}`,
    `${Math.round(m.tokens_per_s)} tok/s`,
    `ETA ${fmtTime(etaSeconds)}`,
    `mem ${formatBytes(m.peak_memory_bytes)}`,
    m.skipped ? `skipped (non-finite, loss scale -> ${m.loss_scale / 2})` : null,
  ].filter(Boolean).join(" | ");
}

async function main(): Promise<number> {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {
    config: { type: "string" },
    resume: { type: "string" },
    overwrite: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  };
  for (const f of CONFIG_FIELDS) {
    options[flagName(f)] = { type: BOOLEAN_FIELDS.has(f) ? "boolean" : "string" };
  }
  let values: Record<string, string | boolean | undefined>;
  try {
    const parsed = parseArgs({ args: Deno.args, options, strict: true, allowPositionals: false });
    values = parsed.values as Record<string, string | boolean | undefined>;
  } catch (e) {
    throw new Error(`${(e as Error).message}\n\n${USAGE}`);
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const flags: Record<string, unknown> = {};
  for (const f of CONFIG_FIELDS) {
    const v = values[flagName(f)];
    if (v !== undefined) flags[flagName(f)] = v;
  }
  const layers: ConfigLayer[] = [];
  const resume = values.resume as string | undefined;
  if (resume) {
    const path = join(resume, "training_config.json");
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch {
      throw new Error(
        `--resume ${resume}: no training_config.json there. Give a folder RUN/checkpoints/step-N.`,
      );
    }
    layers.push(configFileLayer(text, path));
  }
  if (values.config) {
    const path = values.config as string;
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (e) {
      throw new Error(`--config ${path}: cannot read (${(e as Error).message}).`);
    }
    layers.push(configFileLayer(text, path));
  }
  layers.push({ values: flags, origin: "flag" });
  // The embedded demo's settings apply when no layer names a model.
  const first = resolveConfig(layers);
  const embedded = first.config.model === null;
  const { config } = embedded
    ? resolveConfig([{ values: { ...EMBEDDED_DEMO_OVERRIDES }, origin: "embedded demo" }, ...layers])
    : first;

  const enc = new TextEncoder();
  const err = (s: string) => Deno.stderr.writeSync(enc.encode(s));
  const log = (s: string) => err(`${s}\n`);
  if (embedded) {
    log("no --model given: training the embedded demo (tiny random Llama-3.1-shaped model, bundled sample).");
  }
  const plan = await planRun(config, { resume: resume ?? null, overwrite: Boolean(values.overwrite), log });
  log(`run folder: ${plan.runDir}`);

  const tty = Deno.stderr.isTerminal();
  let sessionStart = 0;
  let sessionFirstStep = 0;
  let lineOpen = false;
  const summary = await runTraining(plan, {
    overwrite: Boolean(values.overwrite),
    log: (s) => {
      if (lineOpen) err("\n");
      lineOpen = false;
      log(s);
    },
    onStart: (t) => {
      sessionStart = performance.now();
      sessionFirstStep = t.step;
      log(
        `trainable parameters: ${
          t.trainableParameters.toLocaleString("en-US")
        }; ${plan.train.length} train / ` +
          `${plan.val.length} val examples; ${config.maxSteps} steps of ${config.sequencesPerStep} sequences`,
      );
    },
    onStep: (m) => {
      const done = m.step - sessionFirstStep;
      const eta = ((performance.now() - sessionStart) / 1000 / Math.max(1, done)) *
        (config.maxSteps - m.step);
      const line = progressLine(m, config.maxSteps, eta);
      if (tty) {
        err(`\r\x1b[2K${line}`);
        lineOpen = true;
        if (m.val_loss !== undefined || m.skipped) {
          err("\n");
          lineOpen = false;
        }
      } else {
        log(line);
      }
    },
  });
  if (lineOpen) err("\n");
  log(summaryText(summary, config));
  return summary.stopped ? 130 : 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`train: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
