import {
  createBuffer,
  poison,
  readF32,
  readU32,
  readU8,
  upload,
  uploadF32,
  writeBuffer,
} from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, Rng, testSeed } from "../../engine/testing.ts";
import {
  adamw,
  adamw8bit,
  ADAMW8BIT_MIN_SIZE,
  type AdamWHyper,
  createAdamW8bitState,
  createDynamicMap,
  GRAD_STATS_BYTES,
  gradClip,
  gradStats,
  gradStatsWorkspaceBytes,
  type GradTensor,
  gradUnscale,
  RANK_BUCKETS,
  rankTable,
} from "./optim.ts";
import { adamw8bitRef, adamwRef, clipFactorRef, gradStatsRef } from "./optim_ref.ts";

Deno.test("optim: dynamic maps match bitsandbytes' create_dynamic_map", () => {
  for (const vectorWidth of [0, 8, 16] as const) {
    const s = createDynamicMap(true, { vectorWidth });
    const u = createDynamicMap(false, { vectorWidth });
    const where = `vectorWidth ${vectorWidth}`;
    if (s.length !== 256 || u.length !== 256) throw new Error(`${where}: maps must have 256 entries`);
    if (s[0] !== Math.fround(-0.99296875)) {
      throw new Error(`${where}: signed min ${s[0]}, expected -0.99296875`);
    }
    if (s[127] !== 0) throw new Error(`${where}: signed map[127] = ${s[127]}, expected 0`);
    if (s[255] !== 1) throw new Error(`${where}: signed max ${s[255]}, expected 1`);
    if (u[0] !== 0 || u[255] !== 1) {
      throw new Error(`${where}: unsigned map spans [${u[0]}, ${u[255]}], expected [0, 1]`);
    }
    for (const [name, map] of [["signed", s], ["unsigned", u]] as const) {
      for (let i = 1; i < 256; i++) {
        if (!(map[i] > map[i - 1])) throw new Error(`${where}: ${name} map not strictly increasing at ${i}`);
      }
    }
    // Symmetric signed map: the negative half mirrors the positive half.
    for (let i = 0; i < 127; i++) {
      if (s[i] !== -s[254 - i]) throw new Error(`${where}: signed map[${i}] = ${s[i]} != -map[${254 - i}]`);
    }
    // Smallest entries: 10^-6 times the midpoint of linspace(0.1, 1, 2) and of linspace(0.1, 1, 3).
    if (Math.abs(s[128] - 0.55e-6) > 1e-12) throw new Error(`${where}: signed map[128] = ${s[128]}`);
    if (Math.abs(u[1] - 0.325e-6) > 1e-12) throw new Error(`${where}: unsigned map[1] = ${u[1]}`);
  }
});

Deno.test("optim: rank tables count each map's positive entries below every bucket", () => {
  const bits = new Uint32Array(1);
  const value = new Float32Array(bits.buffer);
  for (const signed of [true, false]) {
    const map = createDynamicMap(signed);
    const table = rankTable(map);
    const name = signed ? "signed" : "unsigned";
    if (table.length !== RANK_BUCKETS || table[0] !== 0) {
      throw new Error(`${name}: table must start with bucket 0 = 0`);
    }
    // Bucket b >= 1 starts at the f32 with bits (105 * 128 + b - 1) << 16 (2^-22 for b = 1).
    for (let b = 1; b < RANK_BUCKETS; b++) {
      bits[0] = (105 * 128 + b - 1) << 16;
      const below = map.filter((x, i) => i < 255 && x > 0 && x < value[0]).length;
      if (table[b] !== below) {
        throw new Error(`${name}: bucket ${b} (from ${value[0]}) holds ${table[b]}, expected ${below}`);
      }
      // The kernel's first guess is off by at most one only if a bucket holds at most one entry.
      if (b > 1 && table[b] - table[b - 1] > 1) {
        throw new Error(`${name}: bucket ${b - 1} holds more than one entry`);
      }
    }
    if (table[1] !== 0 || table[RANK_BUCKETS - 1] !== (signed ? 127 : 254)) {
      throw new Error(`${name}: first and last buckets hold ${table[1]} and ${table[RANK_BUCKETS - 1]}`);
    }
  }
});

function hyper(step: number, rng: Rng): AdamWHyper {
  return {
    lr: 1e-3 * (1 + rng.next()),
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: 0.01 + 0.1 * rng.next(),
    step,
  };
}

await gpuTest("optim: AdamW f32 in torch and bitsandbytes order, three steps", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const n = 3001;
  for (const order of ["torch", "bitsandbytes"] as const) {
    let p = rng.uniforms(n);
    let m = new Float64Array(n);
    let v = new Float64Array(n);
    const pBuf = uploadF32(gpu, p);
    const mBuf = uploadF32(gpu, m);
    const vBuf = uploadF32(gpu, v);
    const gBuf = createBuffer(gpu, n * 4, "workspace");
    try {
      for (const step of [1, 2, 10]) {
        const g = rng.normals(n, 0.01);
        writeBuffer(gpu, gBuf, Float32Array.from(g));
        const h = hyper(step, rng);
        const enc = new Encoder(gpu);
        await adamw(enc, { param: pBuf, grad: gBuf, m: mBuf, v: vBuf, n, hyper: h, order });
        await enc.submit();
        const want = adamwRef(p, Float32Array.from(g), m, v, h, order);
        const gotP = await readF32(gpu, pBuf, n);
        const gotM = await readF32(gpu, mBuf, n);
        const gotV = await readF32(gpu, vBuf, n);
        const label = `seed ${seed}: adamw ${order} step ${step}`;
        assertClose(gotM, want.m, { atol: 1e-9, rtol: 1e-5, label: `${label} m` });
        assertClose(gotV, want.v, { atol: 1e-12, rtol: 1e-5, label: `${label} v` });
        assertClose(gotP, want.param, { atol: 1e-6, rtol: 1e-6, label: `${label} param` });
        // The next step starts from the GPU's own state.
        p = Float64Array.from(gotP);
        m = Float64Array.from(gotM);
        v = Float64Array.from(gotV);
      }
    } finally {
      for (const b of [pBuf, mBuf, vBuf, gBuf]) b.destroy();
    }
  }
});

await gpuTest("optim: AdamW 8-bit blockwise codes and params against float64", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const mapM = createDynamicMap(true);
  const mapV = createDynamicMap(false);
  // A partial last block with N % 4 != 0 (the last block in its own dispatch) and with N % 4 = 0.
  for (const n of [256 * 23 + 77, 256 * 17 + 52]) await checkAdamW8bit(gpu, seed, rng, mapM, mapV, n);
});

async function checkAdamW8bit(
  gpu: Gpu,
  seed: number,
  rng: Rng,
  mapM: Float32Array,
  mapV: Float32Array,
  n: number,
): Promise<void> {
  const blocks = Math.ceil(n / 256);
  const state = createAdamW8bitState(gpu, n);
  const pBuf = uploadF32(gpu, rng.uniforms(n));
  const gBuf = createBuffer(gpu, n * 4, "workspace");
  // Random starting states: codes anywhere in the maps, absmax of several magnitudes; block 3 is
  // all zero (absmax 0, zero gradients) and stays so.
  const codesM = new Uint8Array(n).map(() => rng.int(256));
  const codesV = new Uint8Array(n).map(() => rng.int(256));
  const absM = new Float32Array(blocks).map(() => 10 ** rng.uniform(-4, -1));
  const absV = new Float32Array(blocks).map(() => 10 ** rng.uniform(-8, -3));
  absM[3] = 0;
  absV[3] = 0;
  writeBuffer(gpu, state.m, codesM);
  writeBuffer(gpu, state.v, codesV);
  writeBuffer(gpu, state.absmaxM!, absM);
  writeBuffer(gpu, state.absmaxV!, absV);
  let nearMidpoint = 0;
  let total = 0;
  try {
    for (const step of [1, 2, 7]) {
      const g = new Float32Array(rng.normals(n, 0.01));
      // Tiny gradients make tiny m of both signs (the sign rule), and non-finite ones are skipped.
      for (let i = 0; i < n; i += 17) g[i] *= 1e-6;
      g[5] = NaN;
      g[300] = Infinity;
      g[n - 1] = -Infinity;
      g.fill(0, 3 * 256, 4 * 256);
      writeBuffer(gpu, gBuf, g);
      const p0 = await readF32(gpu, pBuf, n);
      const cm0 = await readU8(gpu, state.m, n);
      const cv0 = await readU8(gpu, state.v, n);
      const am0 = await readF32(gpu, state.absmaxM!, blocks);
      const av0 = await readF32(gpu, state.absmaxV!, blocks);
      const h = hyper(step, rng);
      const enc = new Encoder(gpu);
      await adamw8bit(enc, { param: pBuf, grad: gBuf, state, hyper: h });
      await enc.submit();
      const want = adamw8bitRef(p0, g, cm0, cv0, am0, av0, h, mapM, mapV);
      const label = `seed ${seed}: adamw8bit n ${n} step ${step}`;
      assertClose(await readF32(gpu, pBuf, n), want.param, {
        atol: 1e-6,
        rtol: 1e-6,
        label: `${label} param`,
      });
      assertClose(await readF32(gpu, state.absmaxM!, blocks), want.absmaxM, {
        rtol: 1e-6,
        label: `${label} absmax m`,
      });
      assertClose(await readF32(gpu, state.absmaxV!, blocks), want.absmaxV, {
        rtol: 1e-6,
        label: `${label} absmax v`,
      });
      for (
        const [which, got, exp, norm, map] of [
          ["m", await readU8(gpu, state.m, n), want.codesM, want.normM, mapM],
          ["v", await readU8(gpu, state.v, n), want.codesV, want.normV, mapV],
        ] as const
      ) {
        for (let i = 0; i < n; i++) {
          total++;
          if (got[i] === exp[i]) continue;
          // f32 against f64: a value within 1e-6 of the midpoint of two neighbouring codes may land on
          // either side. Absolute, in units of the block absmax: the new state is a sum of terms up to
          // that size (old state times beta plus the gradient term), so its f32 rounding errs by a few
          // 1e-8 of it, however small the sum (seed 3720011690: 3.6e-8 from the midpoint at 0.0038).
          const mid = (map[got[i]] + map[exp[i]]) / 2;
          if (Math.abs(got[i] - exp[i]) === 1 && Math.abs(norm[i] - mid) <= 1e-6) {
            nearMidpoint++;
            continue;
          }
          throw new Error(
            `${label}: ${which} code [${i}] = ${got[i]}, expected ${exp[i]} (normalized value ${norm[i]}, ` +
              `map ${map[got[i]]} vs ${map[exp[i]]})`,
          );
        }
      }
      // The zero block stays zero with bitsandbytes' codes for it.
      const cm = await readU8(gpu, state.m, n);
      if (cm[3 * 256] !== 255) throw new Error(`${label}: zero block m code ${cm[3 * 256]}, expected 255`);
    }
  } finally {
    state.destroy();
    pBuf.destroy();
    gBuf.destroy();
  }
  if (nearMidpoint > 0) console.log(`  ${nearMidpoint} of ${total} codes off by one at a midpoint`);
  if (nearMidpoint > total * 1e-3) {
    throw new Error(`seed ${seed}: ${nearMidpoint} of ${total} codes off by one`);
  }
}

/** The f32 values next to x on both sides. */
function f32Neighbours(x: number): number[] {
  const bits = new Int32Array(new Float32Array([x]).buffer)[0];
  return [bits - 1, bits + 1].map((b) => new Float32Array(new Int32Array([b]).buffer)[0]);
}

await gpuTest("optim: AdamW 8-bit codes of map entries, f32 midpoints and their neighbours", async (gpu) => {
  // With beta1 = beta2 = 0 from a zero state the new m is the gradient and v its square; a 1 at the
  // head of every block makes both block maxima 1, so the kernel quantizes exactly these values.
  // Ties at a midpoint and values on an entry are where a search that is one off shows.
  const mapM = createDynamicMap(true);
  const mapV = createDynamicMap(false);
  const around = (map: Float32Array) => {
    const out: number[] = [];
    for (let i = 0; i < 256; i++) {
      const mid = i < 255 ? [Math.fround(map[i] + map[i + 1]) * 0.5] : [];
      for (const x of [map[i], ...mid]) out.push(x, ...(x === 0 ? [1e-30, -1e-30] : f32Neighbours(x)));
    }
    return out.filter((x) => Math.abs(x) <= 1);
  };
  // m: the signed map's values themselves. v: 12-bit roundings of the square roots of the unsigned
  // map's values and their neighbours (squares exact in f32), and of 1/4096 steps around them.
  const twelveBits = (x: number) => {
    const e = 2 ** (Math.floor(Math.log2(x)) - 11);
    return Math.round(x / e) * e;
  };
  const forV = around(mapV).filter((x) => x > 0).flatMap((x) => {
    const r = twelveBits(Math.sqrt(x));
    const e = 2 ** (Math.floor(Math.log2(r)) - 11);
    return [r - e, r, r + e].filter((y) => y > 0 && y <= 1);
  });
  const hyperZero: AdamWHyper = { lr: 1e-3, beta1: 0, beta2: 0, eps: 1e-8, weightDecay: 0, step: 1 };
  for (const [name, values] of [["signed map", around(mapM)], ["unsigned map", forV]] as const) {
    const blocks = Math.max(Math.ceil(values.length / 255), ADAMW8BIT_MIN_SIZE / 256);
    const n = blocks * 256;
    const g = new Float32Array(n);
    for (let b = 0; b < blocks; b++) {
      g[b * 256] = 1;
      g.set(values.slice(b * 255, b * 255 + 255), b * 256 + 1);
    }
    const state = createAdamW8bitState(gpu, n);
    const pBuf = uploadF32(gpu, new Float64Array(n));
    const gBuf = upload(gpu, g);
    try {
      const enc = new Encoder(gpu);
      await adamw8bit(enc, { param: pBuf, grad: gBuf, state, hyper: hyperZero });
      await enc.submit();
      const zero = new Uint8Array(n);
      const want = adamw8bitRef(
        new Float64Array(n),
        g,
        zero,
        zero,
        new Float32Array(blocks),
        new Float32Array(blocks),
        hyperZero,
        mapM,
        mapV,
      );
      for (
        const [which, got, exp, norm] of [
          ["m", await readU8(gpu, state.m, n), want.codesM, want.normM],
          ["v", await readU8(gpu, state.v, n), want.codesV, want.normV],
        ] as const
      ) {
        // The m run's squares round in f32 on the GPU, so only its m codes are exact by construction.
        if (name === "signed map" && which === "v") continue;
        for (let i = 0; i < n; i++) {
          if (got[i] !== exp[i]) {
            throw new Error(`${name}: ${which} code [${i}] = ${got[i]} for ${norm[i]}, expected ${exp[i]}`);
          }
        }
      }
    } finally {
      state.destroy();
      pBuf.destroy();
      gBuf.destroy();
    }
  }
});

await gpuTest("optim: AdamW 8-bit keeps f32 states for small tensors (bitsandbytes order)", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const n = 1000;
  const state = createAdamW8bitState(gpu, n);
  if (state.quantized) throw new Error("a 1000-element tensor must keep f32 states");
  const p = rng.uniforms(n);
  const g = Float32Array.from(rng.normals(n, 0.01));
  const pBuf = uploadF32(gpu, p);
  const gBuf = upload(gpu, g);
  try {
    const h = hyper(1, rng);
    const enc = new Encoder(gpu);
    await adamw8bit(enc, { param: pBuf, grad: gBuf, state, hyper: h });
    await enc.submit();
    const want = adamwRef(
      Float32Array.from(p),
      g,
      new Float64Array(n),
      new Float64Array(n),
      h,
      "bitsandbytes",
    );
    assertClose(await readF32(gpu, pBuf, n), want.param, {
      atol: 1e-6,
      rtol: 1e-6,
      label: `seed ${seed}: param`,
    });
    assertClose(await readF32(gpu, state.m, n), want.m, { atol: 1e-9, rtol: 1e-5, label: `seed ${seed}: m` });
  } finally {
    state.destroy();
    pBuf.destroy();
    gBuf.destroy();
  }
});

await gpuTest("optim: gradient norm, non-finite flag, clipping and unscaling", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  // The 1.2M-element tensor needs more than the 1024 workgroups of one pass (a strided loop).
  const sizes = [1, 1000, 4097, 1_200_003];
  const data = sizes.map((n) => Float32Array.from(rng.normals(n, 0.1)));
  const bufs = data.map((d) => upload(gpu, d));
  const grads: GradTensor[] = bufs.map((buffer, i) => ({ buffer, n: sizes[i] }));
  const partials = createBuffer(gpu, gradStatsWorkspaceBytes(grads), "workspace");
  const stats = createBuffer(gpu, GRAD_STATS_BYTES, "workspace");
  const run = async (fn: (enc: Encoder) => Promise<void>) => {
    const enc = new Encoder(gpu);
    await fn(enc);
    await enc.submit();
  };
  const readStats = async () => ({
    norm: (await readF32(gpu, stats, 1))[0],
    flag: (await readU32(gpu, stats, 2))[1],
  });
  try {
    // Unscale by a power of two is exact.
    await run((enc) => gradUnscale(enc, { grads, lossScale: 1024 }));
    for (let k = 0; k < sizes.length; k++) {
      const want = Float64Array.from(data[k], (x) => x / 1024);
      assertClose(await readF32(gpu, bufs[k], sizes[k]), want, {
        label: `seed ${seed}: unscale ${sizes[k]}`,
      });
      data[k] = Float32Array.from(want);
    }
    poison(gpu, stats, "f32");
    await run((enc) => gradStats(enc, { grads, partials, stats }));
    const ref = gradStatsRef(data);
    let got = await readStats();
    assertClose([got.norm], [ref.norm], { rtol: 1e-5, label: `seed ${seed}: norm` });
    if (got.flag !== 0) throw new Error(`seed ${seed}: non-finite flag ${got.flag} on finite gradients`);

    // Clipping to a third of the norm, then to twice the (new) norm, which changes nothing.
    const maxNorm = ref.norm / 3;
    await run(async (enc) => {
      await gradClip(enc, { grads, stats, maxNorm });
      await gradStats(enc, { grads, partials, stats });
      await gradClip(enc, { grads, stats, maxNorm: 2 * maxNorm });
    });
    const factor = clipFactorRef(ref.norm, maxNorm);
    for (let k = 0; k < sizes.length; k++) {
      const want = Float64Array.from(data[k], (x) => x * factor);
      assertClose(await readF32(gpu, bufs[k], sizes[k]), want, {
        rtol: 2e-6,
        label: `seed ${seed}: clip ${sizes[k]}`,
      });
    }
    got = await readStats();
    assertClose([got.norm], [ref.norm * factor], { rtol: 1e-5, label: `seed ${seed}: clipped norm` });

    // One at a time: an infinity in the large tensor, a NaN in the small one, a NaN in the last
    // element of a tensor with N % 4 != 0: the flag is raised.
    for (const [k, idx, value] of [[3, 654_321, Infinity], [1, 999, NaN], [2, 4096, NaN]] as const) {
      const [before] = await readF32(gpu, bufs[k], idx + 1).then((a) => a.subarray(idx));
      writeBuffer(gpu, bufs[k], new Float32Array([value]), idx * 4);
      await run((enc) => gradStats(enc, { grads, partials, stats }));
      got = await readStats();
      if (got.flag !== 1) {
        throw new Error(`seed ${seed}: non-finite flag ${got.flag} with ${value} in tensor ${k}`);
      }
      writeBuffer(gpu, bufs[k], new Float32Array([before]), idx * 4);
    }
    await run((enc) => gradStats(enc, { grads, partials, stats }));
    if ((await readStats()).flag !== 0) throw new Error(`seed ${seed}: non-finite flag stays raised`);
  } finally {
    for (const b of [...bufs, partials, stats]) b.destroy();
  }
});

await gpuTest("optim: a step whose stats count a non-finite gradient changes nothing", async (gpu) => {
  const seed = testSeed();
  const rng = new Rng(seed);
  // 8-bit states (n >= ADAMW8BIT_MIN_SIZE), f32 states through adamw8bit, and AdamW f32; every
  // n % 4 != 0, so that both entry points of each kernel run.
  for (const [kind, n] of [["8bit", ADAMW8BIT_MIN_SIZE + 6], ["8bit", 1001], ["f32", 1003]] as const) {
    const state = kind === "8bit" ? createAdamW8bitState(gpu, n) : undefined;
    const m = kind === "f32" ? uploadF32(gpu, rng.normals(n, 1e-3)) : undefined;
    const v = kind === "f32" ? uploadF32(gpu, rng.uniforms(n, 0, 1e-6)) : undefined;
    const pBuf = uploadF32(gpu, rng.uniforms(n));
    const gBuf = upload(gpu, Float32Array.from(rng.normals(n, 0.01)));
    const stats = createBuffer(gpu, GRAD_STATS_BYTES, "workspace");
    const states = () =>
      state ? [state.m, state.v, ...(state.absmaxM ? [state.absmaxM, state.absmaxV!] : [])] : [m!, v!];
    const snapshot = async () => {
      const all = [await readU8(gpu, pBuf, n * 4)];
      for (const b of states()) all.push(await readU8(gpu, b, b.size));
      return all;
    };
    const step = async (nonFinite: number) => {
      writeBuffer(gpu, stats, new Uint32Array([0x3f800000, nonFinite]));
      const enc = new Encoder(gpu);
      const h = hyper(1, rng);
      if (state) await adamw8bit(enc, { param: pBuf, grad: gBuf, state, hyper: h, skipIfNonFinite: stats });
      else await adamw(enc, { param: pBuf, grad: gBuf, m: m!, v: v!, n, hyper: h, skipIfNonFinite: stats });
      await enc.submit();
    };
    try {
      const label = `seed ${seed}: ${kind} n ${n}`;
      const before = await snapshot();
      await step(3);
      const skipped = await snapshot();
      before.forEach((b, i) => {
        const k = b.findIndex((x, j) => x !== skipped[i][j]);
        if (k >= 0) throw new Error(`${label}: buffer ${i} changed at byte ${k} in a skipped step`);
      });
      await step(0);
      const p = await readF32(gpu, pBuf, n);
      const p0 = new Float32Array(before[0].buffer, before[0].byteOffset, n);
      const changed = p.filter((x, i) => x !== p0[i]).length;
      if (changed < n - 2) {
        throw new Error(`${label}: a step with finite gradients changed ${changed} of ${n} params`);
      }
    } finally {
      state?.destroy();
      for (const b of [m, v, pBuf, gBuf, stats]) b?.destroy();
    }
  }
});
