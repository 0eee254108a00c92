// The summary of raw timestamps: durations, span, idle time and the grouping by label.

import { ok as assert } from "node:assert";
import { formatGaps, formatProfile, summarize } from "./profile.ts";

Deno.test("profile: summarize turns timestamps into durations, span, idle time and totals by label", () => {
  // Three dispatches: a 0..2000 ns, b 3000..3500 ns, a 5000..6000 ns (1000 + 1500 ns idle).
  const t = BigUint64Array.from([10_000n, 12_000n, 13_000n, 13_500n, 15_000n, 16_000n]);
  const p = summarize(["a", "b", "a"], t);
  assert(p.dispatches.length === 3);
  assert(Math.abs(p.spanMs - 0.006) < 1e-12, `span ${p.spanMs}`);
  assert(Math.abs(p.busyMs - 0.0035) < 1e-12, `busy ${p.busyMs}`);
  assert(p.dispatches[1].label === "b" && Math.abs(p.dispatches[1].startMs - 0.003) < 1e-12);
  assert(p.byLabel[0].label === "a" && p.byLabel[0].count === 2 && Math.abs(p.byLabel[0].ms - 0.003) < 1e-12);
  assert(p.byLabel[1].label === "b" && p.byLabel[1].count === 1);
  const text = formatProfile(p);
  assert(text.includes("3 dispatches") && text.includes("idle between dispatches 0.003 ms"), text);
  const merged = formatProfile(
    summarize(["k.wgsl:main [2x1x1]", "k.wgsl:main [4x1x1]"], t.slice(0, 4)),
    5,
    true,
  );
  assert(merged.includes("k.wgsl:main: 2 x"), merged);
  const gaps = formatGaps(p, 1);
  assert(gaps.includes("0.002 ms idle at 0.005 ms: after b, before a"), gaps);
  // An end before its start (a reordered or missing timestamp) counts as zero, never negative.
  const q = summarize(["x"], BigUint64Array.from([5n, 3n]));
  assert(q.busyMs === 0 && q.spanMs === 0);
  assert(summarize([], new BigUint64Array(0)).dispatches.length === 0);
});
