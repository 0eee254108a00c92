// Human ratings of generated responses (empathy, fluency, relevance on 1-5, an optional comment),
// collected one response at a time through a line-based dialogue that a terminal or a test drives.
//
// Files, all in the run folder DIR:
//   GeneratedResponses.json  read: [{experiment_id, input_text, reference?, response, ...}]
//   human_ratings.json       written whole after every rated or skipped response, so a session
//                            can stop at any time and the next one resumes after the last answer
//   evaluation_results.md    when present, its "## Human evaluation" section is replaced (or added)
// and the aggregates (mean and count per criterion) go into the run's entry of
// LLAMAExperiments.json (entry id = the responses' experiment_id, under metrics.human_eval):
// DIR/LLAMAExperiments.json when that file exists, otherwise the one in DIR's parent folder.

import { dirname, join } from "node:path";
import { writeFileAtomic } from "./run_outputs.ts";

export const CRITERIA = ["empathy", "fluency", "relevance"] as const;
export type Criterion = typeof CRITERIA[number];

export interface GeneratedResponse {
  experiment_id: string;
  input_text: string;
  reference?: string;
  response: string;
  [key: string]: unknown;
}

export interface HumanRating {
  /** Position of the response in GeneratedResponses.json. */
  index: number;
  input_text: string;
  empathy: number;
  fluency: number;
  relevance: number;
  comment: string;
  rated_at: string;
}

export interface HumanRatingsFile {
  experiment_id: string;
  ratings: HumanRating[];
  /** Positions the rater skipped ('s'); asked again only with includeSkipped. */
  skipped: number[];
  aggregates: HumanAggregates;
}

export type HumanAggregates = Record<Criterion, { mean: number | null; count: number }> & {
  rated: number;
  skipped: number;
  total: number;
};

/** The dialogue: text out, one line in (null at the end of input, taken as quit). */
export interface RatingIO {
  write(text: string): void;
  readLine(prompt: string): Promise<string | null>;
}

export interface RateOptions {
  /** Ask again the responses skipped in earlier sessions. */
  includeSkipped?: boolean;
  /** Clock for rated_at (tests fix it). */
  now?: () => Date;
}

export interface RateResult {
  ratingsPath: string;
  aggregates: HumanAggregates;
  /** The experiments file updated, or why none was. */
  experiments: { path: string; updated: boolean; note?: string };
  reportUpdated: boolean;
  /** The session ended by 'q' or the end of input before every response was seen. */
  quit: boolean;
}

async function readJson(path: string, what: string): Promise<unknown | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new Error(`${path}: cannot read ${what}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: ${what} is not valid JSON (${(e as Error).message}); fix it or move it aside.`);
  }
}

/** Reads and checks DIR/GeneratedResponses.json. */
export async function readResponses(dir: string): Promise<GeneratedResponse[]> {
  const path = join(dir, "GeneratedResponses.json");
  const data = await readJson(path, "the generated responses");
  if (data === undefined) {
    throw new Error(`${path}: not found. Give --run the run folder that holds GeneratedResponses.json.`);
  }
  if (!Array.isArray(data)) throw new Error(`${path}: expected a JSON array of responses`);
  data.forEach((r, i) => {
    for (const field of ["experiment_id", "input_text", "response"]) {
      if (typeof (r as Record<string, unknown>)?.[field] !== "string") {
        throw new Error(`${path}: entry ${i} has no string field "${field}"`);
      }
    }
  });
  const ids = new Set(data.map((r) => (r as GeneratedResponse).experiment_id));
  if (ids.size > 1) {
    throw new Error(
      `${path}: responses of several experiments (${[...ids].join(", ")}); rate one run at a time`,
    );
  }
  return data as GeneratedResponse[];
}

/** Mean and count per criterion. */
export function aggregateRatings(
  ratings: readonly HumanRating[],
  skipped: number,
  total: number,
): HumanAggregates {
  const out = { rated: ratings.length, skipped, total } as HumanAggregates;
  for (const c of CRITERIA) {
    const n = ratings.length;
    out[c] = { mean: n > 0 ? ratings.reduce((s, r) => s + r[c], 0) / n : null, count: n };
  }
  return out;
}

async function loadRatings(path: string, experimentId: string, responses: GeneratedResponse[]) {
  const data = await readJson(path, "the saved ratings") as HumanRatingsFile | undefined;
  if (data === undefined) return { ratings: [] as HumanRating[], skipped: [] as number[] };
  if (data.experiment_id !== experimentId || !Array.isArray(data.ratings)) {
    throw new Error(
      `${path}: holds ratings of experiment "${data.experiment_id}", but GeneratedResponses.json is ` +
        `"${experimentId}"; move the file aside to start over.`,
    );
  }
  for (const r of data.ratings) {
    if (responses[r.index]?.input_text !== r.input_text) {
      throw new Error(
        `${path}: rating of response ${r.index} does not match GeneratedResponses.json (the prompt differs); ` +
          `the responses changed since rating began: move the file aside to start over.`,
      );
    }
  }
  return { ratings: data.ratings, skipped: Array.isArray(data.skipped) ? data.skipped : [] };
}

type Answer = number | "skip" | "quit";

async function askScore(io: RatingIO, criterion: Criterion): Promise<Answer> {
  for (;;) {
    const line = await io.readLine(`${criterion} (1-5, s = skip, q = quit): `);
    if (line === null) return "quit";
    const t = line.trim().toLowerCase();
    if (t === "q") return "quit";
    if (t === "s") return "skip";
    if (/^[1-5]$/.test(t)) return Number(t);
    io.write(`  "${line.trim()}" is not a score: type a whole number from 1 to 5, s or q.\n`);
  }
}

/** The markdown section of the aggregates. */
export function humanEvalMarkdown(a: HumanAggregates): string {
  const rows = CRITERIA.map((c) =>
    `| ${c} | ${a[c].mean === null ? "-" : a[c].mean!.toFixed(2)} | ${a[c].count} |`
  );
  return [
    "## Human evaluation",
    "",
    `${a.rated} of ${a.total} responses rated on 1-5 (${a.skipped} skipped).`,
    "",
    "| criterion | mean | count |",
    "|---|---|---|",
    ...rows,
    "",
  ].join("\n");
}

/** Where the run's experiments log lives: DIR/LLAMAExperiments.json if present, else in DIR's parent. */
export async function experimentsPath(dir: string): Promise<string> {
  const inRun = join(dir, "LLAMAExperiments.json");
  try {
    await Deno.stat(inRun);
    return inRun;
  } catch {
    return join(dirname(dir), "LLAMAExperiments.json");
  }
}

async function updateExperiments(
  dir: string,
  id: string,
  a: HumanAggregates,
): Promise<RateResult["experiments"]> {
  const path = await experimentsPath(dir);
  const data = await readJson(path, "the experiments log");
  if (data === undefined) return { path, updated: false, note: `${path} not found` };
  if (!Array.isArray(data)) throw new Error(`${path}: expected a JSON array of experiments`);
  const entry = data.find((e) => (e as { id?: unknown })?.id === id) as Record<string, unknown> | undefined;
  if (!entry) return { path, updated: false, note: `${path} has no experiment with id "${id}"` };
  const metrics = (entry.metrics && typeof entry.metrics === "object" ? entry.metrics : {}) as Record<
    string,
    unknown
  >;
  metrics.human_eval = a;
  entry.metrics = metrics;
  await writeFileAtomic(path, JSON.stringify(data, null, 2) + "\n");
  return { path, updated: true };
}

async function updateReport(dir: string, a: HumanAggregates): Promise<boolean> {
  const path = join(dir, "evaluation_results.md");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
  const section = humanEvalMarkdown(a);
  const start = text.search(/^## Human evaluation\s*$/m);
  if (start >= 0) {
    const rest = text.slice(start + 1);
    const next = rest.search(/^## /m);
    const end = next >= 0 ? start + 1 + next : text.length;
    text = text.slice(0, start) + section + (next >= 0 ? "\n" + text.slice(end) : "");
  } else {
    text = text.replace(/\n*$/, "\n\n") + section;
  }
  await writeFileAtomic(path, text);
  return true;
}

/** Runs one rating session over DIR's responses, then writes the aggregates. */
export async function rateRun(dir: string, io: RatingIO, options: RateOptions = {}): Promise<RateResult> {
  const now = options.now ?? (() => new Date());
  const responses = await readResponses(dir);
  const experimentId = responses[0]?.experiment_id ?? "";
  const ratingsPath = join(dir, "human_ratings.json");
  const state = await loadRatings(ratingsPath, experimentId, responses);
  if (options.includeSkipped) state.skipped = [];
  const save = async () => {
    state.ratings.sort((a, b) => a.index - b.index);
    const file: HumanRatingsFile = {
      experiment_id: experimentId,
      ratings: state.ratings,
      skipped: [...new Set(state.skipped)].sort((a, b) => a - b),
      aggregates: aggregateRatings(state.ratings, new Set(state.skipped).size, responses.length),
    };
    await writeFileAtomic(ratingsPath, JSON.stringify(file, null, 2) + "\n");
  };

  const done = new Set([...state.ratings.map((r) => r.index), ...state.skipped]);
  const todo = responses.map((_, i) => i).filter((i) => !done.has(i));
  io.write(
    `Rating ${responses.length} responses of experiment ${experimentId}: ${responses.length - todo.length} ` +
      `done, ${todo.length} to go. Scores 1 (poor) to 5 (excellent); s skips a response, q quits.\n`,
  );
  let quit = false;
  for (const i of todo) {
    const r = responses[i];
    io.write(`\n[${i + 1}/${responses.length}]\nPrompt:\n${r.input_text}\n`);
    if (typeof r.reference === "string" && r.reference.length > 0) io.write(`Reference:\n${r.reference}\n`);
    io.write(`Response:\n${r.response}\n\n`);
    const scores: Partial<Record<Criterion, number>> = {};
    let outcome: "rated" | "skip" | "quit" = "rated";
    for (const c of CRITERIA) {
      const a = await askScore(io, c);
      if (a === "skip" || a === "quit") {
        outcome = a;
        break;
      }
      scores[c] = a;
    }
    if (outcome === "quit") {
      quit = true;
      break;
    }
    if (outcome === "skip") {
      state.skipped.push(i);
      await save();
      continue;
    }
    const comment = await io.readLine("comment (optional, Enter for none): ");
    state.ratings.push({
      index: i,
      input_text: r.input_text,
      empathy: scores.empathy!,
      fluency: scores.fluency!,
      relevance: scores.relevance!,
      comment: (comment ?? "").trim(),
      rated_at: now().toISOString(),
    });
    await save();
    if (comment === null) {
      quit = true;
      break;
    }
  }
  await save();
  const aggregates = aggregateRatings(state.ratings, new Set(state.skipped).size, responses.length);
  const experiments = await updateExperiments(dir, experimentId, aggregates);
  const reportUpdated = await updateReport(dir, aggregates);
  io.write(`\n${humanEvalMarkdown(aggregates)}`);
  io.write(`Ratings saved to ${ratingsPath}.\n`);
  io.write(
    experiments.updated ? `Aggregates written to ${experiments.path}.\n` : `Note: ${experiments.note}.\n`,
  );
  return { ratingsPath, aggregates, experiments, reportUpdated, quit };
}
