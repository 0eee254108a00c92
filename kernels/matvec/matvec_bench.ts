// Batch-1 matrix-vector products at the Llama-3.1-8B shapes (in x out): the NF4 projections
// 4096x4096 (q, o), 4096x1024 (k, v), 4096x14336 (gate, up), 14336x4096 (down), and the f16
// lm_head 4096x128256 (f32 logits). Memory-bound: GB/s of the bytes that must move (weight with
// its absmax data, x, y), compared with `copy_bandwidth`. Every variant the adapter runs gets a row.
// Quick: 512x512 NF4 and 512x4096 f16.

import { createBuffer, upload } from "../../engine/buffers.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import { nf4Quantize, nf4Release } from "../nf4/nf4.ts";
import { matvec, MATVEC_VARIANTS, matvecBytes, matvecUnsupported, type MatvecWeight } from "./matvec.ts";

/** A buffer of `count` moderate random f16 values (a random 4 MiB pattern repeated). */
function randomF16(gpu: Gpu, count: number, seed: number): GPUBuffer {
  const bytes = count * 2;
  const chunk = Math.min(bytes, 4 * 2 ** 20) & ~3;
  const bits = new Uint16Array(chunk / 2);
  let s = seed >>> 0;
  for (let i = 0; i < bits.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    bits[i] = 0x2c00 | ((s >>> 16) & 0x83ff);
  }
  const src = upload(gpu, bits);
  const buf = createBuffer(gpu, bytes, "weights", "matvec bench weight");
  const enc = gpu.device.createCommandEncoder();
  for (let off = 0; off < bytes; off += chunk) {
    enc.copyBufferToBuffer(src, 0, buf, off, Math.min(chunk, Math.floor((bytes - off) / 4) * 4));
  }
  gpu.device.queue.submit([enc.finish()]);
  src.destroy();
  return buf;
}

export default async function bench(ctx: BenchContext): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const nf4Shapes: [number, number][] = ctx.quick
    ? [[512, 512]]
    : [[4096, 4096], [4096, 1024], [4096, 14336], [14336, 4096]];
  const f16Shapes: [number, number][] = ctx.quick ? [[512, 4096]] : [[4096, 128256]];
  const ref = "copy_bandwidth";
  for (const gpu of ctx.gpus) {
    const shapes = [
      ...nf4Shapes.map(([i, o]) => ({ kind: "nf4" as const, in: i, out: o })),
      ...f16Shapes.map(([i, o]) => ({ kind: "f16" as const, in: i, out: o })),
    ];
    for (const s of shapes) {
      const yType = s.kind === "f16" ? "f32" : "f16";
      const variants = MATVEC_VARIANTS.filter((v) => matvecUnsupported(gpu.caps, s.kind, s, v) === undefined);
      if (variants.length === 0) continue;
      const source = randomF16(gpu, s.out * s.in, s.out ^ s.in);
      let w: MatvecWeight;
      let release: () => void;
      if (s.kind === "nf4") {
        const q = await nf4Quantize(gpu, source, "f16", s.out, s.in, "matvec bench");
        source.destroy();
        w = { kind: "nf4", w: q };
        release = () => nf4Release(q);
      } else {
        w = { kind: "f16", w: source };
        release = () => source.destroy();
      }
      const x = randomF16(gpu, s.in, 7);
      const y = createBuffer(gpu, s.out * 4, "workspace", "matvec bench y");
      try {
        for (const variant of variants) {
          const t = await timeGpu(
            gpu,
            (enc) => matvec(enc, { w, out: s.out, in: s.in, x, y, yType, variant }),
            { reps: ctx.quick ? 3 : 20 },
          );
          const shape = `in=${s.in} out=${s.out} y=${yType} ${variant}`;
          const bytes = matvecBytes(s.kind, s, yType);
          rows.push(gpuRow(gpu, `matvec_${s.kind}_${s.in}x${s.out}`, shape, t.ms, { bytes, ref }));
        }
      } finally {
        release();
        x.destroy();
        y.destroy();
      }
    }
  }
  return rows;
}
