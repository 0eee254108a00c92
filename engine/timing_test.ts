// timeGpu queues its submits without waiting between them: every repetition it encodes must still
// run exactly once, and the result must have one time per sample.

import { ok as assert } from "node:assert";
import { readF16, uploadF16 } from "./buffers.ts";
import { gpuTest } from "./testing.ts";
import { timeGpu } from "./timing.ts";
import { residualAdd } from "../kernels/elementwise/elementwise.ts";

await gpuTest("timeGpu: every encoded repetition runs once; one time per sample", async (gpu) => {
  const n = 24;
  const acc = uploadF16(gpu, new Array(n).fill(0));
  const one = uploadF16(gpu, new Array(n).fill(1));
  let calls = 0;
  const t = await timeGpu(gpu, async (enc) => {
    calls++;
    await residualAdd(enc, { a: acc, b: one, n });
  }, { warmup: 1, reps: 3, maxReps: 4, samples: 4, warmupMs: 1 });
  assert(t.samples.length === 4, `samples ${t.samples.length}`);
  assert(t.samples.every((ms) => ms > 0 && Number.isFinite(ms)), `samples ${t.samples}`);
  assert(t.source === (gpu.caps.timestamps ? "timestamp" : "wall"));
  assert(calls >= 1 + 4 * 3 && calls <= 2048, `calls ${calls}`);
  const got = await readF16(gpu, acc, n);
  assert(got.every((v) => v === calls), `acc ${got[0]} after ${calls} calls`);
  acc.destroy();
  one.destroy();
});
