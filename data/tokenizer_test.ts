import assert from "node:assert/strict";
import { join } from "node:path";
import { ChatTemplate } from "./chat_template.ts";
import { buildLlama3TokenizerJson, BYTE_TO_UNICODE, LLAMA3_SPLIT_REGEX_JS } from "./bpe_trainer.ts";
import { fixtureTokenizer, fixtureTokenizerFiles, HARD_STRINGS } from "./test_fixtures.ts";
import { LlamaTokenizer } from "./tokenizer.ts";

const GOLDEN = new URL("./tokenizer_golden.json", import.meta.url).pathname;
const goldenExists = (() => {
  try {
    Deno.statSync(GOLDEN);
    return true;
  } catch {
    return false;
  }
})();

interface Golden {
  tokenizer_dir: string;
  encode: { text: string; ids: number[]; ids_with_special: number[]; decoded: string }[];
  chat: {
    messages: { role: "system" | "user" | "assistant"; content: string }[];
    add_generation_prompt: boolean;
    date_string: string;
    text: string;
    ids: number[];
  }[];
}

Deno.test({
  name: "golden: ids, decode and chat rendering equal Hugging Face tokenizers/transformers" +
    (goldenExists
      ? ""
      : " (SKIPPED: data/tokenizer_golden.json missing; run bench/reference/make_tokenizer_golden.py)"),
  ignore: !goldenExists,
  fn: async () => {
    const g: Golden = JSON.parse(await Deno.readTextFile(GOLDEN));
    const dir = new URL("../" + g.tokenizer_dir, import.meta.url).pathname;
    const tok = await LlamaTokenizer.fromDir(dir);
    assert.ok(g.encode.length > 0 && g.chat.length > 0);
    for (const c of g.encode) {
      assert.deepEqual(Array.from(tok.encode(c.text)), c.ids, `ids of ${JSON.stringify(c.text)}`);
      assert.deepEqual(
        Array.from(tok.encode(c.text, { addSpecialTokens: true })),
        c.ids_with_special,
        `ids (add_special_tokens) of ${JSON.stringify(c.text)}`,
      );
      assert.equal(tok.decode(c.ids), c.decoded, `decode of ${JSON.stringify(c.text)}`);
    }
    const template = ChatTemplate.fromTokenizer(tok);
    for (const c of g.chat) {
      const t = new ChatTemplate(template.source, { ...template.options, dateString: c.date_string });
      const text = t.render(c.messages, { addGenerationPrompt: c.add_generation_prompt });
      assert.equal(text, c.text, "chat template rendering");
      assert.deepEqual(Array.from(tok.encode(text)), c.ids, "ids of the rendered chat");
    }
  },
});

Deno.test("round trip: decode(encode(s)) === s on hard strings and the whole sample", () => {
  const tok = fixtureTokenizer();
  for (const s of HARD_STRINGS) {
    const ids = tok.encode(s);
    assert.ok(ids instanceof Int32Array);
    assert.equal(tok.decode(ids), s, JSON.stringify(s));
  }
  const csv = Deno.readTextFileSync(new URL("./sample/bengali_empathetic_sample.csv", import.meta.url));
  assert.equal(tok.decode(tok.encode(csv)), csv);
});

Deno.test("special tokens: ids, matched whole in text, BOS only with addSpecialTokens, skipSpecialTokens", () => {
  const tok = fixtureTokenizer();
  const base = tok.vocabSize - fixtureTokenizerFiles().json.added_tokens.length;
  assert.equal(tok.bosId, base);
  assert.deepEqual(tok.eosIds, [base + 1, base + 8, base + 9]);
  assert.equal(tok.eotId, base + 9);
  assert.equal(tok.padId, base + 4);
  assert.equal(tok.vocabSize, 1024);
  const ids = Array.from(tok.encode("<|begin_of_text|>hi<|eot_id|>"));
  assert.equal(ids[0], tok.bosId);
  assert.equal(ids.at(-1), tok.eotId);
  assert.equal(ids.filter((i) => tok.isSpecial(i)).length, 2);
  const plain = Array.from(tok.encode("hi"));
  assert.deepEqual(Array.from(tok.encode("hi", { addSpecialTokens: true })), [tok.bosId, ...plain]);
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), "hi");
  assert.equal(tok.decode([]), "");
});

Deno.test("pre-tokenization follows the Llama 3 regex: no token crosses a pre-token boundary", () => {
  const tok = fixtureTokenizer();
  for (
    const s of [
      "12345678 and 1234567",
      "I'M they're WE'LL",
      "a\n\nb\r\n c  d   e",
      "hello,world!! ok",
      "x  \n\n  y",
    ]
  ) {
    const ends = new Set<number>();
    let pos = 0;
    for (const id of tok.encode(s)) {
      pos += tok.decode([id]).length; // ASCII only: one char per byte
      ends.add(pos);
    }
    assert.equal(pos, s.length);
    for (const m of s.matchAll(LLAMA3_SPLIT_REGEX_JS)) {
      assert.ok(
        ends.has(m.index! + m[0].length),
        `boundary after ${JSON.stringify(s.slice(0, m.index! + m[0].length))}`,
      );
    }
  }
  // \p{N}{1,3}: digits come in groups of at most 3.
  assert.ok(Array.from(tok.encode("12345678"), (i) => tok.decode([i]).length).every((n) => n <= 3));
});

Deno.test("ignore_merges: a pre-token that is in the vocabulary is emitted whole", () => {
  const sym = BYTE_TO_UNICODE.slice().sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);
  // "abc" is in the vocabulary but no merge builds it; only "a b" merges.
  const vocab = [...sym, "ab", "abc"];
  const json = buildLlama3TokenizerJson(vocab, [["a", "b"]], vocab.length + 11);
  const tok = new LlamaTokenizer(json, {}, { tokenizerPath: "t.json", configPath: "c.json" });
  assert.deepEqual(Array.from(tok.encode("abc")), [vocab.indexOf("abc")]);
  assert.deepEqual(Array.from(tok.encode("abd")), [vocab.indexOf("ab"), vocab.indexOf("d")]);
  (json.model as { ignore_merges: boolean }).ignore_merges = false;
  const tok2 = new LlamaTokenizer(json, {}, { tokenizerPath: "t.json", configPath: "c.json" });
  assert.deepEqual(Array.from(tok2.encode("abc")), [vocab.indexOf("ab"), vocab.indexOf("c")]);
});

Deno.test("errors: missing files, other tokenizer kinds, foreign ids", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(LlamaTokenizer.fromDir(dir), (e: Error) => {
      assert.match(e.message, /tokenizer\.json: file not found/);
      assert.match(e.message, /--tokenizer/);
      return true;
    });
    const { json, config } = fixtureTokenizerFiles();
    const uni = { ...structuredClone(json), model: { type: "Unigram", vocab: [["a", 0]] } };
    await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(uni));
    await assert.rejects(LlamaTokenizer.fromDir(dir), /tokenizer_config\.json: file not found/);
    await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(config));
    await assert.rejects(
      LlamaTokenizer.fromDir(dir),
      /tokenizer\.json: field "model\.type" is "Unigram", expected "BPE".*byte-level BPE/,
    );
    const sp = structuredClone(json) as unknown as Record<string, Record<string, unknown>>;
    sp.model.byte_fallback = true;
    sp.pre_tokenizer = { type: "Metaspace" };
    await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(sp));
    await assert.rejects(LlamaTokenizer.fromDir(dir), /byte_fallback" is true/);
    delete sp.model.byte_fallback;
    await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(sp));
    await assert.rejects(
      LlamaTokenizer.fromDir(dir),
      /"pre_tokenizer" \(type "Metaspace"\) has no ByteLevel/,
    );
    await Deno.writeTextFile(join(dir, "tokenizer.json"), "{ not json");
    await assert.rejects(LlamaTokenizer.fromDir(dir), /tokenizer\.json: not valid JSON/);
    await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(json));
    await Deno.writeTextFile(
      join(dir, "tokenizer_config.json"),
      JSON.stringify({ ...config, pad_token: "<pad>" }),
    );
    await assert.rejects(LlamaTokenizer.fromDir(dir), /pad_token "<pad>" is not a token/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const tok = fixtureTokenizer();
  assert.throws(
    () => tok.decode([5, 999999]),
    /token id 999999 is outside this tokenizer's vocabulary \[0, 1024\)/,
  );
});
