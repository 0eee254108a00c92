import type { BenchContext, BenchRow } from "../bench/harness.ts";
/**
 * Tokenizer speed: encode the bundled Bengali sample (question and answer texts, one call
 * per text, as DatasetProcessor does) on one core. Reports ms per MB of UTF-8 input and
 * throughput in GB/s (bytes/s / 1e9). The target is at least 2 MB/s.
 *
 * Uses the tokenizer in data/sample/tokenizer when present, else the in-memory fixture
 * tokenizer of the same layout (trained on the sample); the `shape` column says which.
 */
import { CsvCorpusReader } from "./corpus.ts";
import { SAMPLE_CSV } from "./test_fixtures.ts";
import { fixtureTokenizer } from "./test_fixtures.ts";
import { LlamaTokenizer } from "./tokenizer.ts";

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  let tok: LlamaTokenizer;
  let which: string;
  try {
    tok = await LlamaTokenizer.fromDir(new URL("./sample/tokenizer", import.meta.url).pathname);
    which = `sample tokenizer V=${tok.vocabSize}`;
  } catch {
    tok = fixtureTokenizer();
    which = `fixture tokenizer V=${tok.vocabSize}`;
  }
  const recs = await new CsvCorpusReader(SAMPLE_CSV).read();
  const texts = recs.flatMap((r) => r.messages.map((m) => m.content));
  const bytes = texts.reduce((s, t) => s + new TextEncoder().encode(t).length, 0);
  // Warm-up pass (JIT and the BPE word cache), then timed passes; report the median.
  for (const t of texts) tok.encode(t);
  const reps = ctx.quick ? 3 : 9;
  const times: number[] = [];
  let tokens = 0;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    tokens = 0;
    for (const t of texts) tokens += tok.encode(t).length;
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const ms = times[Math.floor(times.length / 2)];
  const bytesPerS = bytes / (ms / 1000);
  return [{
    name: "tokenizer_encode_bengali",
    backend: "cpu",
    adapter: "cpu",
    shape: `${texts.length} texts, ${(bytes / 1e6).toFixed(3)} MB, ${tokens} tokens, ${which}`,
    ms: ms / (bytes / 1e6),
    tflops: null,
    gbps: bytesPerS / 1e9,
  }];
}

if (import.meta.main) {
  for (const row of await bench({ gpus: [], quick: Deno.args.includes("--quick") })) {
    console.log(
      `${row.name} ${row.shape}: ${row.ms.toFixed(1)} ms/MB, ${(row.gbps! * 1000).toFixed(2)} MB/s`,
    );
  }
}
