import {
  createBuffer,
  poison,
  readF16,
  readF32,
  roundToF16,
  upload,
  uploadF16,
  uploadF32,
} from "../../engine/buffers.ts";
import { Encoder } from "../../engine/encoder.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { assertClose, gpuTest, rms, Rng, testSeed } from "../../engine/testing.ts";
import {
  checkEmbeddingIds,
  embeddingBackward,
  embeddingBackwardPlan,
  embeddingForward,
} from "./embedding.ts";
import { embeddingBackwardRef, embeddingRef } from "./embedding_ref.ts";

async function checkCase(gpu: Gpu, rng: Rng, T: number, C: number, V: number): Promise<void> {
  const table = roundToF16(rng.uniforms(V * C, -60000, 60000).map((v, i) => (i % 3 ? v / 60000 : v)));
  // Repeated ids (a small vocabulary part used often), plus out-of-range ids on both sides.
  const ids = Int32Array.from({ length: T }, (_, t) => {
    if (t % 13 === 5) return -1 - rng.int(3);
    if (t % 17 === 3) return V + rng.int(3);
    return t % 2 ? rng.int(Math.min(V, 4)) : rng.int(V);
  });
  const dy = roundToF16(rng.normals(T * C, 1));
  const dTable0 = Float64Array.from(Float32Array.from(rng.normals(V * C, 1)));
  const plan = embeddingBackwardPlan(ids, V);
  const bufs = {
    table: uploadF16(gpu, table),
    ids: upload(gpu, ids),
    out: createBuffer(gpu, T * C * 2, "workspace"),
    dy: uploadF16(gpu, dy),
    order: upload(gpu, plan.order),
    starts: upload(gpu, plan.starts),
    uniqueIds: upload(gpu, plan.uniqueIds),
    dTable: uploadF32(gpu, dTable0),
  };
  poison(gpu, bufs.out, "f16");
  const label = `T ${T} C ${C} V ${V}`;
  try {
    const enc = new Encoder(gpu);
    await embeddingForward(enc, { table: bufs.table, ids: bufs.ids, out: bufs.out, T, C, V });
    await embeddingBackward(enc, { ...bufs, U: plan.uniqueIds.length, T, C, V });
    await enc.submit();
    assertClose(await readF16(gpu, bufs.out, T * C), embeddingRef(table, ids, T, C, V), {
      label: `forward ${label}`,
    });
    const want = embeddingBackwardRef(dy, ids, T, C, V, dTable0);
    assertClose(await readF32(gpu, bufs.dTable, V * C), want, {
      rtol: 1e-5,
      atol: 1e-6 * rms(want) * Math.sqrt(T),
      label: `backward ${label}`,
    });
  } finally {
    Object.values(bufs).forEach((b) => b.destroy());
  }
}

await gpuTest(
  "embedding: gather with out-of-range ids, scatter-add backward with repeated ids",
  async (gpu) => {
    const seed = testSeed();
    const rng = new Rng(seed);
    try {
      // Word rows (C not a multiple of 8) and vector rows, each also longer than one workgroup.
      const shapes = [[1, 2, 1], [37, 130, 11], [3, 1030, 5], [300, 64, 50], [21, 1000, 300], [5, 4104, 7]];
      for (const [T, C, V] of shapes) {
        await checkCase(gpu, rng, T, C, V);
      }
    } catch (e) {
      throw new Error(`seed ${seed}: ${(e as Error).message}`);
    }
  },
);

Deno.test("embedding: out-of-range ids are named on the CPU; the plan groups tokens by id", () => {
  let msg = "";
  try {
    checkEmbeddingIds(Int32Array.of(3, 5, 128256, -1), 128256);
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!msg.includes("128256 at position 2") || !msg.includes("2 of 4")) {
    throw new Error(`unexpected message: ${msg}`);
  }
  checkEmbeddingIds(Int32Array.of(0, 128255), 128256);
  const plan = embeddingBackwardPlan(Int32Array.of(4, 2, 4, 9, 2, 4), 9);
  const got = JSON.stringify([...plan.uniqueIds, "|", ...plan.starts, "|", ...plan.order]);
  if (got !== JSON.stringify([2, 4, "|", 0, 2, 5, "|", 1, 4, 0, 2, 5])) throw new Error(`plan ${got}`);
});
