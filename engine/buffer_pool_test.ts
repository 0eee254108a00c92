// The pool of released storage buffers: reuse by exact size, the ledger's live, pooled and peak bytes,
// mappable buffers never pooled, the cap, trimming, buffers held back while an encoder is open; a
// reused buffer works like a new one; a census of the buffers in use at once and a trim that keeps
// that many; buffers destroyed without pooling.

import { ok as assert } from "node:assert";
import {
  BUFFER_POOL_MAX_BYTES,
  closeBufferCensus,
  createBuffer,
  destroyBuffer,
  openBufferCensus,
  readAs,
  releaseBuffer,
  trimBufferPool,
  upload,
} from "./buffers.ts";
import { Encoder } from "./encoder.ts";
import { gpuTest } from "./testing.ts";

await gpuTest(
  "buffer pool: released storage buffers are reused by size and counted until trimmed",
  async (gpu) => {
    trimBufferPool(gpu);
    const start = gpu.memory.report();
    assert(start.pooledBytes === 0, `pool not empty after a trim: ${start.pooledBytes}`);
    gpu.memory.resetPeak();
    const a = createBuffer(gpu, 1000, "activations", "a");
    releaseBuffer(a);
    let r = gpu.memory.report();
    assert(r.liveBytes === start.liveBytes && r.pooledBytes === 1000, `after release: ${JSON.stringify(r)}`);
    // Another size gets a new buffer; the same size (after padding to 4 bytes) gets the pooled one.
    const b = createBuffer(gpu, 2000, "workspace", "b");
    assert(b !== a, "a buffer of another size came from the pool");
    const c = createBuffer(gpu, 998, "workspace", "c");
    assert(c === a, "a released buffer of the same padded size was not reused");
    r = gpu.memory.report();
    assert(
      r.pooledBytes === 0 && r.liveBytes === start.liveBytes + 3000,
      `after reuse: ${JSON.stringify(r)}`,
    );
    assert(r.peakBytes === start.liveBytes + 3000, `peak ${r.peakBytes}: live plus pooled`);
    // A reused buffer holds what is written to it next, like a new one.
    releaseBuffer(c);
    const d = upload(gpu, Float32Array.from({ length: 250 }, (_, i) => i * 0.5), "workspace", "d");
    assert(d === a, "upload did not reuse the pooled buffer");
    const got = await readAs(gpu, d, "f32", 250);
    for (let i = 0; i < 250; i++) assert(got[i] === i * 0.5, `reused buffer: element ${i} = ${got[i]}`);
    // Mappable buffers are destroyed, never pooled.
    const m = createBuffer(gpu, 1000, "staging", "m", 0x01 | 0x08);
    releaseBuffer(m);
    assert(gpu.memory.report().pooledBytes === 0, "a mappable buffer went to the pool");
    releaseBuffer(b);
    releaseBuffer(d);
    assert(gpu.memory.report().pooledBytes === 3000);
    trimBufferPool(gpu);
    r = gpu.memory.report();
    assert(r.pooledBytes === 0 && r.liveBytes === start.liveBytes, `after trim: ${JSON.stringify(r)}`);
    const e = createBuffer(gpu, 1000, "workspace");
    assert(e !== a, "a trimmed buffer was handed out again");
    releaseBuffer(e);
    trimBufferPool(gpu);
    // A buffer released while an encoder is open (which may still name it) waits for the submit.
    const f = createBuffer(gpu, 1000, "workspace", "f");
    const enc = new Encoder(gpu);
    releaseBuffer(f);
    const g = createBuffer(gpu, 1000, "workspace", "g");
    assert(g !== f, "a buffer released under an open encoder was reused before its submit");
    await enc.submit();
    const h = createBuffer(gpu, 1000, "workspace", "h");
    assert(h === f, "a held buffer did not join the pool at the submit");
    releaseBuffer(g);
    releaseBuffer(h);
    trimBufferPool(gpu);
    assert(gpu.memory.report().pooledBytes === 0, "trim left pooled bytes");
    assert(BUFFER_POOL_MAX_BYTES >= 2 ** 30);
  },
);

await gpuTest(
  "buffer pool: a census counts the buffers in use at once; a trim keeps that many",
  async (gpu) => {
    trimBufferPool(gpu);
    const before = createBuffer(gpu, 400, "workspace", "made before the census");
    openBufferCensus(gpu);
    // 800 bytes: three in use at once (then one released and one made again); 1200: one, twice.
    const a = [0, 1, 2].map(() => createBuffer(gpu, 800, "activations"));
    releaseBuffer(a[0]);
    a[0] = createBuffer(gpu, 800, "activations");
    for (let i = 0; i < 2; i++) releaseBuffer(createBuffer(gpu, 1200, "workspace"));
    releaseBuffer(before); // made before the census: not counted
    const census = closeBufferCensus(gpu);
    assert(census.get(800) === 3 && census.get(1200) === 1 && !census.has(400), `census ${[...census]}`);
    for (const b of a) releaseBuffer(b);
    const extra = [0, 1].map(() => createBuffer(gpu, 800, "activations"));
    for (const b of extra) releaseBuffer(b); // pooled: 800 x 3, 1200 x 1, 400 x 1
    assert(
      gpu.memory.report().pooledBytes === 3 * 800 + 1200 + 400,
      `pooled ${gpu.memory.report().pooledBytes}`,
    );
    trimBufferPool(gpu, new Map([[800, 2], [1200, 5]]));
    assert(gpu.memory.report().pooledBytes === 2 * 800 + 1200, `kept ${gpu.memory.report().pooledBytes}`);
    // A kept buffer is handed out again and works.
    const kept = upload(gpu, Float32Array.from({ length: 200 }, (_, i) => i + 0.25), "workspace", "kept");
    assert([...a, ...extra].includes(kept), "a kept 800-byte buffer was not reused");
    const got = await readAs(gpu, kept, "f32", 200);
    for (let i = 0; i < 200; i++) assert(got[i] === i + 0.25, `kept buffer: element ${i} = ${got[i]}`);
    releaseBuffer(kept);
    const c = createBuffer(gpu, 1200, "workspace");
    destroyBuffer(c);
    assert(gpu.memory.report().pooledBytes === 2 * 800, "a destroyed buffer went to the pool");
    trimBufferPool(gpu);
    assert(gpu.memory.report().pooledBytes === 0, "trim left pooled bytes");
  },
);
