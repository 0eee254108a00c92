import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  type BleuOptions,
  type BleuSmoothing,
  type BleuTokenizer,
  corpusBleu,
  corpusRougeL,
  lcsLength,
  perplexity,
  rougeL,
  rougeTokenize,
  SACREBLEU_VERSION,
  tokenize13a,
  tokenizeIntl,
} from "./metrics.ts";

const GOLDEN = fileURLToPath(new URL("./metric_golden.json", import.meta.url));

interface GoldenCase {
  config: { tokenize: BleuTokenizer; smooth_method: BleuSmoothing; lowercase: boolean };
  subset: string;
  indices: number[];
  score: number;
  precisions: number[];
  bp: number;
  sys_len: number;
  ref_len: number;
  counts: number[];
  totals: number[];
  signature: string;
}

interface Golden {
  sacrebleu_version: string;
  pairs: { hypothesis: string; reference: string }[];
  tokens: Record<"13a" | "intl", string[]>;
  cases: GoldenCase[];
}

async function readGolden(): Promise<Golden> {
  try {
    return JSON.parse(await Deno.readTextFile(GOLDEN));
  } catch (e) {
    throw new Error(
      `${GOLDEN}: cannot read the sacreBLEU golden file (${(e as Error).message}). Make it with ` +
        "`python3 bench/reference/make_metric_golden.py` (needs `pip install sacrebleu`) from the repository root.",
    );
  }
}

function close(actual: number, expected: number, what: string) {
  const tol = 1e-9 * Math.max(1, Math.abs(expected));
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual}, sacreBLEU ${expected}`);
}

Deno.test("tokenizers match sacreBLEU 13a and intl token for token", async () => {
  const golden = await readGolden();
  golden.pairs.forEach(({ hypothesis }, i) => {
    const stripped = hypothesis.replace(/\s+$/u, "");
    assert.equal(
      tokenize13a(stripped),
      golden.tokens["13a"][i],
      `13a, pair ${i}: ${JSON.stringify(hypothesis)}`,
    );
    assert.equal(
      tokenizeIntl(stripped),
      golden.tokens.intl[i],
      `intl, pair ${i}: ${JSON.stringify(hypothesis)}`,
    );
  });
});

Deno.test("corpus BLEU matches sacreBLEU (scores, precisions, lengths, signature)", async () => {
  const golden = await readGolden();
  assert.equal(
    SACREBLEU_VERSION,
    golden.sacrebleu_version,
    `data/metric_golden.json was made by sacreBLEU ${golden.sacrebleu_version} but data/metrics.ts names ` +
      `${SACREBLEU_VERSION}: check the behaviour against it and update SACREBLEU_VERSION`,
  );
  assert.ok(golden.cases.length > 20, "the golden file has too few cases");
  for (const c of golden.cases) {
    const hyps = c.indices.map((i) => golden.pairs[i].hypothesis);
    const refs = c.indices.map((i) => golden.pairs[i].reference);
    const options: BleuOptions = {
      tokenize: c.config.tokenize,
      smoothMethod: c.config.smooth_method,
      lowercase: c.config.lowercase,
    };
    const got = corpusBleu(hyps, refs, options);
    const what = `${c.subset} ${JSON.stringify(c.config)}`;
    assert.equal(got.hypLen, c.sys_len, `${what}: hyp_len`);
    assert.equal(got.refLen, c.ref_len, `${what}: ref_len`);
    assert.deepEqual(got.counts, c.counts, `${what}: matched n-gram counts`);
    assert.deepEqual(got.totals, c.totals, `${what}: n-gram totals`);
    got.precisions.forEach((p, n) => close(p, c.precisions[n], `${what}: precision ${n + 1}`));
    close(got.bp, c.bp, `${what}: bp`);
    close(got.score, c.score, `${what}: score`);
    assert.equal(got.signature, c.signature, `${what}: signature`);
  }
});

Deno.test("corpus BLEU: identical corpus scores 100, shapes and bad input", () => {
  const r = corpusBleu(["a b c d e", "f g h i"], ["a b c d e", "f g h i"]);
  assert.ok(Math.abs(r.score - 100) < 1e-9, `score ${r.score}`);
  assert.equal(r.bp, 1);
  assert.equal(r.ratio, 1);
  assert.equal(r.signature, `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:${SACREBLEU_VERSION}`);
  // Two reference streams: the closest length (shorter on a tie) is the effective reference.
  const two = corpusBleu(["a b c"], [["a b"], ["a b c d"]]);
  assert.equal(two.refLen, 2);
  assert.match(two.signature, /^nrefs:2\|/);
  assert.throws(() => corpusBleu(["a", "b"], ["a"]), /1 segments but there are 2 hypotheses/);
  assert.match(corpusBleu(["a"], ["a"], { smoothMethod: "floor" }).signature, /smooth:floor\[0\.10\]/);
});

Deno.test("ROUGE-L tokenization keeps Bengali words whole (vowel signs and virama are marks)", () => {
  // ষ্ট has the virama U+09CD (Mn), বুঝতে has the vowel signs U+09C1 and U+09C7, দুঃখ the visarga
  // U+0983 (Mc); the danda U+0964 is punctuation and separates.
  assert.deepEqual(rougeTokenize("কষ্ট বুঝতে।দুঃখ"), ["কষ্ট", "বুঝতে", "দুঃখ"]);
  assert.deepEqual(rougeTokenize("The CAT's mat, 2024!"), ["the", "cat", "s", "mat", "2024"]);
  assert.deepEqual(rougeTokenize("  ।!? "), []);
});

Deno.test("LCS by dynamic programming on hand-worked sequences", () => {
  // a b c b d a b vs b d c a b a: one longest common subsequence is b c b a (also b d a b), length 4.
  assert.equal(lcsLength("abcbdab".split(""), "bdcaba".split("")), 4);
  assert.equal(lcsLength(["x"], []), 0);
  assert.equal(lcsLength(["a", "a", "a"], ["a", "a"]), 2);
  assert.equal(lcsLength(["a", "b", "c"], ["c", "b", "a"]), 1);
});

Deno.test("ROUGE-L precision, recall and F1 on hand-worked pairs", () => {
  const near = (a: number, b: number, what: string) =>
    assert.ok(Math.abs(a - b) < 1e-12, `${what}: ${a} vs ${b}`);
  // hyp: the cat sat on the mat (6); ref: the cat is on the mat (6); LCS the cat on the mat = 5.
  // P = 5/6, R = 5/6, F = 5/6.
  const en = rougeL("the cat sat on the mat", "The cat is on the mat.");
  near(en.precision, 5 / 6, "en P");
  near(en.recall, 5 / 6, "en R");
  near(en.f1, 5 / 6, "en F");
  // hyp: আমি তোমার দুঃখ বুঝি (4 tokens); ref: আমি তোমার কষ্ট বুঝতে পারছি (5 tokens, danda dropped).
  // LCS আমি তোমার = 2. P = 2/4 = 0.5, R = 2/5 = 0.4, F = 2 * 0.5 * 0.4 / 0.9 = 4/9.
  const bn = rougeL("আমি তোমার দুঃখ বুঝি।", "আমি তোমার কষ্ট বুঝতে পারছি।");
  near(bn.precision, 0.5, "bn P");
  near(bn.recall, 0.4, "bn R");
  near(bn.f1, 4 / 9, "bn F");
  // hyp: চিন্তা করো না (3); ref: না চিন্তা করো সব ঠিক হবে (6); LCS চিন্তা করো = 2.
  // P = 2/3, R = 2/6 = 1/3, F = 2 * (2/9) / 1 = 4/9.
  const bn2 = rougeL("চিন্তা করো না", "না, চিন্তা করো; সব ঠিক হবে।");
  near(bn2.precision, 2 / 3, "bn2 P");
  near(bn2.recall, 1 / 3, "bn2 R");
  near(bn2.f1, 4 / 9, "bn2 F");
  assert.deepEqual(rougeL("", "কিছু একটা"), { precision: 0, recall: 0, f1: 0 });
  // The corpus value is the mean of the per-pair values: F = (5/6 + 4/9 + 0) / 3 = 23/54.
  const corpus = corpusRougeL(
    ["the cat sat on the mat", "আমি তোমার দুঃখ বুঝি।", ""],
    ["The cat is on the mat.", "আমি তোমার কষ্ট বুঝতে পারছি।", "কিছু"],
  );
  near(corpus.f1, 23 / 54, "corpus F");
  near(corpus.precision, (5 / 6 + 0.5) / 3, "corpus P");
  assert.throws(() => corpusRougeL(["a"], []), /1 hypotheses but 0 references/);
});

Deno.test("perplexity is exp of the summed NLL over the summed tokens", () => {
  // Per-batch means would give exp((2 + 4/3) / 2); the set value is exp(6 / 4).
  assert.equal(perplexity([{ nll: 2, tokens: 1 }, { nll: 4, tokens: 3 }]), Math.exp(1.5));
  assert.throws(() => perplexity([{ nll: 0, tokens: 0 }]), /no label tokens/);
});
