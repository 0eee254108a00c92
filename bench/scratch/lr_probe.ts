// The low-rank steps: shipped LOW_RANK pipeline against the steps after the main loop (mm_lr2).
import { openGpu } from "../../engine/gpu.ts";
import { createBuffer, readBytes, roundToF16, uploadF16 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import { timeGpu } from "../../engine/timing.ts";
import { Rng } from "../../engine/testing.ts";
import { matmul } from "../../kernels/matmul/matmul.ts";
const gpu = await openGpu({ backend: "dawn" });
const shaders = ["mm_lr2", "mm_lr3"].map((v) => ({
  file: `${v}.wgsl`,
  code: Deno.readTextFileSync(new URL(`./${v}.wgsl`, import.meta.url)),
}));
const R = 64;
const shapes = [
  { M: 4096, N: 4096, K: 4096, layout: "nt", ld: 14336 },
  { M: 4096, N: 4096, K: 4096, layout: "nn", ld: 14336 },
  { M: 4096, N: 1024, K: 14336, layout: "nn", ld: 4096 },
  { M: 4096, N: 1024, K: 14336, layout: "nt", ld: 4096 },
] as const;
const rng = new Rng(1);
for (const s of shapes) {
  const a = uploadF16(gpu, roundToF16(rng.uniforms(s.M * s.K)));
  const b = uploadF16(gpu, roundToF16(rng.uniforms(s.N * s.K)));
  const u = uploadF16(gpu, roundToF16(rng.uniforms(s.M * R)));
  const f = uploadF16(gpu, roundToF16(rng.uniforms(s.ld * R)));
  const c = createBuffer(gpu, s.M * s.ld * 2, "workspace");
  const flops = 2 * s.M * s.N * s.K;
  const plain = { a, b, c, M: s.M, N: s.N, K: s.K, layout: s.layout, out: "f16" as const, ldc: s.ld };
  const low = { ...plain, lowRank: { u, f, R, scale: 0.5, ldf: s.ld } };
  const enc0 = new Encoder(gpu);
  await matmul(enc0, low);
  await enc0.submit();
  const want = new Uint16Array(await readBytes(gpu, c, s.M * s.ld * 2));
  const params = new ArrayBuffer(40);
  new Uint32Array(params, 0, 3).set([s.M, s.N, s.K]);
  new Float32Array(params, 12, 2).set([1, 0]);
  new Uint32Array(params, 20, 3).set([s.K, s.ld, R]);
  new Float32Array(params, 32, 1)[0] = 0.5;
  new Uint32Array(params, 36, 1)[0] = s.ld;
  const bt = s.layout === "nt";
  const runs: ((enc: Encoder) => void)[] = [];
  const diffs: number[] = [];
  for (const shader of shaders) {
    const pl = await gpu.pipelines.get({
      shader,
      constants: { A_TRANS: 0, B_TRANS: bt ? 1 : 0, LOW_RANK: 1 },
      substitutions: {
        ACC: "f32",
        OUT: "f16",
        A_LAYOUT: "row_major",
        B_LAYOUT: bt ? "col_major" : "row_major",
      },
    });
    const run = (enc: Encoder) =>
      enc.dispatch(pl, new Uint8Array(params), [a, b, c, u, f], [Math.ceil(s.N / 128), Math.ceil(s.M / 128)]);
    runs.push(run);
    gpu.device.queue.writeBuffer(c, 0, new Uint8Array(s.M * s.ld * 2));
    const enc1 = new Encoder(gpu);
    run(enc1);
    await enc1.submit();
    const got = new Uint16Array(await readBytes(gpu, c, s.M * s.ld * 2));
    let diff = 0, worst = 0;
    for (let i = 0; i < got.length; i++) {
      if (got[i] !== want[i]) {
        diff++;
        worst = Math.max(worst, Math.abs(got[i] - want[i]));
      }
    }
    diffs.push(diff);
    console.log(`  ${shader.file}: ${diff} differ (largest ${worst} f16 units)`);
  }
  for (let round = 0; round < 2; round++) {
    const tp = await timeGpu(gpu, (enc) => matmul(enc, plain));
    const tl = await timeGpu(gpu, (enc) => matmul(enc, low));
    const tf = (t: { ms: number }) =>
      `${t.ms.toFixed(3)} ms ${(flops / t.ms / 1e9).toFixed(0)} TF (+${
        (100 * (t.ms / tp.ms - 1)).toFixed(1)
      }%)`;
    let line = `${s.layout} ${s.M}x${s.N}x${s.K} r${round}: plain ${tf(tp)} | LOW_RANK ${tf(tl)}`;
    for (const [i, run] of runs.entries()) line += ` | ${shaders[i].file} ${tf(await timeGpu(gpu, run))}`;
    console.log(line);
  }
  for (const x of [a, b, u, f, c]) x.destroy();
}
Deno.exit(0);
