import { createBuffer, poison, readAs, roundToF16, uploadF16, uploadF32 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, rms, Rng, testSeed } from "../../engine/testing.ts";
import { nf4Release, nf4SliceColumns, nf4Upload, pickNf4MatmulVariant } from "../nf4/nf4.ts";
import { nf4DequantRef, nf4QuantizeRef } from "../nf4/nf4_ref.ts";
import { loraBackward, type LoraBase, loraCastFactors, loraForward } from "./lora.ts";
import { loraBackwardRef, loraForwardRef, loraKeep, type LoraRefShape } from "./lora_ref.ts";

Deno.test("lora dropout mask: about p of the elements dropped, reproducible from the seed", () => {
  const n = 20000;
  let dropped = 0;
  for (let e = 0; e < n; e++) if (!loraKeep(7, 0.25, e)) dropped++;
  if (Math.abs(dropped / n - 0.25) > 0.02) throw new Error(`dropped ${dropped} of ${n} at p = 0.25`);
  let same = 0;
  for (let e = 0; e < 1000; e++) if (loraKeep(7, 0.25, e) === loraKeep(8, 0.25, e)) same++;
  if (same > 800) throw new Error(`seeds 7 and 8 agree on ${same} of 1000 elements`);
});

function check(got: ArrayLike<number>, want: Float64Array, label: string, f16: boolean): void {
  const scale = rms(want);
  assertClose(
    got,
    want,
    f16 ? { atol: 2e-3 * scale, rtol: 1e-3, label } : { atol: 2e-3 * scale, rtol: 2e-4, label },
  );
}

async function runCase(gpu: Gpu, kind: LoraBase["kind"], s: LoraRefShape, rng: Rng): Promise<void> {
  const { T, R } = s;
  const host = nf4QuantizeRef(Float32Array.from(rng.normals(s.out * s.in, 0.05)), s.out, s.in);
  const w = kind === "nf4" ? nf4DequantRef(host) : roundToF16(rng.normals(s.out * s.in, 0.05));
  const x = roundToF16(rng.uniforms(T * s.in));
  const dy = roundToF16(rng.uniforms(T * s.out));
  const aMaster = Float32Array.from(rng.uniforms(R * s.in, -0.3, 0.3));
  const bMaster = Float32Array.from(rng.uniforms(s.out * R, -0.3, 0.3));
  const a16 = roundToF16(aMaster);
  const b16 = roundToF16(bMaster);
  const dA0 = Float64Array.from(rng.uniforms(R * s.in));
  const dB0 = Float64Array.from(rng.uniforms(s.out * R));
  const bufs: GPUBuffer[] = [];
  const keep = (b: GPUBuffer) => (bufs.push(b), b);
  const nf4 = kind === "nf4" ? nf4Upload(gpu, host) : undefined;
  try {
    const base: LoraBase = nf4 ? { kind: "nf4", w: nf4 } : { kind: "f16", w: keep(uploadF16(gpu, w)) };
    const xBuf = keep(uploadF16(gpu, x));
    const dyBuf = keep(uploadF16(gpu, dy));
    const aBuf = keep(uploadF32(gpu, aMaster));
    const bBuf = keep(uploadF32(gpu, bMaster));
    const a16Buf = keep(createBuffer(gpu, R * s.in * 2, "lora"));
    const b16Buf = keep(createBuffer(gpu, s.out * R * 2, "lora"));
    const u = keep(createBuffer(gpu, T * R * 2, "activations"));
    const du = keep(createBuffer(gpu, T * R * 2, "workspace"));
    const xd = keep(createBuffer(gpu, T * s.in * 2, "workspace"));
    const g = keep(createBuffer(gpu, T * s.in * 4, "workspace"));
    const y = keep(createBuffer(gpu, T * s.out * 2, "activations"));
    const dx = keep(createBuffer(gpu, T * s.in * 4, "activations"));
    const dA = keep(uploadF32(gpu, dA0)); // accumulated into
    const dB = keep(uploadF32(gpu, dB0));
    poison(gpu, y, "f16");
    poison(gpu, dx, "f32");
    poison(gpu, u, "f16");
    const shape = { T, in: s.in, out: s.out, R, scale: s.scale, dropout: { p: s.p, seed: s.seed } };
    const fwd = new Encoder(gpu);
    await loraCastFactors(fwd, { a: aBuf, b: bBuf, a16: a16Buf, b16: b16Buf, in: s.in, out: s.out, R });
    const before = fwd.dispatches;
    await loraForward(fwd, { ...shape, x: xBuf, base, a16: a16Buf, b16: b16Buf, u, xd, y, yType: "f16" });
    const forwardDispatches = fwd.dispatches - before;
    await fwd.submit();
    // p = 0 takes the path without dropout; an NF4 base takes s·U·B16^T into its own pass(es): one
    // pass, or on tensor cores a dequantization and a product per slice of the output's columns.
    const nf4Passes = (N: number, K: number) => {
      const sliced = pickNf4MatmulVariant(gpu.caps, { out: s.out, in: s.in, R }) === "subgroup_matrix" &&
        nf4SliceColumns(T, N, K);
      return sliced ? 2 * Math.ceil(N / sliced) : 1;
    };
    const expected = kind === "nf4" ? 1 + nf4Passes(s.out, s.in) : 3;
    if (s.p === 0 && forwardDispatches !== expected) {
      throw new Error(`${kind} base, p = 0: ${forwardDispatches} forward dispatches, expected ${expected}`);
    }
    const bwd = new Encoder(gpu);
    await loraBackward(bwd, {
      ...shape,
      x: xBuf,
      dy: dyBuf,
      base,
      a16: a16Buf,
      b16: b16Buf,
      u,
      du,
      xd,
      g,
      dA,
      dB,
      accumulate: true,
      dx,
      dxType: "f32",
    });
    const backwardDispatches = bwd.dispatches;
    await bwd.submit();
    // dB, dU, dA, then dX with dU · A16 in the NF4 product's own pass(es).
    const expectedBackward = kind === "nf4" ? 3 + nf4Passes(s.in, s.out) : 5;
    if (s.p === 0 && backwardDispatches !== expectedBackward) {
      throw new Error(
        `${kind} base, p = 0: ${backwardDispatches} backward dispatches, expected ${expectedBackward}`,
      );
    }
    const label = `${kind} T=${T} in=${s.in} out=${s.out} R=${R} p=${s.p}`;
    const ref = loraForwardRef(x, w, a16, b16, s);
    const gotU = await readAs(gpu, u, "f16", T * R);
    check(gotU, ref.u, `${label}: U`, true);
    check(await readAs(gpu, y, "f16", T * s.out), ref.y, `${label}: Y`, true);
    const back = loraBackwardRef(x, dy, roundToF16(ref.u), w, a16, b16, s);
    check(await readAs(gpu, dx, "f32", T * s.in), back.dx, `${label}: dX`, false);
    check(
      await readAs(gpu, dB, "f32", s.out * R),
      back.dB.map((v, i) => v + dB0[i]),
      `${label}: dB (accumulated)`,
      false,
    );
    check(
      await readAs(gpu, dA, "f32", R * s.in),
      back.dA.map((v, i) => v + dA0[i]),
      `${label}: dA (accumulated)`,
      false,
    );
  } finally {
    for (const b of bufs) b.destroy();
    if (nf4) nf4Release(nf4);
  }
}

await gpuTest(
  "lora forward and backward vs float64, NF4 and f16 base, with and without dropout",
  async (gpu) => {
    if (!gpu.caps.f16) {
      console.log(`  ${gpu.name} has no shader-f16`);
      return;
    }
    const seed = testSeed();
    const rng = new Rng(seed);
    const shapes = [
      { T: 37, in: 136, out: 72, R: 8 },
      { T: 70, in: 200, out: 136, R: 16 },
    ];
    for (const [i, sh] of shapes.entries()) {
      for (const kind of ["nf4", "f16"] as const) {
        for (const p of [0, 0.25]) {
          if (i > 0 && kind === "f16") continue;
          const s: LoraRefShape = { ...sh, scale: 2, p, seed: rng.nextU32() };
          try {
            await runCase(gpu, kind, s, rng);
          } catch (e) {
            throw new Error(`seed ${seed}: ${(e as Error).message}`);
          }
        }
      }
    }
  },
);
