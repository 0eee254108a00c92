import assert from "node:assert/strict";
import { Rng } from "../engine/rng.ts";
import { testSeed } from "../engine/testing.ts";
import { argmax, isStopToken, TokenSampler } from "./sampling.ts";

/** Empirical frequencies of `draws` samples. */
function frequencies(sampler: TokenSampler, logits: Float32Array, draws: number, context: number[] = []) {
  const f = new Float64Array(logits.length);
  for (let i = 0; i < draws; i++) f[sampler.next(logits, context)] += 1 / draws;
  return f;
}

function softmax(x: number[]): number[] {
  const m = Math.max(...x);
  const e = x.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Each frequency within 5 binomial standard deviations (plus a little) of its probability. */
function assertFrequencies(f: Float64Array, p: number[], draws: number, label: string) {
  p.forEach((pi, i) => {
    const sd = Math.sqrt(pi * (1 - pi) / draws);
    assert.ok(
      Math.abs(f[i] - pi) <= 5 * sd + 1e-3,
      `${label}: token ${i} frequency ${f[i]}, probability ${pi}`,
    );
  });
}

Deno.test("greedy is the argmax after the HF repetition penalty", () => {
  const greedy = new TokenSampler({ doSample: false, repetitionPenalty: 1.2 });
  // 2 / 1.2 = 1.667 < 1.9: the repeated token loses.
  assert.equal(greedy.next(new Float32Array([2, 1.9, -1]), [0]), 1);
  assert.equal(greedy.next(new Float32Array([2, 1.9, -1]), []), 0);
  // Negative logits are multiplied: -1 * 1.2 = -1.2 < -1.1.
  assert.equal(greedy.next(new Float32Array([-1, -1.1]), [0, 0, 0]), 1);
  // Each context token counts once; ids out of range are ignored.
  const s = greedy.processed(new Float32Array([3, -2, 0, 5]), [0, 0, 1, 2, 99, -1]);
  assert.deepEqual(Array.from(s), [3 / 1.2, -2 * 1.2, 0, 5]);
  // temperature 0 is greedy too, and needs no Rng.
  assert.equal(new TokenSampler({ temperature: 0 }).next(new Float32Array([0, 7, 7])), 1);
  assert.equal(argmax([1, 3, 3, 2]), 1);
});

Deno.test("top-k 1 and a tiny top-p reduce sampling to the argmax", () => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const k1 = new TokenSampler({ topK: 1, temperature: 1.5 }, rng);
  const p0 = new TokenSampler({ topP: 1e-6 }, rng);
  for (let trial = 0; trial < 50; trial++) {
    const logits = new Float32Array(Array.from(rng.uniforms(300, -4, 4)));
    const best = argmax(logits);
    assert.equal(k1.next(logits), best, `seed ${seed}`);
    assert.equal(p0.next(logits), best, `seed ${seed}`);
  }
});

Deno.test("sampled frequencies follow softmax(logits / temperature) over the top-k tokens", () => {
  const seed = testSeed();
  const draws = 20000;
  const logits = [1.0, 2.0, 0.5, -1.0, 1.5];
  const x = new Float32Array(logits);
  const plain = frequencies(new TokenSampler({}, new Rng(seed)), x, draws);
  assertFrequencies(plain, softmax(logits), draws, `seed ${seed} plain`);
  const hot = frequencies(new TokenSampler({ temperature: 0.5 }, new Rng(seed + 1)), x, draws);
  assertFrequencies(hot, softmax(logits.map((l) => l / 0.5)), draws, `seed ${seed} temperature 0.5`);
  // Top-3 keeps tokens 1, 4, 0 (logits 2, 1.5, 1).
  const top3 = frequencies(new TokenSampler({ topK: 3 }, new Rng(seed + 2)), x, draws);
  const p3 = softmax([1.0, 2.0, 1.5]);
  assertFrequencies(top3, [p3[0], p3[1], 0, 0, p3[2]], draws, `seed ${seed} top-k 3`);
});

Deno.test("top-p keeps the smallest set whose mass reaches p (HF rule)", () => {
  const seed = testSeed();
  const draws = 20000;
  const probs = [0.5, 0.3, 0.15, 0.05];
  const x = new Float32Array(probs.map(Math.log));
  // p = 0.9: mass above token 2 is 0.8 < 0.9 (kept), above token 3 is 0.95 (dropped).
  const p09 = frequencies(new TokenSampler({ topP: 0.9 }, new Rng(seed)), x, draws);
  assertFrequencies(p09, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], draws, `seed ${seed} top-p 0.9`);
  // p = 0.8: HF's ascending cumulative sums are 0.05, 0.2, 0.5, 1; those <= 0.2 go.
  const s = new TokenSampler({ topP: 0.8 }, new Rng(seed));
  const kept = Array.from(s.processed(x)).map((v) => v !== -Infinity);
  assert.deepEqual(kept, [true, true, false, false]);
  // Top-k then top-p: top-2 leaves 0.5 and 0.3 (renormalized 0.625, 0.375); p = 0.6 keeps one.
  const both = new TokenSampler({ topK: 2, topP: 0.6 }, new Rng(seed));
  assert.deepEqual(Array.from(both.processed(x)).map((v) => v !== -Infinity), [true, false, false, false]);
});

Deno.test("a seed reproduces the draws; a Llama-size row samples inside the nucleus", () => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const V = 128256;
  const logits = new Float32Array(V);
  for (let i = 0; i < V; i++) logits[i] = rng.normal() * 3;
  const opts = { temperature: 0.7, topP: 0.9, topK: 50, repetitionPenalty: 1.1 };
  const a = new TokenSampler(opts, new Rng(seed));
  const b = new TokenSampler(opts, new Rng(seed));
  const context = [5, 17, 128000];
  const drawsA = Array.from({ length: 5 }, () => a.next(logits, context));
  const drawsB = Array.from({ length: 5 }, () => b.next(logits, context));
  assert.deepEqual(drawsA, drawsB, `seed ${seed}`);
  const kept = a.processed(logits, context);
  let n = 0;
  for (const v of kept) if (v !== -Infinity) n++;
  assert.ok(n >= 1 && n <= 50, `kept ${n} tokens`);
  for (const id of drawsA) {
    assert.notEqual(kept[id], -Infinity, `seed ${seed}: token ${id} outside top-k/top-p`);
  }
  const nucleus = new TokenSampler({ topP: 0.9 }, new Rng(seed));
  const id = nucleus.next(logits);
  assert.notEqual(nucleus.processed(logits)[id], -Infinity);
});

Deno.test("stop tokens and option errors", () => {
  assert.ok(isStopToken(128009, [128001, 128008, 128009]));
  assert.ok(!isStopToken(128000, [128001, 128008, 128009]));
  assert.throws(() => new TokenSampler({ topP: 0 }, new Rng(1)), /topP = 0 must be in \(0, 1\]/);
  assert.throws(() => new TokenSampler({ topK: 2.5 }, new Rng(1)), /topK = 2.5/);
  assert.throws(() => new TokenSampler({ temperature: -1 }, new Rng(1)), /temperature = -1/);
  assert.throws(() => new TokenSampler({ repetitionPenalty: 0 }, new Rng(1)), /repetitionPenalty = 0/);
  assert.throws(() => new TokenSampler({ temperature: 0.8 }), /needs an Rng/);
  assert.throws(
    () => new TokenSampler({}, new Rng(1)).next(new Float32Array([-Infinity, -Infinity])),
    /no finite logit/,
  );
});
