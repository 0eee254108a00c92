import assert from "node:assert/strict";
import { join } from "node:path";
import { ChatTemplate, IGNORE_INDEX } from "./chat_template.ts";
import { type CorpusReader, type CorpusRecord, CsvCorpusReader } from "./corpus.ts";
import { cleanText, DatasetProcessor, percentile, readPreparedJsonl } from "./dataset_processor.ts";
import { fixtureTokenizer, SAMPLE_CSV } from "./test_fixtures.ts";

const tok = fixtureTokenizer();
const template = ChatTemplate.fromTokenizer(tok);

class ListReader implements CorpusReader {
  constructor(readonly records: CorpusRecord[], readonly path = "mem") {}
  read() {
    return Promise.resolve(structuredClone(this.records));
  }
}
const rec = (id: string, q: string, a: string, topic = "t"): CorpusRecord => ({
  id,
  messages: [{ role: "user", content: q }, { role: "assistant", content: a }],
  meta: { topic },
});

Deno.test("cleanText: NFC, whitespace runs, line ends, zero-width junk, keeps ZWJ/ZWNJ", () => {
  assert.equal(cleanText("  আমি \t  ভালো\r\n\r\n\r\n\r\nআছি  "), "আমি ভালো\n\nআছি");
  assert.equal(cleanText("ক\u09CD\u200Dষ"), "ক\u09CD\u200Dষ");
  assert.equal(cleanText("a\u200Bb\uFEFFc"), "abc");
  // NFC: the two-part vowel sign ো (U+09C7 U+09BE) composes to U+09CB.
  assert.equal(cleanText("ক\u09C7\u09BE"), "ক\u09CB");
  assert.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90), 9);
  assert.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50), 5);
  assert.equal(percentile([7], 99), 7);
});

Deno.test("prepare: drops by reason, reports too-long examples without cutting, labels assistant-only", async () => {
  const long = "অনেক লম্বা উত্তর। ".repeat(80);
  const records = [
    rec("r1", "আমার খুব মন খারাপ।", "আমি বুঝতে পারছি, পাশে আছি।"),
    rec("r2", "আমার খুব মন খারাপ।", "আমি বুঝতে পারছি, পাশে আছি।"), // duplicate
    rec("r3", "   ", "উত্তর আছে কিন্তু প্রশ্ন নেই"), // empty
    rec("r4", "প্রশ্নটা বেশ লম্বা", "হুঁ"), // too short
    rec("r5", "একটা লম্বা প্রশ্ন?", long), // too long for 256
    rec("r6", "পরীক্ষা নিয়ে ভয় লাগে।", "ভয় পাওয়া স্বাভাবিক, ধীরে শ্বাস নিন।"),
  ];
  const p = new DatasetProcessor(tok, template, { maxSeqLength: 256, valFraction: 0 });
  const { train, val, stats } = await p.prepare(new ListReader(records));
  assert.deepEqual(stats.dropped, { empty: 1, too_short: 1, duplicate: 1, too_long: 1 });
  assert.equal(stats.too_long.length, 1);
  assert.equal(stats.too_long[0].id, "r5");
  assert.ok(stats.too_long[0].num_tokens > 256);
  assert.deepEqual(train.map((e) => e.id), ["r1", "r6"]);
  assert.equal(val.length, 0);
  for (const e of train) {
    assert.equal(e.input_ids.length, e.num_tokens);
    assert.equal(e.labels.filter((l) => l !== IGNORE_INDEX).length, e.num_label_tokens);
    const lab = e.labels.filter((l) => l !== IGNORE_INDEX);
    assert.equal(tok.decode(lab), e.messages[1].content + "<|eot_id|>");
  }
  assert.equal(stats.longest?.id, "r6");
});

Deno.test("prepare: seeded split is reproducible, disjoint, sized by val-fraction; system prompt with topic", async () => {
  const reader = new CsvCorpusReader(SAMPLE_CSV);
  const a = await new DatasetProcessor(tok, template, { seed: 3407 }).prepare(reader);
  const b = await new DatasetProcessor(tok, template, { seed: 3407 }).prepare(reader);
  const c = await new DatasetProcessor(tok, template, { seed: 1 }).prepare(reader);
  assert.deepEqual(a.val.map((e) => e.id), b.val.map((e) => e.id));
  assert.notDeepEqual(a.val.map((e) => e.id), c.val.map((e) => e.id));
  assert.equal(a.val.length, Math.round(a.stats.kept * 0.1));
  const trainIds = new Set(a.train.map((e) => e.id));
  assert.ok(a.val.every((e) => !trainIds.has(e.id)));
  assert.equal(a.train.length + a.val.length, a.stats.kept);
  assert.equal(a.stats.rows_read, 224);
  assert.deepEqual(a.stats.dropped, { empty: 1, too_short: 0, duplicate: 1, too_long: 0 });
  const s = await new DatasetProcessor(tok, template, { systemPrompt: "বিষয়: {topic}" }).prepare(
    new ListReader([rec("x", "প্রশ্ন আছে", "উত্তর দিলাম এখানে", "শোক")]),
  );
  assert.deepEqual(s.train[0].messages[0], { role: "system", content: "বিষয়: শোক" });
  assert.ok(tok.decode(s.train[0].input_ids).includes("Today Date: 26 Jul 2024\n\nবিষয়: শোক<|eot_id|>"));
  assert.throws(() => new DatasetProcessor(tok, template, { valFraction: 1.5 }), /val-fraction is 1.5/);
});

Deno.test("run: writes train/val/stats at once, refuses to clobber, --overwrite replaces, failures write nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = join(dir, "prepared");
    const p = new DatasetProcessor(tok, template);
    const reader = new CsvCorpusReader(SAMPLE_CSV);
    const { stats } = await p.run(reader, out);
    const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
    assert.deepEqual(names, ["stats.json", "train.jsonl", "val.jsonl"]);
    const train = await readPreparedJsonl(join(out, "train.jsonl"));
    assert.equal(train.length, stats.train);
    assert.deepEqual(Object.keys(train[0]).sort(), [
      "id",
      "input_ids",
      "labels",
      "messages",
      "meta",
      "num_label_tokens",
      "num_tokens",
    ]);
    const written = JSON.parse(await Deno.readTextFile(join(out, "stats.json")));
    assert.equal(written.kept, stats.kept);
    for (const k of ["p50", "p90", "p99", "max"]) assert.ok(written.token_length[k] > 0);
    // Refuses an existing non-empty folder, before doing the work.
    const before = await Deno.readTextFile(join(out, "train.jsonl"));
    await assert.rejects(p.run(reader, out), /folder exists and is not empty; refusing to overwrite/);
    // A failing input leaves the existing output untouched, even with overwrite.
    await assert.rejects(
      p.run(new CsvCorpusReader(join(dir, "missing.csv")), out, { overwrite: true }),
      /file not found/,
    );
    assert.equal(await Deno.readTextFile(join(out, "train.jsonl")), before);
    // Overwrite replaces it with the new content.
    await new DatasetProcessor(tok, template, { seed: 5 }).run(reader, out, { overwrite: true });
    assert.equal(JSON.parse(await Deno.readTextFile(join(out, "stats.json"))).options.seed, 5);
    // No temporary folders left behind.
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["prepared"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
