/**
 * deno task rate --run DIR [--include-skipped]
 *
 * Human rating of a run's generated responses in the terminal: shows each prompt, reference and
 * response of DIR/GeneratedResponses.json and asks empathy, fluency and relevance on 1-5 plus an
 * optional comment ('s' skips a response, 'q' quits). Every answer is saved to
 * DIR/human_ratings.json, so a later session resumes where this one stopped. The aggregates go to
 * the run's entry of LLAMAExperiments.json (DIR's own, else the one in DIR's parent folder) and to
 * the "Human evaluation" section of DIR/evaluation_results.md when that file exists.
 */
import { parseArgs } from "node:util";
import { rateRun } from "../model/human_eval.ts";
import { stdinLines } from "./mod.ts";

const USAGE = `Usage: deno task rate --run DIR [--include-skipped]
  --run DIR            run folder with GeneratedResponses.json
  --include-skipped    ask again the responses skipped in earlier sessions`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      run: { type: "string" },
      "include-skipped": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!values.run) throw new Error(`give the run folder with --run DIR.\n\n${USAGE}`);
  const encoder = new TextEncoder();
  const lines = stdinLines();
  const write = (text: string) => void Deno.stdout.writeSync(encoder.encode(text));
  await rateRun(values.run, {
    write,
    readLine: async (message) => {
      write(message);
      const next = await lines.next();
      return next.done ? null : next.value;
    },
  }, { includeSkipped: values["include-skipped"] });
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`rate: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
