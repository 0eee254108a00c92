import { createBuffer, readBytes, upload, uploadF32 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import { gpuTest, Rng, testSeed } from "../../engine/testing.ts";
import { argmax, argmaxWorkspaceBytes } from "./argmax.ts";
import { argmaxRef } from "./argmax_ref.ts";

// Rows with what decides an argmax: ragged lengths around the workgroup span (2048), ties of the
// maximum (the first must win, also across workgroups), -Infinity, +-0, NaN (never wins; at index
// 0 it makes the answer 0), a maximum at the first and at the last index.
function rows(rng: Rng): { name: string; values: Float32Array }[] {
  const out: { name: string; values: Float32Array }[] = [];
  for (const n of [1, 3, 255, 2047, 2048, 2049, 5000, 128256]) {
    out.push({ name: `random n=${n}`, values: Float32Array.from(rng.normals(n, 4)) });
  }
  const n = 9001;
  const tied = Float32Array.from(rng.uniforms(n, -1, 1));
  for (const i of [7000, 3000, 4100, 8999]) tied[i] = 2.5;
  out.push({ name: "tied maximum in four workgroups", values: tied });
  const coarse = Float32Array.from({ length: n }, () => rng.int(5) - 10);
  out.push({ name: "few distinct values", values: coarse });
  const nans = Float32Array.from(rng.normals(n, 1));
  for (let i = 0; i < n; i += 7) nans[i + 1] = NaN;
  nans[6000] = 50;
  nans[6001] = NaN;
  out.push({ name: "NaNs around the maximum", values: nans });
  const nan0 = Float32Array.from(rng.normals(n, 1));
  nan0[0] = NaN;
  out.push({ name: "NaN at index 0", values: nan0 });
  out.push({ name: "all NaN", values: new Float32Array(3000).fill(NaN) });
  out.push({ name: "all -Infinity", values: new Float32Array(3000).fill(-Infinity) });
  const zeros = new Float32Array(4000).fill(-1);
  zeros[2500] = -0;
  zeros[100] = 0;
  out.push({ name: "+0 after -0", values: zeros });
  const first = Float32Array.from(rng.uniforms(n, -1, 1));
  first[0] = 3;
  out.push({ name: "maximum at index 0", values: first });
  const last = Float32Array.from(rng.uniforms(n, -1, 1));
  last[n - 1] = 3;
  out.push({ name: "maximum at the last index", values: last });
  return out;
}

await gpuTest(
  "argmax matches the sequential scan on ragged rows with ties, infinities and NaN",
  async (gpu) => {
    const rng = new Rng(testSeed());
    for (const { name, values } of rows(rng)) {
      const n = values.length;
      const x = uploadF32(gpu, values);
      const part = createBuffer(gpu, argmaxWorkspaceBytes(n), "workspace");
      const out = upload(gpu, Int32Array.of(-12345));
      try {
        const enc = new Encoder(gpu);
        await argmax(enc, { values: x, n, part, out });
        await enc.submit();
        const got = new Int32Array(await readBytes(gpu, out, 4))[0];
        const want = argmaxRef(values);
        if (got !== want) throw new Error(`${name}: argmax ${got}, want ${want}`);
      } finally {
        x.destroy();
        part.destroy();
        out.destroy();
      }
    }
  },
);

await gpuTest("argmax refuses a short workspace and an empty row", async (gpu) => {
  const x = createBuffer(gpu, 5000 * 4, "workspace");
  const small = createBuffer(gpu, 8, "workspace");
  try {
    for (const [n, part, expect] of [[5000, small, "part has 8 bytes"], [0, small, "n = 0"]] as const) {
      let message = "";
      try {
        await argmax(new Encoder(gpu), { values: x, n, part, out: small });
      } catch (e) {
        message = (e as Error).message;
      }
      if (!message.includes(expect)) throw new Error(`expected "${expect}", got "${message}"`);
    }
  } finally {
    x.destroy();
    small.destroy();
  }
});
