import assert from "node:assert/strict";
import { join } from "node:path";
import { writeFixtureTokenizerDir } from "../data/test_fixtures.ts";

const ROOT = new URL("..", import.meta.url).pathname;

async function run(script: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, script), ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("prepare CLI: writes the three files; bad input exits 1 with a message and writes nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const tokDir = await writeFixtureTokenizerDir(join(dir, "tok"));
    const csv = join(dir, "c.csv");
    await Deno.writeTextFile(
      csv,
      "Topics,Question-Title,Questions,Answers\n" +
        'কাজ,চাপ,"অফিসে খুব চাপ, কী করব?","বুঝতে পারছি, একটু বিশ্রাম নিন।"\n' +
        "পরিবার,দূরত্ব,মায়ের সাথে কথা হয় না।,মাকে একটা ছোট বার্তা পাঠিয়ে দেখুন।\n",
    );
    const ok = await run("cli/prepare.ts", [
      "--input",
      csv,
      "--out",
      join(dir, "out"),
      "--tokenizer",
      tokDir,
      "--val-fraction",
      "0.5",
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stderr, /2 rows read; kept 2 \(train 1, val 1\)/);
    assert.deepEqual([...Deno.readDirSync(join(dir, "out"))].map((e) => e.name).sort(), [
      "stats.json",
      "train.jsonl",
      "val.jsonl",
    ]);

    const bad = join(dir, "bad.csv");
    await Deno.writeTextFile(bad, "Topic,Questions,Answers\nx,y,z\n");
    const r = await run("cli/prepare.ts", [
      "--input",
      bad,
      "--out",
      join(dir, "out2"),
      "--tokenizer",
      tokDir,
    ]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /prepare: .*bad\.csv:1: missing columns "Topics", "Question-Title"/);
    await assert.rejects(Deno.stat(join(dir, "out2")), Deno.errors.NotFound);

    const noTok = await run("cli/prepare.ts", [
      "--input",
      csv,
      "--out",
      join(dir, "out3"),
      "--tokenizer",
      join(dir, "none"),
    ]);
    assert.equal(noTok.code, 1);
    assert.match(noTok.stderr, /none\/tokenizer\.json: file not found/);

    const t = await run("cli/tokenize.ts", ["--tokenizer", tokDir, "--text", "আমি ভালো আছি।", "--decode"]);
    assert.equal(t.code, 0, t.stderr);
    const j = JSON.parse(t.stdout);
    assert.equal(j.text, "আমি ভালো আছি।");
    assert.equal(j.count, j.ids.length);
    const t2 = await run("cli/tokenize.ts", ["--tokenizer", tokDir]);
    assert.equal(t2.code, 1);
    assert.match(t2.stderr, /exactly one of --text or --file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
