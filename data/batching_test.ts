import assert from "node:assert/strict";
import { collate, LengthBucketedBatcher } from "./batching.ts";
import { mulberry32 } from "./rng.ts";

const rand = mulberry32(1);
const lengths = Array.from({ length: 500 }, () => 20 + Math.floor(rand() * rand() * 2000));

Deno.test("batcher: every example once per epoch, batch size respected, seeded", () => {
  const b = new LengthBucketedBatcher(lengths, { batchSize: 8, seed: 7 });
  const plan = b.plan(0);
  const all = plan.flatMap((p) => p.indices).sort((x, y) => x - y);
  assert.deepEqual(all, lengths.map((_, i) => i));
  assert.ok(plan.every((p) => p.indices.length <= 8));
  assert.ok(plan.every((p) => p.seqLen === Math.max(...p.indices.map((i) => lengths[i]))));
  assert.deepEqual(b.plan(0), new LengthBucketedBatcher(lengths, { batchSize: 8, seed: 7 }).plan(0));
  assert.notDeepEqual(b.plan(0).map((p) => p.indices[0]), b.plan(1).map((p) => p.indices[0]));
});

Deno.test("batcher: padding waste is far below random batching", () => {
  const b = new LengthBucketedBatcher(lengths, { batchSize: 8 });
  const bucketed = b.paddingReport();
  // Random batches of 8 for comparison.
  const r = mulberry32(3);
  const idx = lengths.map((_, i) => i).sort(() => r() - 0.5);
  let real = 0, total = 0;
  for (let i = 0; i < idx.length; i += 8) {
    const g = idx.slice(i, i + 8);
    real += g.reduce((s, k) => s + lengths[k], 0);
    total += Math.max(...g.map((k) => lengths[k])) * g.length;
  }
  const randomWaste = 1 - real / total;
  assert.ok(bucketed.waste < 0.05, `bucketed waste ${bucketed.waste}`);
  assert.ok(randomWaste > 0.3, `random waste ${randomWaste}`);
  assert.equal(bucketed.realTokens, lengths.reduce((a, c) => a + c, 0));
});

Deno.test("batcher: token cap and pad multiple", () => {
  const b = new LengthBucketedBatcher(lengths, { batchSize: 64, maxTokensPerBatch: 4096, padMultiple: 64 });
  for (const p of b.plan()) {
    assert.equal(p.seqLen % 64, 0);
    assert.ok(p.seqLen * p.indices.length <= 4096);
  }
  assert.throws(
    () => new LengthBucketedBatcher([5000], { maxTokensPerBatch: 4096 }),
    /raise it to at least 5000/,
  );
});

Deno.test("collate pads ids with padId, labels with -100, builds the mask", () => {
  const b = collate([{ input_ids: [1, 2, 3], labels: [-100, 2, 3] }, { input_ids: [4], labels: [4] }], 9);
  assert.equal(b.B, 2);
  assert.equal(b.T, 3);
  assert.deepEqual(Array.from(b.inputIds), [1, 2, 3, 4, 9, 9]);
  assert.deepEqual(Array.from(b.labels), [-100, 2, 3, 4, -100, -100]);
  assert.deepEqual(Array.from(b.attentionMask), [1, 1, 1, 1, 0, 0]);
  assert.throws(() => collate([{ input_ids: [1, 2], labels: [1] }], 0), /2 input ids but 1 labels/);
});
