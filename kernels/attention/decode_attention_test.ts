import { createBuffer, poison, readAs, roundToF16, upload, uploadF16 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import { assertClose, gpuTest, rms, Rng, testSeed } from "../../engine/testing.ts";
import {
  decodeAttention,
  type DecodeAttentionShape,
  decodeAttentionUnsupported,
  decodeAttentionWorkspaceBytes,
} from "./decode_attention.ts";
import { decodeAttentionRef } from "./decode_attention_ref.ts";
import { flashAttentionRef } from "./flash_attention_ref.ts";

// The decode reference is the last row of causal attention over n tokens.
Deno.test("decode attention reference equals the last row of causal attention", () => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const n = 9, H = 4, KVH = 2, D = 5, scale = 0.6;
  const qAll = rng.uniforms(n * H * D, -2, 2);
  const k = rng.uniforms(n * KVH * D, -2, 2);
  const v = rng.uniforms(n * KVH * D);
  const full = flashAttentionRef(qAll, k, v, { B: 1, T: n, H, KVH, D, causal: true, scale }).o;
  const q = qAll.slice((n - 1) * H * D);
  const got = decodeAttentionRef(q, k, v, { n, H, KVH, D, scale });
  assertClose(got, full.slice((n - 1) * H * D), { atol: 1e-12, rtol: 1e-12, label: `seed ${seed}` });
});

interface Case extends DecodeAttentionShape {
  Tmax: number;
  /** Inputs uniform in [-range, range]: large ranges give peaked softmax rows. */
  range: number;
}

// Ragged n: one row, under one chunk, just over one chunk (128), several chunks with a ragged
// last one, a full cache; GQA groups of 1, 3, 4 and 8; head dims 64, 96 (D/4 = 24 does not divide
// the 128 invocations that share out v's positions) and 128; peaked scores.
const CASES: Case[] = [
  { n: 1, Tmax: 16, H: 4, KVH: 1, D: 64, range: 1 },
  { n: 37, Tmax: 300, H: 4, KVH: 2, D: 64, range: 1 },
  { n: 129, Tmax: 300, H: 8, KVH: 1, D: 128, range: 1 },
  { n: 300, Tmax: 300, H: 2, KVH: 2, D: 128, range: 3 },
  { n: 517, Tmax: 600, H: 8, KVH: 2, D: 64, range: 2, scale: 0.3 },
  { n: 45, Tmax: 64, H: 6, KVH: 2, D: 96, range: 1 },
];

await gpuTest("decode attention matches the float64 reference on ragged cache lengths", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  for (const cs of CASES) {
    const { n, Tmax, H, KVH, D, range } = cs;
    const label = `seed ${seed} n=${n} Tmax=${Tmax} H=${H} KVH=${KVH} D=${D} range ${range}`;
    const why = decodeAttentionUnsupported(gpu.caps, cs);
    if (why) throw new Error(`${label}: ${why}`);
    const q = roundToF16(rng.uniforms(H * D, -range, range));
    const k = roundToF16(rng.uniforms(Tmax * KVH * D, -range, range));
    const v = roundToF16(rng.uniforms(Tmax * KVH * D));
    // Rows past n hold huge values: reading them would show in the output.
    for (let i = n * KVH * D; i < k.length; i++) {
      k[i] = 60000;
      v[i] = -60000;
    }
    const bufs: GPUBuffer[] = [];
    const keep = (b: GPUBuffer) => (bufs.push(b), b);
    try {
      const out = keep(createBuffer(gpu, H * D * 2, "workspace"));
      const part = keep(createBuffer(gpu, decodeAttentionWorkspaceBytes(H, D, Tmax), "workspace"));
      poison(gpu, out, "f16");
      poison(gpu, part, "f32");
      const enc = new Encoder(gpu);
      await decodeAttention(enc, {
        ...cs,
        q: keep(uploadF16(gpu, q)),
        k: keep(uploadF16(gpu, k)),
        v: keep(uploadF16(gpu, v)),
        out,
        part,
        position: keep(upload(gpu, Uint32Array.of(n - 1))),
      });
      await enc.submit();
      const got = await readAs(gpu, out, "f16", H * D);
      const want = decodeAttentionRef(q, k, v, { n, H, KVH, D, scale: cs.scale ?? 1 / Math.sqrt(D) });
      assertClose(got, want, { atol: 2e-3 * rms(want) + 1e-4, rtol: 4e-3, label });
    } finally {
      for (const b of bufs) b.destroy();
    }
  }
});

await gpuTest("decode attention refuses bad shapes and a small workspace", async (gpu) => {
  const why = decodeAttentionUnsupported(gpu.caps, { n: 4, H: 6, KVH: 4, D: 64 });
  if (!why?.includes("multiple of KVH")) throw new Error(`expected a KVH error, got ${why}`);
  const small = createBuffer(gpu, 16, "workspace");
  const x = createBuffer(gpu, 4 * 64 * 2, "workspace");
  try {
    const enc = new Encoder(gpu);
    let message = "";
    try {
      await decodeAttention(enc, {
        n: 4,
        H: 4,
        KVH: 1,
        D: 64,
        q: x,
        k: x,
        v: x,
        out: x,
        part: small,
        position: x,
      });
    } catch (e) {
      message = (e as Error).message;
    }
    if (!message.includes("workspace has 16 bytes")) {
      throw new Error(`expected a workspace error, got "${message}"`);
    }
  } finally {
    small.destroy();
    x.destroy();
  }
});
