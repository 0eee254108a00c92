/**
 * deno task prepare --input CSV|JSONL --out DIR [--val-fraction 0.1] [--seed 3407]
 *   [--max-seq-length 4096] [--tokenizer DIR] [--system-prompt TEXT] [--overwrite]
 *
 * Writes DIR/train.jsonl, DIR/val.jsonl, DIR/stats.json (see data/dataset_processor.ts).
 */
import { parseArgs } from "node:util";
import { ChatTemplate, DatasetProcessor, LlamaTokenizer, readerFor } from "../data/mod.ts";

const USAGE = `Usage: deno task prepare --input CORPUS.csv|.jsonl --out DIR [options]
  --input FILE           corpus CSV (Topics, Question-Title, Questions, Answers) or chat JSONL
  --out DIR              output folder (train.jsonl, val.jsonl, stats.json); must not exist or be empty
  --val-fraction F       share of examples for validation (default 0.1)
  --seed N               split seed (default 3407)
  --max-seq-length N     longer examples are reported and left out, never cut (default 4096)
  --tokenizer DIR        folder with tokenizer.json + tokenizer_config.json (default data/sample/tokenizer)
  --system-prompt TEXT   system message for every chat; {topic} is replaced by the row's topic
  --overwrite            replace a non-empty --out folder (only after the new one is complete)`;

function num(name: string, v: string | undefined, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n)) {
    throw new Error(`--${name} is ${JSON.stringify(v)}; expected a number.\n\n${USAGE}`);
  }
  return n;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      input: { type: "string" },
      out: { type: "string" },
      "val-fraction": { type: "string" },
      seed: { type: "string" },
      "max-seq-length": { type: "string" },
      tokenizer: { type: "string", default: "data/sample/tokenizer" },
      "system-prompt": { type: "string" },
      overwrite: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!values.input || !values.out) throw new Error(`--input and --out are required.\n\n${USAGE}`);
  const tok = await LlamaTokenizer.fromDir(values.tokenizer!);
  const template = ChatTemplate.fromTokenizer(tok);
  const isTty = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  const start = performance.now();
  const processor = new DatasetProcessor(tok, template, {
    valFraction: num("val-fraction", values["val-fraction"], 0.1),
    seed: num("seed", values.seed, 3407),
    maxSeqLength: num("max-seq-length", values["max-seq-length"], 4096),
    systemPrompt: values["system-prompt"] ?? null,
    onProgress: (done, total) => {
      const w = 30;
      const f = Math.round((done / total) * w);
      const rate = done / ((performance.now() - start) / 1000);
      const line = `prepare [${"#".repeat(f)}${"-".repeat(w - f)}] ${done}/${total} rows ${
        rate.toFixed(0)
      } rows/s`;
      if (isTty) Deno.stderr.writeSync(enc.encode(`\r${line}`));
      else if (done === total) Deno.stderr.writeSync(enc.encode(`${line}\n`));
    },
  });
  const { stats } = await processor.run(readerFor(values.input), values.out, { overwrite: values.overwrite });
  if (isTty) Deno.stderr.writeSync(enc.encode("\n"));
  const d = stats.dropped;
  console.error(
    `${stats.rows_read} rows read; kept ${stats.kept} (train ${stats.train}, val ${stats.val}); dropped ` +
      `empty ${d.empty}, too short ${d.too_short}, duplicate ${d.duplicate}, too long ${d.too_long}.\n` +
      `tokens per example: p50 ${stats.token_length.p50}, p90 ${stats.token_length.p90}, ` +
      `p99 ${stats.token_length.p99}, max ${stats.token_length.max} (${stats.longest?.id}).\n` +
      `wrote ${values.out}/train.jsonl, val.jsonl, stats.json`,
  );
  for (const t of stats.too_long) {
    console.error(`left out (longer than --max-seq-length): ${t.id} with ${t.num_tokens} tokens`);
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`prepare: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
