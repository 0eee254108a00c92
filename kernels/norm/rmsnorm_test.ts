import {
  createBuffer,
  poison,
  readF16,
  readF32,
  roundToF16,
  uploadF16,
  uploadF32,
} from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, rms, Rng, testSeed } from "../../engine/testing.ts";
import {
  rmsnormBackward,
  rmsnormForward,
  rmsnormWeightGrad,
  rmsnormWeightGradWorkspaceBytes,
} from "./rmsnorm.ts";
import { rmsnormBackwardRef, rmsnormRef, rmsnormWeightGradRef } from "./rmsnorm_ref.ts";

// Ragged shapes: rows of C = 4 up to 4096 (more than one vec4 per invocation), C / 4 not a
// multiple of the workgroup, and T not a multiple of the weight gradient's 64-row slices.
const SHAPES: [number, number][] = [[1, 4], [7, 128], [13, 4096], [33, 260], [70, 1000]];

/** Inputs of one case: `scale` sets the magnitude of x (tiny rows make eps matter, huge ones
 * test f32 statistics on values near the f16 limit). */
function inputs(rng: Rng, T: number, C: number, scale: number) {
  const x = roundToF16(scale > 1e3 ? rng.uniforms(T * C, -scale, scale) : rng.normals(T * C, scale));
  const w = roundToF16(rng.uniforms(C, -2, 2));
  const dy = roundToF16(rng.normals(T * C, 1));
  return { x, w, dy };
}

async function checkCase(
  gpu: Gpu,
  rng: Rng,
  T: number,
  C: number,
  scale: number,
  eps: number,
  accumulate: boolean,
) {
  const { x, w, dy } = inputs(rng, T, C, scale);
  const dx0 = accumulate ? roundToF16(rng.normals(T * C, 1)) : undefined;
  const dw0 = accumulate ? Float64Array.from(Float32Array.from(rng.normals(C, 1))) : undefined;
  const xBuf = uploadF16(gpu, x);
  const wBuf = uploadF16(gpu, w);
  const dyBuf = uploadF16(gpu, dy);
  const yBuf = createBuffer(gpu, T * C * 2, "workspace");
  const rstdBuf = createBuffer(gpu, T * 4, "workspace");
  const dxBuf = dx0 ? uploadF16(gpu, dx0) : createBuffer(gpu, T * C * 2, "workspace");
  const dwBuf = dw0 ? uploadF32(gpu, dw0) : createBuffer(gpu, C * 4, "workspace");
  const wsBuf = createBuffer(gpu, rmsnormWeightGradWorkspaceBytes(T, C), "workspace");
  const label = `T ${T} C ${C} scale ${scale} eps ${eps} accumulate ${accumulate}`;
  poison(gpu, yBuf, "f16");
  poison(gpu, rstdBuf, "f32");
  poison(gpu, wsBuf, "f32");
  if (!dx0) poison(gpu, dxBuf, "f16");
  if (!dw0) poison(gpu, dwBuf, "f32");
  try {
    const enc = new Encoder(gpu);
    await rmsnormForward(enc, { x: xBuf, w: wBuf, y: yBuf, rstd: rstdBuf, T, C, eps });
    await rmsnormBackward(enc, { dy: dyBuf, x: xBuf, w: wBuf, rstd: rstdBuf, dx: dxBuf, T, C, accumulate });
    await rmsnormWeightGrad(enc, {
      dy: dyBuf,
      x: xBuf,
      rstd: rstdBuf,
      dw: dwBuf,
      workspace: wsBuf,
      T,
      C,
      accumulate,
    });
    await enc.submit();
    const want = rmsnormRef(x, w, T, C, eps);
    const rstd = await readF32(gpu, rstdBuf, T);
    assertClose(rstd, want.rstd, { rtol: 1e-5, label: `rstd ${label}` });
    // Two f16 roundings on the way, either of which may fall the other way with f32 statistics.
    const y = await readF16(gpu, yBuf, T * C);
    assertClose(y, want.y, { rtol: 2.5e-3, atol: 1e-7, label: `y ${label}` });
    // The backward is checked against the reference fed with the kernel's own rstd.
    const dxWant = rmsnormBackwardRef(dy, x, w, rstd, T, C, dx0);
    const dx = await readF16(gpu, dxBuf, T * C);
    assertClose(dx, dxWant, { rtol: 2e-3, atol: 1e-3 * rms(dxWant) + 1e-7, label: `dx ${label}` });
    const dwWant = rmsnormWeightGradRef(dy, x, rstd, T, C, dw0);
    const dw = await readF32(gpu, dwBuf, C);
    // The f16 rounding of x * r inside the sum may land one step apart between the kernel's f32
    // product and the float64 one: allow one f16 step of every term.
    const slack = new Float64Array(C);
    for (let t = 0; t < T; t++) {
      for (let c = 0; c < C; c++) slack[c] += Math.abs(dy[t * C + c] * x[t * C + c] * rstd[t]) * 2 ** -10;
    }
    for (let c = 0; c < C; c++) {
      const err = Math.abs(dw[c] - dwWant[c]);
      if (!(err <= slack[c] + 1e-5 * Math.abs(dwWant[c]) + 1e-6)) {
        throw new Error(`dw ${label}: [${c}] ${dw[c]} vs ${dwWant[c]} (error ${err}, allowed ${slack[c]})`);
      }
    }
  } finally {
    for (const b of [xBuf, wBuf, dyBuf, yBuf, rstdBuf, dxBuf, dwBuf, wsBuf]) b.destroy();
  }
}

await gpuTest("rmsnorm: forward, dx and dw on ragged shapes against float64", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  try {
    for (const [T, C] of SHAPES) await checkCase(gpu, rng, T, C, 1, 1e-5, false);
    // eps dominates tiny rows; large rows approach the f16 limit (x^2 sums need f32).
    await checkCase(gpu, rng, 9, 256, 1e-3, 1e-5, true);
    await checkCase(gpu, rng, 5, 512, 65000, 1e-6, true);
    await checkCase(gpu, rng, 70, 1000, 1, 1e-5, true);
  } catch (e) {
    throw new Error(`seed ${seed}: ${(e as Error).message}`);
  }
});

Deno.test("rmsnorm: C that is not a multiple of 4 is refused with a clear error", async () => {
  const fakeEnc = { gpu: {} } as unknown as Encoder;
  let msg = "";
  try {
    await rmsnormForward(fakeEnc, {
      x: {} as GPUBuffer,
      w: {} as GPUBuffer,
      y: {} as GPUBuffer,
      rstd: {} as GPUBuffer,
      T: 2,
      C: 6,
      eps: 1e-5,
    });
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!msg.includes("C = 6")) throw new Error(`expected an error naming C = 6, got "${msg}"`);
});
