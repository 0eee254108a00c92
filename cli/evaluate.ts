/**
 * deno task evaluate [--run DIR] [--samples N] [--perplexity-examples N] [--max-new-tokens N]
 *   [--temperature T --top-p P --top-k K --repetition-penalty R --seed S] [--examples N]
 *   [--data PATH] [--model DIR] [--backend dawn|deno] [--gpu NAME]
 *
 * Evaluates a finished training run on its validation set: perplexity over the assistant tokens,
 * responses for the first N prompts (greedy by default) scored with BLEU (intl and 13a, with
 * signatures) and ROUGE-L F1. Writes RUN/GeneratedResponses.json and RUN/evaluation_results.md and
 * fills the run's entry of LLAMAExperiments.json. Without --run: the newest embedded-model run
 * under runs/. Then `deno task rate --run DIR` collects human ratings of the responses.
 */
import { parseArgs } from "node:util";
import { openGpu } from "../engine/gpu.ts";
import { evaluateRun } from "../model/evaluator.ts";
import { findLatestEmbeddedRun, readRunConfig } from "../model/run_model.ts";
import { SAMPLING_OPTIONS, samplingSettings } from "./generate.ts";

const USAGE = `Usage: deno task evaluate [options]
  --run DIR                  the training run folder (default: newest embedded-model run under runs/)
  --samples N                responses generated for the first N validation prompts (16; 0 = none)
  --perplexity-examples N    perplexity over the first N validation examples (0 = all, default)
  --max-new-tokens N         most new tokens per response (256)
  --temperature T            0 = greedy (default); > 0 samples
  --top-p P, --top-k K, --repetition-penalty R, --seed S   sampling settings
  --examples N               examples shown in evaluation_results.md (5)
  --data PATH                the validation data, if not where the run's training read it
  --model DIR                the run's Hugging Face base, if it moved since training
  --backend dawn|deno        WebGPU implementation (dawn)
  --gpu NAME                 adapter name substring
  -h, --help                 this text`;

function count(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (v.trim() === "" || !Number.isInteger(x) || x < 0) {
    throw new Error(`--${name} ${JSON.stringify(v)}: expected a whole number >= 0`);
  }
  return x;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      run: { type: "string" },
      samples: { type: "string" },
      "perplexity-examples": { type: "string" },
      examples: { type: "string" },
      data: { type: "string" },
      model: { type: "string" },
      backend: { type: "string", default: "dawn" },
      gpu: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
      ...SAMPLING_OPTIONS,
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.backend !== "dawn" && values.backend !== "deno") {
    throw new Error(`--backend ${values.backend}: expected dawn or deno`);
  }
  const generation = samplingSettings(values);
  const run = values.run ?? await findLatestEmbeddedRun();
  await readRunConfig(run); // a readable run folder before the GPU is opened
  const gpu = await openGpu({ backend: values.backend, adapter: values.gpu });
  console.error(`evaluating ${run} on ${gpu.name}`);
  const r = await evaluateRun(run, {
    gpus: [gpu],
    samples: count("samples", values.samples),
    perplexityExamples: count("perplexity-examples", values["perplexity-examples"]),
    reportExamples: count("examples", values.examples),
    generation,
    data: values.data ?? null,
    model: values.model ?? null,
    log: (m) => console.error(m),
  });
  const f = (x: number | null | undefined, d = 2) => (x === null || x === undefined ? "-" : x.toFixed(d));
  console.log(
    [
      `perplexity ${f(r.perplexity, 3)} (val loss ${f(r.valLoss, 4)}, ${r.valTokens} assistant tokens of ` +
      `${r.valExamples} examples)`,
      `BLEU intl ${f(r.bleu?.score)}  [${r.bleu?.signature ?? "-"}]`,
      `BLEU 13a  ${f(r.bleu13a?.score)}  [${r.bleu13a?.signature ?? "-"}]`,
      `ROUGE-L F1 ${f(r.rougeL === null ? null : 100 * r.rougeL)}`,
      `outputs: ${run}/GeneratedResponses.json (${r.responses.length} responses), ${run}/evaluation_results.md`,
      r.experiments.updated ? `experiments log: ${r.experiments.path}` : `note: ${r.experiments.note}`,
      ...(r.keptAside.length ? [`earlier results kept as: ${r.keptAside.join(", ")}`] : []),
      `human ratings: deno task rate --run ${run}`,
    ].join("\n"),
  );
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`evaluate: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
