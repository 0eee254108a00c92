import { createBuffer, poison, readBytes, upload, uploadF16 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, Rng, testSeed } from "../../engine/testing.ts";
import {
  castElements,
  ELEMENT_BYTES,
  type ElementType,
  elementwiseGrid,
  residualAdd,
  scaleElements,
} from "./elementwise.ts";
import { castRef, encodeElements, residualAddRef, scaleRef } from "./elementwise_ref.ts";

const TYPES: ElementType[] = ["f32", "f16", "bf16"];

/** Values that probe every rounding path: zeros, infinities, NaN, the f16 and bf16 limits and the
 * ties just around them, subnormals of both, f32 subnormals, and far beyond the f16 range. */
const SPECIALS = [
  0,
  -0,
  Infinity,
  -Infinity,
  NaN,
  1,
  -1,
  65504,
  -65504,
  65519.99,
  65520,
  -65520,
  65536,
  1e6,
  -3e38,
  3.4e38,
  2 ** -14,
  2 ** -24,
  -(2 ** -24),
  2 ** -25,
  1.5 * 2 ** -25,
  2 ** -26,
  3 * 2 ** -25,
  2.5 * 2 ** -24,
  1e-7,
  6e-8,
  1 + 2 ** -11,
  1 + 3 * 2 ** -11,
  1 + 2 ** -8,
  1 + 3 * 2 ** -8,
  2049,
  2051,
  1e-40,
  -1e-45,
  1.2e-38,
];

/** Source data of `type`: the specials, then random bit patterns (every exponent, NaNs included),
 * then random values of moderate size. */
function sourceData(type: ElementType, n: number, rng: Rng): Uint16Array | Float32Array {
  const out = type === "f32" ? new Float32Array(n) : new Uint16Array(n);
  const specials = encodeElements(SPECIALS, type);
  for (let i = 0; i < n; i++) {
    if (i < specials.length) out[i] = specials[i];
    else if (i % 3 === 0) out[i] = encodeElements([rng.normal() * 2 ** rng.uniform(-30, 20)], type)[0];
    else if (type === "f32") {
      (out as Float32Array)[i] = new Float32Array(new Uint32Array([rng.nextU32()]).buffer)[0];
    } else out[i] = rng.nextU32() & 0xffff;
  }
  if (type === "f32") {
    // Random f32 bit patterns (through a Uint32Array view, so NaN payloads survive).
    const bits = new Uint32Array(out.buffer);
    for (let i = specials.length; i < n; i += 3) bits[i] = rng.nextU32();
  }
  return out;
}

function isNaNBits(type: ElementType, bits: number): boolean {
  if (type === "f32") return (bits & 0x7fffffff) > 0x7f800000;
  if (type === "f16") return (bits & 0x7c00) === 0x7c00 && (bits & 0x3ff) !== 0;
  return (bits & 0x7f80) === 0x7f80 && (bits & 0x7f) !== 0;
}

/** Bit-exact comparison (any NaN matches any NaN). */
function assertSameBits(
  type: ElementType,
  got: Uint16Array | Uint32Array,
  want: Uint16Array | Uint32Array,
  label: string,
) {
  const bad: string[] = [];
  let count = 0;
  for (let i = 0; i < want.length; i++) {
    if (got[i] === want[i] || (isNaNBits(type, got[i]) && isNaNBits(type, want[i]))) continue;
    count++;
    if (bad.length < 6) bad.push(`[${i}] 0x${got[i].toString(16)} vs 0x${want[i].toString(16)}`);
  }
  if (count > 0) throw new Error(`${label}: ${count} of ${want.length} elements differ: ${bad.join(", ")}`);
}

function bitsOf(data: Uint16Array | Float32Array): Uint16Array | Uint32Array {
  return data instanceof Float32Array ? new Uint32Array(data.buffer, data.byteOffset, data.length) : data;
}

async function runCast(gpu: Gpu, from: ElementType, to: ElementType, n: number, rng: Rng): Promise<void> {
  const src = sourceData(from, n, rng);
  const srcBuf = upload(gpu, src);
  // One element more than n, to see that the element after the end is left alone.
  const dstBuf = createBuffer(gpu, (n + 2) * ELEMENT_BYTES[to], "workspace");
  poison(gpu, dstBuf, to === "f32" ? "f32" : "f16");
  try {
    const enc = new Encoder(gpu);
    await castElements(enc, { src: srcBuf, dst: dstBuf, n, from, to });
    await enc.submit();
    const raw = await readBytes(gpu, dstBuf, (n + 1) * ELEMENT_BYTES[to]);
    const got = to === "f32" ? new Uint32Array(raw) : new Uint16Array(raw);
    const want = bitsOf(castRef(src, from, to));
    const label = `cast ${from} -> ${to}, n ${n}`;
    assertSameBits(to, got.subarray(0, n), want, label);
    const past = got[n];
    if (to === "f32" ? past !== 0x7fc00000 : past !== 0x7e00) {
      throw new Error(`${label}: the element after the end was overwritten (0x${past.toString(16)})`);
    }
  } finally {
    srcBuf.destroy();
    dstBuf.destroy();
  }
}

await gpuTest(
  "elementwise cast: every direction between f32, f16, bf16, bit-exact on extreme values",
  async (gpu) => {
    const seed = testSeed();
    const rng = new Rng(seed);
    for (const from of TYPES) {
      for (const to of TYPES) {
        for (const n of [1, 2, 1001, 4096]) {
          try {
            await runCast(gpu, from, to, n, rng);
          } catch (e) {
            throw new Error(`seed ${seed}: ${(e as Error).message}`);
          }
        }
      }
    }
  },
);

await gpuTest("elementwise residual add: out of place and in place, exact f16 rounding", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  for (const n of [1, 777, 5000]) {
    for (const inplace of [false, true]) {
      // Wide magnitudes, including sums that overflow f16 and sums in the subnormal range.
      const gen = (i: number) =>
        i % 7 === 0
          ? rng.uniform(-65504, 65504)
          : i % 7 === 1
          ? rng.uniform(-1, 1) * 2 ** -16
          : rng.normal() * 4;
      const a = Float64Array.from(Float16Array.from({ length: n }, (_, i) => gen(i)));
      const b = Float64Array.from(Float16Array.from({ length: n }, (_, i) => gen(i)));
      const aBuf = uploadF16(gpu, a);
      const bBuf = uploadF16(gpu, b);
      const outBuf = inplace ? aBuf : createBuffer(gpu, n * 2, "workspace");
      if (!inplace) poison(gpu, outBuf, "f16");
      try {
        const enc = new Encoder(gpu);
        await residualAdd(enc, { a: aBuf, b: bBuf, out: inplace ? undefined : outBuf, n });
        await enc.submit();
        const got = new Uint16Array(await readBytes(gpu, outBuf, n * 2));
        const want = new Uint16Array(Float16Array.from(residualAddRef(a, b)).buffer);
        assertSameBits("f16", got, want, `seed ${seed}: residual add n ${n} in place ${inplace}`);
      } finally {
        aBuf.destroy();
        bBuf.destroy();
        if (!inplace) outBuf.destroy();
      }
    }
  }
});

await gpuTest("elementwise scale: f16 and f32, in place and out of place", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  for (const dtype of ["f16", "f32"] as const) {
    for (const inplace of [false, true]) {
      const n = 333 + rng.int(100);
      const factor = rng.uniform(-3, 3) * 2 ** rng.int(8);
      const raw = rng.normals(n, 100);
      const x = dtype === "f16"
        ? Float64Array.from(Float16Array.from(raw))
        : Float64Array.from(Float32Array.from(raw));
      const xBuf = upload(gpu, encodeElements(x, dtype));
      const outBuf = inplace ? xBuf : createBuffer(gpu, n * ELEMENT_BYTES[dtype], "workspace");
      if (!inplace) poison(gpu, outBuf, dtype);
      try {
        const enc = new Encoder(gpu);
        await scaleElements(enc, { x: xBuf, out: inplace ? undefined : outBuf, n, factor, dtype });
        await enc.submit();
        const bytes = await readBytes(gpu, outBuf, n * ELEMENT_BYTES[dtype]);
        const got = dtype === "f16"
          ? Float64Array.from(new Float16Array(bytes))
          : Float64Array.from(new Float32Array(bytes));
        assertClose(got, scaleRef(x, factor, dtype), {
          label: `seed ${seed}: scale ${dtype} in place ${inplace}`,
        });
      } finally {
        xBuf.destroy();
        if (!inplace) outBuf.destroy();
      }
    }
  }
});

Deno.test("elementwiseGrid spreads large launches over two dimensions", () => {
  const caps = { limits: { maxComputeWorkgroupsPerDimension: 65535 } } as Parameters<
    typeof elementwiseGrid
  >[0];
  const check = (threads: number) => {
    const [x, y] = elementwiseGrid(caps, threads);
    if (x > 65535 || y > 65535 || x * y * 256 < threads || (x * (y - 1)) * 256 >= threads) {
      throw new Error(`grid ${x}x${y} for ${threads} threads`);
    }
  };
  for (const t of [1, 256, 257, 65535 * 256, 65535 * 256 + 1, 4096 * 14336, 2 ** 31]) check(t);
});
