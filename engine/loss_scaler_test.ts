import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert";
import { LossScaler } from "./loss_scaler.ts";
import { gpuTest } from "./testing.ts";
import { uploadF32 } from "./buffers.ts";
import { gradientStats } from "./grad_check.ts";

Deno.test("loss scaler: starts at 2^16, halves and skips on non-finite, doubles after 2000 clean steps", () => {
  const s = new LossScaler();
  assertEquals(s.scale, 65536);
  assertEquals(s.update(true), true); // skip
  assertEquals(s.scale, 32768);
  for (let i = 0; i < 1999; i++) assertEquals(s.update(false), false);
  assertEquals(s.scale, 32768);
  assertEquals(s.update(false), false);
  assertEquals(s.scale, 65536);
  assertEquals(s.skippedSteps, 1);
});

Deno.test("loss scaler: state round-trips through JSON", () => {
  const a = new LossScaler();
  a.update(true);
  for (let i = 0; i < 17; i++) a.update(false);
  const b = new LossScaler();
  b.load(JSON.parse(JSON.stringify(a.state())));
  assertEquals(b.state(), a.state());
  for (let i = 0; i < 1983; i++) b.update(false);
  assertEquals(b.scale, 65536);
  assertThrows(() => new LossScaler().load({ scale: -1 } as never));
});

await gpuTest("gradientStats: norm and non-finite flag of f32 gradients", async (gpu) => {
  const a = uploadF32(gpu, [3, 0, 0, 0]);
  const b = uploadF32(gpu, [4]);
  const ok = await gradientStats(gpu, [{ buffer: a, n: 4 }, { buffer: b, n: 1 }]);
  assert(Math.abs(ok.norm - 5) < 1e-6 && !ok.nonFinite, JSON.stringify(ok));
  const c = uploadF32(gpu, [1, Infinity]);
  assert((await gradientStats(gpu, [{ buffer: a, n: 4 }, { buffer: c, n: 2 }])).nonFinite);
  const d = uploadF32(gpu, [NaN]);
  assert((await gradientStats(gpu, [{ buffer: d, n: 1 }])).nonFinite);
});
