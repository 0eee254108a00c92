import { createBuffer, poison, readF16, roundToF16, upload, uploadF16 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, Rng, testSeed } from "../../engine/testing.ts";
import { LLAMA31_ROPE_SCALING, ropeBackward, ropeForward, ropeInvFreq } from "./rope.ts";
import { ropeRef } from "./rope_ref.ts";

Deno.test("rope: llama3 frequency bands of Llama-3.1-8B (theta 500000, D 128)", () => {
  const plain = ropeInvFreq(128, 500000);
  const scaled = ropeInvFreq(128, 500000, LLAMA31_ROPE_SCALING);
  if (plain[0] !== 1 || scaled[0] !== 1) {
    throw new Error(`inv_freq[0] must be 1, got ${plain[0]}, ${scaled[0]}`);
  }
  for (let i = 0; i < 64; i++) {
    const unscaled = 1 / 500000 ** ((2 * i) / 128);
    if (plain[i] !== Math.fround(unscaled)) throw new Error(`unscaled inv_freq[${i}] = ${plain[i]}`);
    if (i <= 28) {
      if (scaled[i] !== plain[i]) {
        throw new Error(`inv_freq[${i}] should be unchanged: ${scaled[i]} vs ${plain[i]}`);
      }
    } else if (i >= 35) {
      if (scaled[i] !== Math.fround(unscaled / 8)) throw new Error(`inv_freq[${i}] should be divided by 8`);
    } else {
      const ratio = scaled[i] / plain[i];
      if (!(ratio > 1 / 8 && ratio < 1)) throw new Error(`inv_freq[${i}] should be blended, ratio ${ratio}`);
      // The blend: s = (8192 / wavelen - 1) / 3, f' = (1 - s) f / 8 + s f.
      const s = (8192 / ((2 * Math.PI) / unscaled) - 1) / 3;
      const want = Math.fround((1 - s) * unscaled / 8 + s * unscaled);
      if (scaled[i] !== want) throw new Error(`inv_freq[${i}] = ${scaled[i]}, expected ${want}`);
    }
  }
  // Blended ratios rise monotonically from the long-wavelength side.
  for (let i = 29; i < 35; i++) {
    if (!(scaled[i] / plain[i] > scaled[i + 1] / plain[i + 1])) throw new Error(`blend not monotone at ${i}`);
  }
});

interface Case {
  T: number;
  heads: number;
  D: number;
  invFreq: Float32Array;
  positions: Uint32Array;
}

/** Positions of packed sequences (each restarting at 0 or at an offset), with the largest
 * position a Llama-3.1 context can hold. */
function positions(rng: Rng, T: number, maxPos: number): Uint32Array {
  const out = new Uint32Array(T);
  let p = 0;
  for (let t = 0; t < T; t++) {
    if (t % 9 === 0) p = rng.int(maxPos);
    out[t] = Math.min(p++, maxPos - 1);
  }
  out[0] = 0;
  if (T > 1) out[T - 1] = maxPos - 1;
  return out;
}

async function checkCase(gpu: Gpu, rng: Rng, cs: Case): Promise<void> {
  const { T, heads, D, invFreq } = cs;
  const n = T * heads * D;
  const x = roundToF16(rng.uniforms(n, -2, 2));
  const xBuf = uploadF16(gpu, x);
  const xInPlace = uploadF16(gpu, x);
  const posBuf = upload(gpu, cs.positions);
  const freqBuf = upload(gpu, invFreq);
  const yBuf = createBuffer(gpu, n * 2, "workspace");
  poison(gpu, yBuf, "f16");
  // A third output at an element offset inside a larger buffer (a KV-cache row), poisoned around it.
  const off = 2 * (1 + rng.int(40));
  const yOffBuf = createBuffer(gpu, (off + n + 8) * 2, "workspace");
  poison(gpu, yOffBuf, "f16");
  const label = `T ${T} heads ${heads} D ${D}`;
  // cos and sin in f32 and one f16 rounding of the output.
  const tol = { rtol: 1e-3, atol: 5e-4 };
  try {
    const enc = new Encoder(gpu);
    const common = { positions: posBuf, invFreq: freqBuf, T, heads, D };
    await ropeForward(enc, { ...common, x: xBuf, out: yBuf });
    await ropeForward(enc, { ...common, x: xInPlace });
    await ropeForward(enc, { ...common, x: xBuf, out: yOffBuf, outOffset: off });
    await enc.submit();
    const want = ropeRef(x, cs.positions, invFreq, T, heads, D);
    const y = await readF16(gpu, yBuf, n);
    assertClose(y, want, { ...tol, label: `forward ${label}` });
    assertClose(await readF16(gpu, xInPlace, n), want, { ...tol, label: `forward in place ${label}` });
    const withOffset = await readF16(gpu, yOffBuf, off + n + 8);
    assertClose(withOffset.subarray(off, off + n), want, {
      ...tol,
      label: `forward at offset ${off} ${label}`,
    });
    for (const i of [...Array(off).keys(), ...[0, 1, 2, 3, 4, 5, 6, 7].map((k) => off + n + k)]) {
      if (!Number.isNaN(withOffset[i])) {
        throw new Error(`${label}: offset ${off}: element ${i} outside was written`);
      }
    }
    // Backward in place on the forward's output: the negative rotation, which brings x back.
    const enc2 = new Encoder(gpu);
    await ropeBackward(enc2, { ...common, x: yBuf });
    await enc2.submit();
    const back = await readF16(gpu, yBuf, n);
    assertClose(back, ropeRef(y, cs.positions, invFreq, T, heads, D, -1), {
      ...tol,
      label: `backward ${label}`,
    });
    assertClose(back, x, { rtol: 2e-3, atol: 2e-3, label: `backward(forward(x)) = x ${label}` });
  } finally {
    for (const b of [xBuf, xInPlace, posBuf, freqBuf, yBuf, yOffBuf]) b.destroy();
  }
}

await gpuTest(
  "rope: forward and backward, in place and out of place, llama3 scaling, large positions",
  async (gpu) => {
    const seed = testSeed();
    const rng = new Rng(seed);
    const llama = ropeInvFreq(128, 500000, LLAMA31_ROPE_SCALING);
    const cases: Case[] = [
      { T: 37, heads: 3, D: 128, invFreq: llama, positions: positions(rng, 37, 131072) },
      { T: 29, heads: 2, D: 128, invFreq: llama, positions: positions(rng, 29, 4096) },
      { T: 19, heads: 5, D: 64, invFreq: ropeInvFreq(64, 10000), positions: positions(rng, 19, 2048) },
      { T: 1, heads: 1, D: 4, invFreq: ropeInvFreq(4, 10000), positions: Uint32Array.of(7) },
    ];
    try {
      for (const cs of cases) await checkCase(gpu, rng, cs);
    } catch (e) {
      throw new Error(`seed ${seed}: ${(e as Error).message}`);
    }
  },
);
