import assert from "node:assert/strict";
import { BYTE_TO_UNICODE, LLAMA3_SPECIAL_TOKENS, toByteLevel, trainByteLevelBpe } from "./bpe_trainer.ts";

Deno.test("byte-level table is a bijection of 256 bytes onto printable code points", () => {
  assert.equal(new Set(BYTE_TO_UNICODE).size, 256);
  assert.equal(BYTE_TO_UNICODE[0x20], "Ġ");
  assert.equal(BYTE_TO_UNICODE[0x0a], "Ċ");
  assert.equal(BYTE_TO_UNICODE[0x41], "A");
  assert.equal(toByteLevel("অ"), "à¦ħ");
});

Deno.test("trainer: vocabulary layout, merges closed over the vocabulary, specials after learned ids", () => {
  const text = "আমি ভালো আছি। আমি ভালো আছি। hello hello hello world world";
  const j = trainByteLevelBpe([text, text, text], { vocabSize: 300 });
  const vocab = j.model.vocab;
  const learned = Object.keys(vocab).length;
  assert.ok(learned > 256, "learned some merges");
  for (const b of BYTE_TO_UNICODE) assert.ok(b in vocab, `byte symbol ${b} in vocab`);
  for (const [a, b] of j.model.merges) {
    assert.ok(a in vocab && b in vocab && a + b in vocab, `merge ${a} ${b} closed`);
  }
  assert.equal(j.added_tokens.length + learned, 300);
  LLAMA3_SPECIAL_TOKENS.forEach((t, k) =>
    assert.deepEqual([j.added_tokens[k].content, j.added_tokens[k].id], [t, learned + k])
  );
  assert.equal(j.added_tokens.at(-1)!.content.startsWith("<|reserved_special_token_"), true);
  assert.equal(j.model.ignore_merges, true);
  assert.ok(j.model.merges.some(([a, b]) => a + b === "hello" || a + b === "Ġhello"));
});

Deno.test("trainer refuses a vocabulary too small for bytes and specials", () => {
  assert.throws(() => trainByteLevelBpe(["x"], { vocabSize: 200 }), /at least 267/);
});
