import assert from "node:assert/strict";
import { join } from "node:path";
import { CsvCorpusReader, JsonlChatReader, readerFor } from "./corpus.ts";
import { SAMPLE_CSV } from "./test_fixtures.ts";

async function withFile(name: string, content: string | Uint8Array, fn: (path: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  const path = join(dir, name);
  try {
    if (typeof content === "string") await Deno.writeTextFile(path, content);
    else await Deno.writeFile(path, content);
    await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test('CSV: RFC 4180 quoting, embedded newlines, "" escapes, BOM, CRLF, column order, ids by start line', async () => {
  const csv = "\uFEFFAnswers,Topics,Question-Title,Questions\r\n" +
    '"উত্তর, কমা সহ","পরিবার","শিরোনাম","প্রশ্ন ""উদ্ধৃতি"" সহ"\r\n' +
    '"দুই\r\nলাইনের উত্তর",কাজ,,শুধু প্রশ্ন\r\n' +
    "শেষ,বিষয়,শিরোনাম,প্রশ্ন\r\n";
  await withFile("c.csv", csv, async (p) => {
    const recs = await new CsvCorpusReader(p).read();
    assert.equal(recs.length, 3);
    assert.deepEqual(recs[0], {
      id: "c.csv:2",
      messages: [
        { role: "user", content: 'শিরোনাম\nপ্রশ্ন "উদ্ধৃতি" সহ' },
        { role: "assistant", content: "উত্তর, কমা সহ" },
      ],
      meta: { topic: "পরিবার" },
    });
    assert.equal(recs[1].messages[0].content, "শুধু প্রশ্ন");
    assert.equal(recs[1].messages[1].content, "দুই\r\nলাইনের উত্তর");
    assert.equal(recs[2].id, "c.csv:5");
  });
});

Deno.test("CSV: the bundled sample has the corpus columns and at least 220 rows", async () => {
  const recs = await new CsvCorpusReader(SAMPLE_CSV).read();
  assert.ok(recs.length >= 220);
  assert.ok(new Set(recs.map((r) => r.meta.topic)).size >= 12);
  assert.ok(recs.some((r) => r.messages[1].content.includes("\n")), "has embedded newlines");
});

Deno.test("CSV errors: malformed row names its line; missing columns named with those found; empty; not UTF-8", async () => {
  const head = "Topics,Question-Title,Questions,Answers\n";
  await withFile("bad.csv", head + 'a,b,c,d\na,b,c,d\na,"b,c,d\n', async (p) => {
    await assert.rejects(new CsvCorpusReader(p).read(), (e: Error) => {
      assert.match(e.message, /bad\.csv:4: malformed CSV near line 4/);
      assert.match(e.message, /double quotes/);
      return true;
    });
  });
  await withFile("cols.csv", head + "a,b,c,d\na,b,c\n", async (p) => {
    await assert.rejects(new CsvCorpusReader(p).read(), /cols\.csv:3: malformed CSV/);
  });
  await withFile("h.csv", "Topic,Title,Questions,Answers\nx,y,z,w\n", async (p) => {
    await assert.rejects(
      new CsvCorpusReader(p).read(),
      /h\.csv:1: missing columns "Topics", "Question-Title"; the header has "Topic", "Title", "Questions", "Answers"/,
    );
  });
  await withFile("e.csv", "", async (p) => {
    await assert.rejects(new CsvCorpusReader(p).read(), /e\.csv: file is empty/);
  });
  await withFile("only.csv", head, async (p) => {
    await assert.rejects(new CsvCorpusReader(p).read(), /only\.csv: has a header but no rows/);
  });
  const latin1 = new Uint8Array([...new TextEncoder().encode(head + "a,b,c,"), 0xe9, 0x0a]);
  await withFile("l.csv", latin1, async (p) => {
    await assert.rejects(
      new CsvCorpusReader(p).read(),
      /l\.csv: not valid UTF-8 \(first bad byte 0xe9 at byte 46, line 2\)\. Save the file as UTF-8/,
    );
  });
  await assert.rejects(new CsvCorpusReader("/nonexistent/x.csv").read(), /x\.csv: file not found/);
});

Deno.test("JSONL chats: reads messages, ids, string meta; errors name the line", async () => {
  const good = [
    JSON.stringify({
      id: "a1",
      topic: "t",
      messages: [{ role: "user", content: "q" }, { role: "assistant", content: "r" }],
    }),
    "",
    JSON.stringify({ messages: [{ role: "user", content: "q2" }, { role: "assistant", content: "r2" }] }),
  ].join("\n");
  await withFile("c.jsonl", good, async (p) => {
    const recs = await readerFor(p).read();
    assert.deepEqual(recs.map((r) => r.id), ["a1", "c.jsonl:3"]);
    assert.deepEqual(recs[0].meta, { topic: "t" });
  });
  await withFile("b.jsonl", good + "\n{oops\n", async (p) => {
    await assert.rejects(new JsonlChatReader(p).read(), /b\.jsonl:4: not valid JSON/);
  });
  await withFile("r.jsonl", JSON.stringify({ messages: [{ role: "bot", content: "x" }] }), async (p) => {
    await assert.rejects(new JsonlChatReader(p).read(), /r\.jsonl:1: messages\[0\] is .*"bot"/);
  });
  await withFile("m.jsonl", JSON.stringify({ text: "x" }), async (p) => {
    await assert.rejects(new JsonlChatReader(p).read(), /m\.jsonl:1: field "messages" is missing/);
  });
  assert.throws(() => readerFor("x.parquet"), /unknown corpus format/);
});
