import { createBuffer, poison, readAs, roundToF16, uploadF16 } from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, relativeError, rms, Rng, testSeed } from "../../engine/testing.ts";
import {
  flashAttentionBackward,
  flashAttentionDeltaBytes,
  flashAttentionForward,
  type FlashAttentionShape,
  flashAttentionUnsupported,
  type FlashAttentionVariant,
} from "./flash_attention.ts";
import {
  type AttentionRefShape,
  flashAttentionBackwardRef,
  flashAttentionRef,
} from "./flash_attention_ref.ts";

function refShape(s: FlashAttentionShape): AttentionRefShape {
  return {
    B: s.B ?? 1,
    T: s.T,
    H: s.H,
    KVH: s.KVH,
    D: s.D,
    causal: s.causal !== false,
    scale: s.scale ?? 1 / Math.sqrt(s.D),
  };
}

// The reference backward against central differences of L = sum(o * w) on a tiny problem.
Deno.test("flash attention reference backward matches finite differences", () => {
  const seed = testSeed();
  const rng = new Rng(seed);
  for (const causal of [true, false]) {
    const s: AttentionRefShape = { B: 2, T: 5, H: 4, KVH: 2, D: 3, causal, scale: 0.7 };
    const q = rng.uniforms(s.B * s.T * s.H * s.D, -1.5, 1.5);
    const k = rng.uniforms(s.B * s.T * s.KVH * s.D, -1.5, 1.5);
    const v = rng.uniforms(s.B * s.T * s.KVH * s.D);
    const w = rng.uniforms(s.B * s.T * s.H * s.D);
    const loss = () => {
      const { o } = flashAttentionRef(q, k, v, s);
      let sum = 0;
      for (let i = 0; i < o.length; i++) sum += o[i] * w[i];
      return sum;
    };
    const grads = flashAttentionBackwardRef(q, k, v, w, s);
    const eps = 1e-6;
    for (const [name, x, grad] of [["q", q, grads.dq], ["k", k, grads.dk], ["v", v, grads.dv]] as const) {
      const numeric = new Float64Array(x.length);
      for (let i = 0; i < x.length; i++) {
        const x0 = x[i];
        x[i] = x0 + eps;
        const up = loss();
        x[i] = x0 - eps;
        const down = loss();
        x[i] = x0;
        numeric[i] = (up - down) / (2 * eps);
      }
      assertClose(grad, numeric, { atol: 1e-7, rtol: 1e-6, label: `seed ${seed} causal ${causal} d${name}` });
    }
    // delta = rowsum(dO * o) and lse = log sum exp of the scaled scores, directly.
    const { o, lse } = flashAttentionRef(q, k, v, s);
    const delta = new Float64Array(s.B * s.H * s.T);
    for (let b = 0; b < s.B; b++) {
      for (let t = 0; t < s.T; t++) {
        for (let h = 0; h < s.H; h++) {
          let acc = 0;
          for (let d = 0; d < s.D; d++) {
            acc += o[((b * s.T + t) * s.H + h) * s.D + d] * w[((b * s.T + t) * s.H + h) * s.D + d];
          }
          delta[(b * s.H + h) * s.T + t] = acc;
        }
      }
    }
    assertClose(grads.delta, delta, { atol: 1e-12, rtol: 1e-12, label: "delta" });
    const t = s.T - 1;
    let sumExp = 0;
    for (let j = 0; j < s.T; j++) {
      let dot = 0;
      for (let d = 0; d < s.D; d++) dot += q[(t * s.H + 1) * s.D + d] * k[(j * s.KVH + 0) * s.D + d];
      sumExp += Math.exp(s.scale * dot);
    }
    assertClose([lse[1 * s.T + t]], [Math.log(sumExp)], { atol: 1e-12, rtol: 1e-12, label: "lse" });
  }
});

interface Case extends FlashAttentionShape {
  /** Inputs uniform in [-range, range]: large ranges give peaked softmax rows. */
  range: number;
  /** Key t scaled by 1 + ramp * t / T: later keys outscore earlier ones, so a row's running max
   * keeps rising block after block. */
  ramp?: number;
}

// Ragged T (none a multiple of the 16, 32 or 64 row tiles), T over two tiles, GQA groups of 1, 2
// and 4, two sequences in a batch, non-causal, large scores that test the online softmax, and
// scores that rise along the keys, so that rows' maxima rise many times.
const CASES: Case[] = [
  { T: 77, H: 4, KVH: 2, D: 64, range: 1 },
  { T: 1, H: 2, KVH: 1, D: 64, range: 1 },
  { B: 2, T: 45, H: 4, KVH: 1, D: 64, range: 1, causal: false },
  { T: 150, H: 2, KVH: 2, D: 64, range: 3 },
  { T: 37, H: 2, KVH: 1, D: 128, range: 1 },
  { B: 2, T: 70, H: 4, KVH: 2, D: 128, range: 2, scale: 0.2 },
  { T: 200, H: 2, KVH: 1, D: 64, range: 2, ramp: 6 },
  { B: 2, T: 130, H: 4, KVH: 2, D: 128, range: 1, ramp: 10, scale: 0.4, causal: false },
];

async function runCase(gpu: Gpu, variant: FlashAttentionVariant, cs: Case, rng: Rng, backward: boolean) {
  const s = refShape(cs);
  const { B, T, H, KVH, D } = s;
  const nq = B * T * H * D;
  const nk = B * T * KVH * D;
  const q = roundToF16(rng.uniforms(nq, -cs.range, cs.range));
  const kRaw = rng.uniforms(nk, -cs.range, cs.range);
  for (let i = 0; i < nk; i++) kRaw[i] *= 1 + (cs.ramp ?? 0) * (Math.floor(i / (KVH * D)) % T) / T;
  const k = roundToF16(kRaw);
  const v = roundToF16(rng.uniforms(nk));
  const dO = roundToF16(rng.uniforms(nq));
  const ramp = cs.ramp ?? 0;
  const label =
    `${variant} B=${B} T=${T} H=${H} KVH=${KVH} D=${D} causal=${s.causal} range ${cs.range} ramp ${ramp}`;
  const bufs: GPUBuffer[] = [];
  const keep = (b: GPUBuffer) => (bufs.push(b), b);
  try {
    const qBuf = keep(uploadF16(gpu, q));
    const kBuf = keep(uploadF16(gpu, k));
    const vBuf = keep(uploadF16(gpu, v));
    const oBuf = keep(createBuffer(gpu, nq * 2, "workspace"));
    const lseBuf = keep(createBuffer(gpu, B * H * T * 4, "workspace"));
    poison(gpu, oBuf, "f16");
    poison(gpu, lseBuf, "f32");
    const enc = new Encoder(gpu);
    await flashAttentionForward(enc, { ...cs, q: qBuf, k: kBuf, v: vBuf, o: oBuf, lse: lseBuf, variant });
    await enc.submit();
    const o = await readAs(gpu, oBuf, "f16", nq);
    const lse = await readAs(gpu, lseBuf, "f32", B * H * T);
    const want = flashAttentionRef(q, k, v, s);
    assertClose(o, want.o, { atol: 2e-3 * rms(want.o) + 1e-4, rtol: 4e-3, label: `${label}: o` });
    assertClose(lse, want.lse, { atol: 1e-4, rtol: 1e-5, label: `${label}: lse` });
    if (!backward) return;

    const dOBuf = keep(uploadF16(gpu, dO));
    const dqBuf = keep(createBuffer(gpu, nq * 2, "workspace"));
    const dkBuf = keep(createBuffer(gpu, nk * 2, "workspace"));
    const dvBuf = keep(createBuffer(gpu, nk * 2, "workspace"));
    const deltaBuf = keep(createBuffer(gpu, flashAttentionDeltaBytes(cs), "workspace"));
    for (const buf of [dqBuf, dkBuf, dvBuf]) poison(gpu, buf, "f16");
    poison(gpu, deltaBuf, "f32");
    const enc2 = new Encoder(gpu);
    await flashAttentionBackward(enc2, {
      ...cs,
      variant,
      q: qBuf,
      k: kBuf,
      v: vBuf,
      o: oBuf,
      lse: lseBuf,
      dO: dOBuf,
      dq: dqBuf,
      dk: dkBuf,
      dv: dvBuf,
      delta: deltaBuf,
    });
    await enc2.submit();
    const grads = flashAttentionBackwardRef(q, k, v, dO, s);
    const delta = await readAs(gpu, deltaBuf, "f32", B * H * T);
    // delta comes from the f16 output o, so it carries o's rounding.
    assertClose(delta, grads.delta, {
      atol: 4e-3 * rms(grads.delta) + 1e-4,
      rtol: 4e-3,
      label: `${label}: delta`,
    });
    for (
      const [name, buf, n, ref] of [
        ["dq", dqBuf, nq, grads.dq],
        ["dk", dkBuf, nk, grads.dk],
        ["dv", dvBuf, nk, grads.dv],
      ] as const
    ) {
      const got = await readAs(gpu, buf, "f16", n);
      // dq and dk sum dS = P * (dP - delta), which carries delta's rounding (delta comes from the
      // f16 o) and, on tensor cores, its own rounding to f16. Ramped keys are up to 1 + ramp times
      // larger and dominate whole rows, so those errors add up over rows and grow with them.
      const grow = name === "dv" ? 1 : 1 + ramp;
      assertClose(got, ref, { atol: 5e-3 * grow * rms(ref) + 1e-4, rtol: 1e-2, label: `${label}: ${name}` });
      const err = relativeError(got, ref);
      if (!(err < 5e-3)) throw new Error(`${label}: ${name} relative error ${err}`);
    }
  } finally {
    for (const buf of bufs) buf.destroy();
  }
}

for (const variant of ["portable", "subgroup_matrix"] as FlashAttentionVariant[]) {
  await gpuTest(`flash attention ${variant}: forward on ragged T, GQA, batches`, async (gpu) => {
    const seed = testSeed();
    const rng = new Rng(seed);
    let ran = 0;
    for (const cs of CASES) {
      const why = flashAttentionUnsupported(gpu.caps, cs, variant, "forward");
      if (why) {
        if (ran === 0 && cs === CASES.at(-1)) {
          console.log(`  ${variant} not available on ${gpu.name}: ${why}`);
        }
        continue;
      }
      try {
        await runCase(gpu, variant, cs, rng, false);
      } catch (e) {
        throw new Error(`seed ${seed}: ${(e as Error).message}`);
      }
      ran++;
    }
  });
}

for (const variant of ["portable", "subgroup_matrix"] as FlashAttentionVariant[]) {
  await gpuTest(`flash attention ${variant}: backward dq, dk, dv against the reference`, async (gpu) => {
    const seed = testSeed();
    const rng = new Rng(seed);
    for (const cs of CASES) {
      const why = flashAttentionUnsupported(gpu.caps, cs, variant, "backward");
      if (why) {
        if (variant === "portable") {
          throw new Error(`portable backward refused ${JSON.stringify(cs)}: ${why}`);
        }
        if (cs === CASES[0]) console.log(`  ${variant} not available on ${gpu.name}: ${why}`);
        continue;
      }
      try {
        await runCase(gpu, variant, cs, rng, true);
      } catch (e) {
        throw new Error(`seed ${seed}: ${(e as Error).message}`);
      }
    }
  });
}

Deno.test("flash attention launcher refuses bad shapes with a reason", async () => {
  const caps = {
    f16: true,
    adapter: "test adapter",
    subgroupMatrix: [],
    subgroupMinSize: 8,
    subgroupMaxSize: 8,
    limits: { maxComputeWorkgroupStorageSize: 32768 },
  } as unknown as Parameters<typeof flashAttentionUnsupported>[0];
  const ok = { T: 10, H: 4, KVH: 2, D: 64 };
  if (flashAttentionUnsupported(caps, ok, "portable", "backward")) throw new Error("valid shape refused");
  const bad: [FlashAttentionShape, string][] = [
    [{ ...ok, KVH: 3 }, "multiple of KVH"],
    [{ ...ok, D: 60 }, "head dim"],
    [{ ...ok, D: 256 }, "head dim"],
    [{ ...ok, T: 0 }, "T = 0"],
  ];
  for (const [shape, text] of bad) {
    const why = flashAttentionUnsupported(caps, shape, "portable", "forward");
    if (!why?.includes(text)) throw new Error(`${JSON.stringify(shape)}: expected "${text}", got ${why}`);
  }
  if (!flashAttentionUnsupported(caps, ok, "subgroup_matrix", "forward")?.includes("subgroup matrices")) {
    throw new Error("subgroup_matrix accepted on an adapter without subgroup matrices");
  }
  await Promise.resolve();
});
