// What a training run leaves in its folder besides checkpoints: metrics.jsonl lines, the loss
// curve as a hand-written SVG, and its entry in the experiments log LLAMAExperiments.json, which
// lives in the run folder's parent directory and is shared by every run there (a JSON array,
// one object per run; evaluation later fills in more metrics of the same entry by id).
// Every file is written whole: into a temporary file beside it, then renamed into place.

import { basename, dirname, join } from "node:path";

/** One line of metrics.jsonl (one per training step; val_* only on evaluation steps). */
export interface StepMetrics {
  step: number;
  /** Token-weighted mean NLL of the step's label tokens. */
  loss: number;
  /** Learning rate used by this step's update. */
  lr: number;
  /** Global L2 norm of the unscaled gradients before clipping (null when non-finite). */
  grad_norm: number | null;
  /** Loss scale the step ran with. */
  loss_scale: number;
  /** Label tokens of the step (the normalizer of the loss). */
  label_tokens: number;
  /** All tokens of the step's sequences. */
  tokens: number;
  /** tokens / wall seconds of the step. */
  tokens_per_s: number;
  /** Peak GPU bytes of the busiest device since the start. */
  peak_memory_bytes: number;
  /** True when the gradients were not finite and the update was skipped. */
  skipped: boolean;
  /** Seconds since the run (or the resumed run) started. */
  elapsed_s: number;
  epoch: number;
  val_loss?: number;
  val_perplexity?: number;
}

/** Writes a file whole: temporary sibling, then rename. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${crypto.randomUUID().slice(0, 8)}`);
  try {
    if (typeof data === "string") await Deno.writeTextFile(tmp, data);
    else await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** Reads metrics.jsonl (missing file: empty list). */
export async function readMetrics(path: string): Promise<StepMetrics[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  const out: StepMetrics[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    try {
      out.push(JSON.parse(line));
    } catch (e) {
      throw new Error(`${path}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
  });
  return out;
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** "Nice" tick values covering [lo, hi]. */
function ticks(lo: number, hi: number, count: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

/** The loss curve: train loss per step (line; skipped steps left out) and validation loss (points). */
export function lossCurveSvg(metrics: readonly StepMetrics[], title = "Training loss"): string {
  const W = 720, H = 420, L = 64, R = 20, T = 40, B = 56;
  const train = metrics.filter((m) => !m.skipped && Number.isFinite(m.loss)).map((m) => [m.step, m.loss]);
  const val = metrics.filter((m) => m.val_loss !== undefined && Number.isFinite(m.val_loss))
    .map((m) => [m.step, m.val_loss as number]);
  const all = [...train, ...val];
  const xMax = Math.max(1, ...metrics.map((m) => m.step));
  const yVals = all.map((p) => p[1]);
  let yLo = yVals.length ? Math.min(...yVals) : 0;
  let yHi = yVals.length ? Math.max(...yVals) : 1;
  if (yHi - yLo < 1e-6) {
    yLo -= 0.5;
    yHi += 0.5;
  }
  const pad = (yHi - yLo) * 0.05;
  yLo = Math.max(0, yLo - pad);
  yHi += pad;
  const x = (s: number) => L + ((s - 0) / xMax) * (W - L - R);
  const y = (v: number) => T + (1 - (v - yLo) / (yHi - yLo)) * (H - T - B);
  const f = (v: number) => v.toFixed(1);
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      `font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${esc(title)}</text>`,
  );
  for (const v of ticks(yLo, yHi, 6)) {
    parts.push(
      `<line x1="${L}" y1="${f(y(v))}" x2="${W - R}" y2="${f(y(v))}" stroke="#e4e4e4"/>`,
      `<text x="${L - 6}" y="${f(y(v) + 4)}" text-anchor="end">${v}</text>`,
    );
  }
  for (const s of ticks(0, xMax, 8)) {
    parts.push(
      `<line x1="${f(x(s))}" y1="${H - B}" x2="${f(x(s))}" y2="${H - B + 5}" stroke="black"/>`,
      `<text x="${f(x(s))}" y="${H - B + 18}" text-anchor="middle">${s}</text>`,
    );
  }
  parts.push(
    `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`,
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 14}" text-anchor="middle">optimizer step</text>`,
    `<text x="16" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 16 ${
      (T + H - B) / 2
    })">loss (mean NLL per label token)</text>`,
  );
  if (train.length > 0) {
    const d = train.map((p, i) => `${i ? "L" : "M"}${f(x(p[0]))},${f(y(p[1]))}`).join(" ");
    parts.push(`<path d="${d}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>`);
  }
  for (const p of val) {
    parts.push(`<circle cx="${f(x(p[0]))}" cy="${f(y(p[1]))}" r="4" fill="#d62728"/>`);
  }
  const lx = W - R - 150;
  parts.push(
    `<line x1="${lx}" y1="${T + 8}" x2="${lx + 24}" y2="${T + 8}" stroke="#1f77b4" stroke-width="2"/>`,
    `<text x="${lx + 30}" y="${T + 12}">train loss</text>`,
    `<circle cx="${lx + 12}" cy="${T + 26}" r="4" fill="#d62728"/>`,
    `<text x="${lx + 30}" y="${T + 30}">validation loss</text>`,
    `</svg>`,
  );
  return parts.join("\n") + "\n";
}

/** One entry of LLAMAExperiments.json. */
export interface ExperimentEntry {
  id: string;
  model_name: string;
  strategy: string;
  lora_config: Record<string, unknown>;
  training_config: Record<string, unknown>;
  dataset: Record<string, unknown>;
  hardware: { adapters: string[]; backend: string };
  metrics: {
    final_train_loss: number | null;
    final_val_loss: number | null;
    val_perplexity: number | null;
    trainable_parameters: number;
    peak_memory_bytes: number;
    train_seconds: number;
    steps: number;
    skipped_steps: number;
    [k: string]: unknown;
  };
  run_dir: string;
  adapter_path: string;
  started_at: string;
  finished_at: string;
}

/** Appends (or replaces, by id) an entry of the experiments log at `path`, written whole. */
export async function appendExperiment(path: string, entry: ExperimentEntry): Promise<void> {
  let list: unknown[] = [];
  try {
    const text = await Deno.readTextFile(path);
    const parsed = JSON.parse(text);
    if (!Array.isArray(parsed)) {
      throw new Error(`${path}: expected a JSON array of experiments; move the file aside and run again.`);
    }
    list = parsed;
  } catch (e) {
    if (e instanceof SyntaxError) {
      throw new Error(`${path}: not valid JSON (${e.message}); fix or move the file aside and run again.`);
    }
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const i = list.findIndex((x) => (x as { id?: string })?.id === entry.id);
  if (i >= 0) list[i] = entry;
  else list.push(entry);
  await writeFileAtomic(path, JSON.stringify(list, null, 2) + "\n");
}
