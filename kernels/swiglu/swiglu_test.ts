import { createBuffer, poison, readBytes, readF16, roundToF16, uploadF16 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, Rng, testSeed } from "../../engine/testing.ts";
import { swigluBackward, swigluForward } from "./swiglu.ts";
import { swigluBackwardRef, swigluRef } from "./swiglu_ref.ts";

/** Gate values: mostly normal, some far into both tails of the sigmoid (exp overflows in f32 for
 * g < -88) and some near zero. */
function gateValues(rng: Rng, n: number): Float64Array {
  return roundToF16(Float64Array.from({ length: n }, (_, i) => {
    if (i % 11 === 0) return rng.uniform(-60000, 60000) / 100;
    if (i % 11 === 1) return rng.uniform(-1e-3, 1e-3);
    return rng.normal() * 3;
  }));
}

async function checkCase(gpu: Gpu, rng: Rng, n: number): Promise<void> {
  const g = gateValues(rng, n);
  const u = roundToF16(rng.normals(n, 2));
  const dh = roundToF16(rng.normals(n, 1));
  const gBuf = uploadF16(gpu, g);
  const uBuf = uploadF16(gpu, u);
  const dhBuf = uploadF16(gpu, dh);
  // One element more than n, to see that the element after the end is left alone.
  const outs = [0, 1, 2].map(() => createBuffer(gpu, (n + 1) * 2, "workspace"));
  outs.forEach((b) => poison(gpu, b, "f16"));
  const [hBuf, dgBuf, duBuf] = outs;
  try {
    const enc = new Encoder(gpu);
    await swigluForward(enc, { g: gBuf, u: uBuf, h: hBuf, n });
    await swigluBackward(enc, { dh: dhBuf, g: gBuf, u: uBuf, dg: dgBuf, du: duBuf, n });
    await enc.submit();
    const want = swigluBackwardRef(dh, g, u);
    const tol = { rtol: 2e-3, atol: 1e-6 };
    assertClose(await readF16(gpu, hBuf, n), roundToF16(swigluRef(g, u)), { ...tol, label: `h n ${n}` });
    assertClose(await readF16(gpu, dgBuf, n), roundToF16(want.dg), { ...tol, label: `dg n ${n}` });
    assertClose(await readF16(gpu, duBuf, n), roundToF16(want.du), { ...tol, label: `du n ${n}` });
    for (const b of outs) {
      const past = new Uint16Array(await readBytes(gpu, b, (n + 1) * 2))[n];
      if (past !== 0x7e00) throw new Error(`n ${n}: the element after the end was overwritten`);
    }
  } finally {
    for (const b of [gBuf, uBuf, dhBuf, ...outs]) b.destroy();
  }
}

await gpuTest("swiglu: forward and backward against float64, ragged n, sigmoid tails", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  try {
    for (const n of [1, 2, 999, 3 * 1111, 14336 + 7]) await checkCase(gpu, rng, n);
  } catch (e) {
    throw new Error(`seed ${seed}: ${(e as Error).message}`);
  }
});
