// Joins bench rows with the reference rows measured in the same run (PyTorch on the same GPU,
// the measured copy bandwidth) and prints each ratio as a Markdown table for bench/RESULTS.md.
//
//   deno run -A bench/compare.ts ours.json torch.json [more.json ...]
//
// A row is compared with the row its `ref` names (same shape when there is one; for
// "copy_bandwidth", the fastest copy of the run), or else with the row of the same name and shape
// from "torch".
// Compute-bound rows (with TFLOP/s) compare TFLOP/s; memory-bound rows compare GB/s.

import type { BenchRow } from "./harness.ts";

export interface Comparison {
  row: BenchRow;
  ref: BenchRow;
  metric: "TFLOP/s" | "GB/s";
  ratio: number;
}

export function compareRows(rows: BenchRow[]): Comparison[] {
  const out: Comparison[] = [];
  for (const row of rows) {
    if (row.backend === "torch" || row.name === "copy_bandwidth") continue;
    const named = row.ref
      ? rows.filter((r) => r.name === row.ref)
      : rows.filter((r) => r.name === row.name && r.backend === "torch");
    // The GPU's copy bandwidth is the best copy measured in the run (a framework's copy kernel can
    // beat the API's buffer copy).
    const best = named.reduce<BenchRow | undefined>(
      (b, r) => (!b || (r.gbps ?? 0) > (b.gbps ?? 0) ? r : b),
      undefined,
    );
    const ref = named.find((r) => r.shape === row.shape) ?? (row.ref === "copy_bandwidth" ? best : named[0]);
    if (!ref) continue;
    const useFlops = row.tflops !== null && ref.tflops !== null && ref.name !== "copy_bandwidth";
    const ratio = useFlops ? row.tflops! / ref.tflops! : (row.gbps ?? NaN) / (ref.gbps ?? NaN);
    out.push({ row, ref, metric: useFlops ? "TFLOP/s" : "GB/s", ratio });
  }
  return out;
}

export function markdown(cmp: Comparison[]): string {
  const lines = [
    "| kernel | backend | shape | ms | ours | reference | ref value | ratio |",
    "| --- | --- | --- | ---: | ---: | --- | ---: | ---: |",
  ];
  for (const c of cmp) {
    const ours = c.metric === "TFLOP/s" ? c.row.tflops! : c.row.gbps!;
    const theirs = c.metric === "TFLOP/s" ? c.ref.tflops! : c.ref.gbps!;
    lines.push(
      `| ${c.row.name} | ${c.row.backend} | ${c.row.shape} | ${c.row.ms.toFixed(3)} | ${
        ours.toFixed(1)
      } ${c.metric} | ` +
        `${c.ref.name} (${c.ref.backend}) | ${theirs.toFixed(1)} | ${(100 * c.ratio).toFixed(0)}% |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) {
  if (Deno.args.length === 0) {
    console.error("usage: deno run -A bench/compare.ts ours.json [reference.json ...]");
    Deno.exit(2);
  }
  const rows: BenchRow[] = [];
  for (const file of Deno.args) rows.push(...JSON.parse(await Deno.readTextFile(file)) as BenchRow[]);
  console.log(markdown(compareRows(rows)));
}
