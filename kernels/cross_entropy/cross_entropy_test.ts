import {
  createBuffer,
  poison,
  readF32,
  readU32,
  roundToF16,
  upload,
  uploadF16,
  uploadF32,
} from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, rms, Rng, testSeed } from "../../engine/testing.ts";
import {
  createCrossEntropyWorkspace,
  CROSS_ENTROPY_TOTALS_BYTES,
  crossEntropyBackward,
  crossEntropyForward,
} from "./cross_entropy.ts";
import { crossEntropyBackwardRef, crossEntropyRef } from "./cross_entropy_ref.ts";

interface Case {
  label: string;
  T: number;
  C: number;
  V: number;
  chunk: number;
  /** Ranges of the uniform hidden and weight values. */
  hiddenRange: number;
  weightRange: number;
  /** Fraction of ignored tokens. */
  ignored: number;
  scale: number;
  meanByCount: boolean;
  accumulate: boolean;
  /** Backward tolerance relative to the rms of the expected dHidden. */
  gradTol: number;
}

function makeLabels(rng: Rng, T: number, V: number, ignored: number): Int32Array {
  const labels = new Int32Array(T);
  for (let t = 0; t < T; t++) labels[t] = rng.next() < ignored ? -100 : rng.int(V);
  // Edge ids and ignored tokens at fixed places (when the fraction of ignored tokens is below 1).
  if (ignored < 1 && T >= 4) {
    labels[0] = 0;
    labels[1] = V - 1;
    labels[2] = -100;
    labels[T - 1] = V - 1 - rng.int(Math.min(V, 100));
  }
  return labels;
}

async function runCase(gpu: Gpu, cs: Case, rng: Rng): Promise<void> {
  const { T, C, V } = cs;
  const hidden = roundToF16(rng.uniforms(T * C, -cs.hiddenRange, cs.hiddenRange));
  const weight = roundToF16(rng.uniforms(V * C, -cs.weightRange, cs.weightRange));
  const labels = makeLabels(rng, T, V, cs.ignored);
  const dh0 = rng.uniforms(T * C);
  const ws = createCrossEntropyWorkspace(gpu, T, cs.chunk);
  const hBuf = uploadF16(gpu, hidden);
  const wBuf = uploadF16(gpu, weight);
  const lBuf = upload(gpu, labels);
  const lossBuf = createBuffer(gpu, T * 4, "workspace");
  const lseBuf = createBuffer(gpu, T * 4, "workspace");
  const totBuf = createBuffer(gpu, CROSS_ENTROPY_TOTALS_BYTES, "workspace");
  const dhBuf = cs.accumulate ? uploadF32(gpu, dh0) : createBuffer(gpu, T * C * 4, "workspace");
  for (const b of [lossBuf, lseBuf, totBuf]) poison(gpu, b, "f32");
  if (!cs.accumulate) poison(gpu, dhBuf, "f32");
  try {
    const common = { hidden: hBuf, weight: wBuf, labels: lBuf, T, C, V, workspace: ws };
    const enc = new Encoder(gpu);
    await crossEntropyForward(enc, { ...common, loss: lossBuf, lse: lseBuf, totals: totBuf });
    await crossEntropyBackward(enc, {
      ...common,
      lse: lseBuf,
      totals: totBuf,
      dHidden: dhBuf,
      scale: cs.scale,
      meanByCount: cs.meanByCount,
      accumulate: cs.accumulate,
    });
    await enc.submit();
    const loss = await readF32(gpu, lossBuf, T);
    const lse = await readF32(gpu, lseBuf, T);
    const totF = await readF32(gpu, totBuf, 1);
    const totU = await readU32(gpu, totBuf, 2);
    const dh = await readF32(gpu, dhBuf, T * C);

    const ref = crossEntropyRef(hidden, weight, labels, T, C, V);
    let maxLse = 0;
    for (const x of ref.lse) maxLse = Math.max(maxLse, Math.abs(x));
    // f32 logits from f16 products: the error grows with the magnitude of the logits.
    const atol = 1e-5 * (1 + maxLse);
    assertClose(lse, ref.lse, { atol, rtol: 1e-5, label: `${cs.label} lse` });
    assertClose(loss, ref.loss, { atol, rtol: 1e-5, label: `${cs.label} loss` });
    if (totU[1] !== ref.count) throw new Error(`${cs.label}: count ${totU[1]}, expected ${ref.count}`);
    assertClose([totF[0]], [ref.sum], {
      atol: atol * Math.max(1, ref.count),
      rtol: 1e-5,
      label: `${cs.label} sum`,
    });

    const scale = cs.meanByCount ? cs.scale / Math.max(1, ref.count) : cs.scale;
    const want = crossEntropyBackwardRef(hidden, weight, labels, T, C, V, scale);
    if (cs.accumulate) { for (let i = 0; i < want.length; i++) want[i] += dh0[i]; }
    const r = rms(want);
    assertClose(dh, want, { atol: cs.gradTol * r + 1e-7, rtol: cs.gradTol, label: `${cs.label} dHidden` });
  } finally {
    ws.destroy();
    for (const b of [hBuf, wBuf, lBuf, lossBuf, lseBuf, totBuf, dhBuf]) b.destroy();
  }
}

const CASES: Case[] = [
  {
    label: "T=37 C=72 V=1000 chunk 256",
    T: 37,
    C: 72,
    V: 1000,
    chunk: 256,
    hiddenRange: 1,
    weightRange: 1,
    ignored: 0.2,
    scale: 8 / 29,
    meanByCount: false,
    accumulate: false,
    gradTol: 3e-3,
  },
  {
    // Logits of magnitude ~1e3: exp without the running max would overflow f32.
    label: "extreme logits T=37 C=72 V=1000 chunk 384",
    T: 37,
    C: 72,
    V: 1000,
    chunk: 384,
    hiddenRange: 30,
    weightRange: 4,
    ignored: 0.1,
    scale: 1024,
    meanByCount: true,
    accumulate: false,
    gradTol: 5e-3,
  },
  {
    // One chunk larger than V; every token ignored: zero loss, zero count, dHidden untouched.
    label: "all ignored T=5 C=40 V=200 chunk 256",
    T: 5,
    C: 40,
    V: 200,
    chunk: 256,
    hiddenRange: 1,
    weightRange: 1,
    ignored: 1,
    scale: 1,
    meanByCount: true,
    accumulate: true,
    gradTol: 1e-6,
  },
];

await gpuTest("cross_entropy: chunked forward and backward against float64", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  for (const cs of CASES) {
    try {
      await runCase(gpu, cs, rng);
    } catch (e) {
      throw new Error(`seed ${seed}: ${(e as Error).message}`);
    }
  }
});
