/**
 * deno task tokenize --tokenizer DIR (--text "..." | --file F) [--special] [--decode]
 *
 * Prints {"ids": [...], "count": N} as JSON (with --decode also "text", the decoded ids).
 */
import { parseArgs } from "node:util";
import { LlamaTokenizer, readTextStrict } from "../data/mod.ts";

const USAGE = `Usage: deno task tokenize [--tokenizer DIR] (--text "..." | --file FILE) [--special] [--decode]
  --tokenizer DIR  folder with tokenizer.json + tokenizer_config.json (default data/sample/tokenizer)
  --text TEXT      text to encode
  --file FILE      UTF-8 file to encode
  --special        add special tokens (Llama 3: prepend <|begin_of_text|>)
  --decode         also print the decoded text`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      tokenizer: { type: "string", default: "data/sample/tokenizer" },
      text: { type: "string" },
      file: { type: "string" },
      special: { type: "boolean", default: false },
      decode: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if ((values.text === undefined) === (values.file === undefined)) {
    throw new Error(`give exactly one of --text or --file.\n\n${USAGE}`);
  }
  const tok = await LlamaTokenizer.fromDir(values.tokenizer!);
  const text = values.text ?? await readTextStrict(values.file!);
  const ids = Array.from(tok.encode(text, { addSpecialTokens: values.special }));
  const out: Record<string, unknown> = { ids, count: ids.length };
  if (values.decode) out.text = tok.decode(ids);
  console.log(JSON.stringify(out));
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`tokenize: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
