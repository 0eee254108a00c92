import assert from "node:assert/strict";
import { join } from "node:path";
import { experimentsPath, type HumanRatingsFile, rateRun, type RatingIO } from "./human_eval.ts";

/** Feeds the lines in order (then the end of input) and records everything written. */
function scripted(lines: string[]): RatingIO & { output: string[]; left: () => number } {
  const queue = [...lines];
  const output: string[] = [];
  return {
    output,
    left: () => queue.length,
    write: (text) => void output.push(text),
    readLine: (prompt) => {
      output.push(prompt);
      return Promise.resolve(queue.length > 0 ? queue.shift()! : null);
    },
  };
}

const RESPONSES = [
  {
    experiment_id: "exp1",
    input_text: "আমি খুব একা বোধ করি।",
    reference: "তুমি একা নও।",
    response: "আমি বুঝতে পারছি।",
  },
  {
    experiment_id: "exp1",
    input_text: "I failed my exam.",
    reference: "That is hard.",
    response: "Try again.",
  },
  { experiment_id: "exp1", input_text: "ঘুম আসে না।", response: "নিয়মিত ঘুমের চেষ্টা করুন।", bleu: 3 },
];

async function setup() {
  const root = await Deno.makeTempDir();
  const dir = join(root, "run1");
  await Deno.mkdir(dir);
  await Deno.writeTextFile(join(dir, "GeneratedResponses.json"), JSON.stringify(RESPONSES));
  await Deno.writeTextFile(
    join(root, "LLAMAExperiments.json"),
    JSON.stringify([{ id: "other", metrics: {} }, { id: "exp1", metrics: { final_train_loss: 1.25 } }]),
  );
  await Deno.writeTextFile(join(dir, "evaluation_results.md"), "# Evaluation\n\n## BLEU\n\n12.3\n");
  return { root, dir };
}

async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await Deno.readTextFile(path));
}

Deno.test("rating sessions validate input, save after each answer, resume and write aggregates", async () => {
  const { root, dir } = await setup();
  try {
    const now = () => new Date("2025-01-02T03:04:05Z");
    // Session 1: rate the first, two bad answers then skip the second, quit on the third.
    const io1 = scripted(["4", "5", "3", " kind ", "x", "0", "s", "q", "never read"]);
    const r1 = await rateRun(dir, io1, { now });
    assert.equal(r1.quit, true);
    assert.equal(io1.left(), 1);
    assert.ok(io1.output.some((t) => t.includes('"x" is not a score')));
    assert.ok(io1.output.some((t) => t.includes('"0" is not a score')));
    assert.ok(io1.output.some((t) => t.includes("আমি বুঝতে পারছি।")), "the response is shown");
    let saved = await readJson<HumanRatingsFile>(join(dir, "human_ratings.json"));
    assert.deepEqual(saved.ratings, [{
      index: 0,
      input_text: RESPONSES[0].input_text,
      empathy: 4,
      fluency: 5,
      relevance: 3,
      comment: "kind",
      rated_at: "2025-01-02T03:04:05.000Z",
    }]);
    assert.deepEqual(saved.skipped, [1]);
    let experiments = await readJson<{ id: string; metrics: Record<string, unknown> }[]>(
      join(root, "LLAMAExperiments.json"),
    );
    assert.deepEqual(experiments[0], { id: "other", metrics: {} });
    assert.equal(experiments[1].metrics.final_train_loss, 1.25);
    assert.deepEqual(experiments[1].metrics.human_eval, {
      rated: 1,
      skipped: 1,
      total: 3,
      empathy: { mean: 4, count: 1 },
      fluency: { mean: 5, count: 1 },
      relevance: { mean: 3, count: 1 },
    });

    // Session 2 resumes at the third response (the skipped one is not asked again).
    const io2 = scripted(["2", "3", "4", ""]);
    const r2 = await rateRun(dir, io2, { now });
    assert.equal(r2.quit, false);
    assert.equal(io2.left(), 0);
    assert.ok(!io2.output.some((t) => t.includes("I failed my exam.")), "the skipped response stays skipped");
    assert.deepEqual(r2.aggregates.empathy, { mean: 3, count: 2 });
    assert.deepEqual(r2.aggregates.relevance, { mean: 3.5, count: 2 });
    saved = await readJson<HumanRatingsFile>(join(dir, "human_ratings.json"));
    assert.deepEqual(saved.ratings.map((r) => [r.index, r.comment]), [[0, "kind"], [2, ""]]);

    // Session 3 asks the skipped one again.
    const io3 = scripted(["1", "1", "1", "terse"]);
    const r3 = await rateRun(dir, io3, { now, includeSkipped: true });
    assert.deepEqual(r3.aggregates.fluency, { mean: 3, count: 3 });
    assert.equal(r3.aggregates.skipped, 0);
    experiments = await readJson(join(root, "LLAMAExperiments.json"));
    assert.deepEqual((experiments[1].metrics.human_eval as { empathy: unknown }).empathy, {
      mean: 7 / 3,
      count: 3,
    });

    // The report keeps its other sections and holds the human evaluation section once.
    const report = await Deno.readTextFile(join(dir, "evaluation_results.md"));
    assert.ok(report.startsWith("# Evaluation\n\n## BLEU\n\n12.3\n\n## Human evaluation\n"), report);
    assert.equal(report.split("## Human evaluation").length, 2);
    assert.match(report, /\| empathy \| 2\.33 \| 3 \|/);
    assert.match(report, /3 of 3 responses rated/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("the experiments log in the run folder wins; missing inputs give errors for people", async () => {
  const { root, dir } = await setup();
  try {
    assert.equal(await experimentsPath(dir), join(root, "LLAMAExperiments.json"));
    await Deno.writeTextFile(
      join(dir, "LLAMAExperiments.json"),
      JSON.stringify([{ id: "zzz", metrics: {} }]),
    );
    assert.equal(await experimentsPath(dir), join(dir, "LLAMAExperiments.json"));
    const r = await rateRun(dir, scripted(["q"]));
    assert.equal(r.experiments.updated, false);
    assert.match(r.experiments.note!, /has no experiment with id "exp1"/);
    await assert.rejects(
      () => rateRun(join(root, "nope"), scripted([])),
      /GeneratedResponses.json: not found/,
    );
    await Deno.writeTextFile(
      join(dir, "GeneratedResponses.json"),
      JSON.stringify([{ experiment_id: "exp1" }]),
    );
    await assert.rejects(() => rateRun(dir, scripted([])), /entry 0 has no string field "input_text"/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
