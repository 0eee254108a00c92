import assert from "node:assert/strict";
import {
  type ChatMessage,
  ChatTemplate,
  encodeChat,
  encodePrompt,
  IGNORE_INDEX,
  strftimeFixed,
} from "./chat_template.ts";
import { fixtureTokenizer } from "./test_fixtures.ts";

const HEADER = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" +
  "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

Deno.test("Llama 3.1 template renders the documented format (system header always, trimmed content)", () => {
  const tok = fixtureTokenizer();
  const t = ChatTemplate.fromTokenizer(tok);
  const msgs: ChatMessage[] = [
    { role: "user", content: "  আমার মন খারাপ।\n" },
    { role: "assistant", content: "বুঝতে পারছি। " },
  ];
  assert.equal(
    t.render(msgs),
    HEADER + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nআমার মন খারাপ।<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\nবুঝতে পারছি।<|eot_id|>",
  );
  assert.equal(
    t.render([{ role: "system", content: " sys " }, msgs[0]], { addGenerationPrompt: true }),
    HEADER + "sys<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nআমার মন খারাপ।<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\n",
  );
  const other = new ChatTemplate(t.source, { ...t.options, dateString: "01 Jan 2025" });
  assert.ok(other.render(msgs).includes("Today Date: 01 Jan 2025\n"));
});

Deno.test("templates calling strftime_now get the fixed date, not today's", () => {
  const t = new ChatTemplate('{{ strftime_now("%d %b %Y") }}|{{ strftime_now("%-d %B") }}', {
    bosToken: "<s>",
  });
  assert.equal(t.render([]), "26 Jul 2024|26 July");
  assert.equal(strftimeFixed("%Y-%m-%d"), "2024-07-26");
});

Deno.test("encodeChat: one BOS, ids equal encoding the rendering, labels only on assistant content + <|eot_id|>", () => {
  const tok = fixtureTokenizer();
  const t = ChatTemplate.fromTokenizer(tok);
  const msgs: ChatMessage[] = [
    { role: "system", content: "তুমি একজন সহানুভূতিশীল সহকারী।" },
    { role: "user", content: "পরীক্ষার আগে ভয় লাগে।" },
    { role: "assistant", content: "ভয় পাওয়া স্বাভাবিক। ধীরে শ্বাস নিন।" },
    { role: "user", content: "ধন্যবাদ, 12345!" },
    { role: "assistant", content: "  ভালো থাকবেন 😀\n" },
  ];
  const { inputIds, labels } = encodeChat(tok, t, msgs);
  assert.equal(inputIds.length, labels.length);
  assert.equal(inputIds[0], tok.bosId);
  assert.equal(Array.from(inputIds).filter((i) => i === tok.bosId).length, 1, "no double BOS");
  assert.deepEqual(Array.from(inputIds), Array.from(tok.encode(t.render(msgs))));
  // Labels are the ids themselves or -100.
  labels.forEach((l, k) => assert.ok(l === IGNORE_INDEX || l === inputIds[k]));
  // The labelled runs decode to exactly each assistant turn's (trimmed) content + <|eot_id|>.
  const runs: number[][] = [];
  let cur: number[] | null = null;
  for (const l of labels) {
    if (l === IGNORE_INDEX) cur = null;
    else {
      if (!cur) runs.push(cur = []);
      cur.push(l);
    }
  }
  assert.deepEqual(runs.map((r) => tok.decode(r)), [
    "ভয় পাওয়া স্বাভাবিক। ধীরে শ্বাস নিন।<|eot_id|>",
    "ভালো থাকবেন 😀<|eot_id|>",
  ]);
  // Prompt for generation ends with the assistant header and has one BOS.
  const p = encodePrompt(tok, t, msgs.slice(0, 2));
  assert.equal(tok.decode(p).endsWith("<|start_header_id|>assistant<|end_header_id|>\n\n"), true);
  assert.equal(Array.from(p).filter((i) => i === tok.bosId).length, 1);
  // The prompt is a prefix of the training sequence up to the first answer.
  assert.deepEqual(Array.from(inputIds.subarray(0, p.length)), Array.from(p));
});

Deno.test("encodeChat errors: empty chat, assistant first, bad role, template without chat_template", () => {
  const tok = fixtureTokenizer();
  const t = ChatTemplate.fromTokenizer(tok);
  assert.throws(() => encodeChat(tok, t, []), /at least one message/);
  assert.throws(
    () => encodeChat(tok, t, [{ role: "assistant", content: "x" }]),
    /first message is an assistant turn/,
  );
  assert.throws(
    () => encodeChat(tok, t, [{ role: "robot" as "user", content: "x" }]),
    /message 0 has role "robot"/,
  );
  const noTpl = Object.create(tok, { chatTemplate: { get: () => null } });
  assert.throws(() => ChatTemplate.fromTokenizer(noTpl), /field "chat_template" is missing/);
  assert.throws(() => new ChatTemplate("{% if %}", { bosToken: "<s>" }), /does not parse as Jinja/);
});
