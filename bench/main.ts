// `deno task bench`: runs every `*_bench.ts` family and prints one table.
//
//   deno task bench [--quick] [--json FILE] [--filter SUBSTRING[,SUBSTRING...]] [--backend dawn|deno] [--adapter NAME]

import { parseArgs } from "node:util";
import { join, relative } from "node:path";
import { type Backend, BACKENDS, type Gpu, openGpu } from "../engine/gpu.ts";
import type { BenchFn, BenchRow } from "./harness.ts";

const root = new URL("..", import.meta.url).pathname;
const SKIP_DIRS = new Set(["node_modules", ".git", ".gpu-bundle", "runs"]);

async function* benchFiles(dir: string): AsyncGenerator<string> {
  const entries = [];
  for await (const e of Deno.readDir(dir)) entries.push(e);
  entries.sort((a, b) => a.name.localeCompare(b.name));
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory && !SKIP_DIRS.has(e.name) && !e.name.startsWith(".")) yield* benchFiles(path);
    else if (e.isFile && e.name.endsWith("_bench.ts")) yield path;
  }
}

function fmt(v: number | null | undefined, digits: number): string {
  return v === null || v === undefined || !Number.isFinite(v) ? "-" : v.toFixed(digits);
}

export function formatTable(rows: BenchRow[]): string {
  const header = ["name", "backend", "adapter", "shape", "ms", "TFLOP/s", "GB/s", "rel err"];
  const body = rows.map((r) => [
    r.name,
    r.backend,
    r.adapter.slice(0, 32),
    r.shape,
    fmt(r.ms, 3),
    fmt(r.tflops, 2),
    fmt(r.gbps, r.gbps !== null && r.gbps < 10 ? 3 : 1),
    r.relErr === undefined ? "-" : r.relErr.toExponential(1),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      json: { type: "string" },
      filter: { type: "string" },
      backend: { type: "string" },
      adapter: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(
      "deno task bench [--quick] [--json FILE] [--filter SUBSTRING] [--backend dawn|deno] [--adapter NAME]",
    );
    return;
  }
  if (values.backend && !BACKENDS.includes(values.backend as Backend)) {
    throw new Error(`--backend ${values.backend}: use one of ${BACKENDS.join(", ")}`);
  }
  const backends = values.backend ? [values.backend as Backend] : BACKENDS;
  const gpus: Gpu[] = [];
  for (const backend of backends) {
    try {
      gpus.push(await openGpu({ backend, adapter: values.adapter }));
    } catch (e) {
      console.error(`bench: backend ${backend} skipped: ${(e as Error).message}`);
    }
  }
  for (const g of gpus) console.error(`bench: ${g.name}`);
  const rows: BenchRow[] = [];
  try {
    for await (const file of benchFiles(root)) {
      const rel = relative(root, file);
      const filters = values.filter?.split(",").filter(Boolean) ?? [];
      if (filters.length > 0 && !filters.some((f) => rel.includes(f))) continue;
      console.error(`bench: ${rel}`);
      const mod = await import(`file://${file}`) as { default?: BenchFn };
      if (typeof mod.default !== "function") throw new Error(`${rel} has no default-exported bench function`);
      const got = await mod.default({ gpus, quick: values.quick });
      rows.push(...got);
      for (const r of got) console.error(`  ${r.name} ${r.backend} ${r.shape}: ${fmt(r.ms, 3)} ms`);
    }
  } finally {
    for (const g of gpus) g.destroy();
  }
  console.log(formatTable(rows));
  if (values.json) {
    const tmp = `${values.json}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(rows, null, 2) + "\n");
    await Deno.rename(tmp, values.json);
    console.error(`bench: wrote ${rows.length} rows to ${values.json}`);
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`bench: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
