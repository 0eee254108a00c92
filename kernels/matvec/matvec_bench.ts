// Batch-1 matrix-vector products at the Llama-3.1-8B shapes (in x out): the NF4 projections
// 4096x4096 (q, o), 4096x1024 (k, v), 4096x14336 (gate, up), 14336x4096 (down), and the f16
// lm_head 4096x128256 (f32 logits). Memory-bound: GB/s of the bytes that must move (weight with
// its absmax data, x, y), compared with `copy_bandwidth`. Every variant the adapter runs gets a row.
// Each timed dispatch reads its weight from device memory, not from the L2 cache: the bench keeps
// enough distinct copies of the weight (at least ROTATION_BYTES in all, more than any L2 of today,
// e.g. the H100's 50 MB) and the repetitions of a timed submit cycle through them, so a copy has
// been evicted by the others before it is read again (a decode step reads every weight once).
// Quick: 512x512 NF4 and 512x4096 f16, two copies.

import { createBuffer, releaseBuffer, upload } from "../../engine/buffers.ts";
import type { Gpu } from "../../engine/gpu.ts";
import { timeGpu } from "../../engine/timing.ts";
import { type BenchContext, type BenchRow, gpuRow } from "../../bench/harness.ts";
import { nf4Quantize, nf4Release, type Nf4Weight } from "../nf4/nf4.ts";
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
  releaseBuffer(src);
  return buf;
}

/** Bytes of weight copies the timed repetitions cycle through. */
const ROTATION_BYTES = 256 * 2 ** 20;
const MAX_COPIES = 64;

function copyOf(gpu: Gpu, src: GPUBuffer, label: string): GPUBuffer {
  const dst = createBuffer(gpu, src.size, "weights", label);
  const enc = gpu.device.createCommandEncoder();
  enc.copyBufferToBuffer(src, 0, dst, 0, src.size);
  gpu.device.queue.submit([enc.finish()]);
  return dst;
}

function nf4Copy(gpu: Gpu, w: Nf4Weight): Nf4Weight {
  return {
    ...w,
    codes: copyOf(gpu, w.codes, "matvec bench codes"),
    absmaxCodes: copyOf(gpu, w.absmaxCodes, "matvec bench absmax codes"),
    nested: copyOf(gpu, w.nested, "matvec bench nested"),
    dynmap: copyOf(gpu, w.dynmap, "matvec bench dynmap"),
  };
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
      const bytes = matvecBytes(s.kind, s, yType);
      const copies = ctx.quick ? 2 : Math.min(MAX_COPIES, Math.ceil(ROTATION_BYTES / bytes));
      const ws: MatvecWeight[] = [];
      const releases: (() => void)[] = [];
      const release = () => releases.forEach((f) => f());
      if (s.kind === "nf4") {
        const q = await nf4Quantize(gpu, source, "f16", s.out, s.in, "matvec bench");
        releaseBuffer(source);
        for (let c = 0; c < copies; c++) {
          const w = c === 0 ? q : nf4Copy(gpu, q);
          ws.push({ kind: "nf4", w });
          releases.push(() =>
            c === 0
              ? nf4Release(w)
              : [w.codes, w.absmaxCodes, w.nested, w.dynmap].forEach((b) => releaseBuffer(b))
          );
        }
      } else {
        for (let c = 0; c < copies; c++) {
          const w = c === 0 ? source : copyOf(gpu, source, "matvec bench weight");
          ws.push({ kind: "f16", w });
          releases.push(() => releaseBuffer(w));
        }
      }
      const x = randomF16(gpu, s.in, 7);
      const y = createBuffer(gpu, s.out * 4, "workspace", "matvec bench y");
      try {
        for (const variant of variants) {
          let next = 0;
          const t = await timeGpu(
            gpu,
            (enc) => matvec(enc, { w: ws[next++ % copies], out: s.out, in: s.in, x, y, yType, variant }),
            { reps: ctx.quick ? 3 : Math.max(20, copies) },
          );
          const shape = `in=${s.in} out=${s.out} y=${yType} ${variant} copies=${copies}`;
          rows.push(gpuRow(gpu, `matvec_${s.kind}_${s.in}x${s.out}`, shape, t.ms, { bytes, ref }));
        }
      } finally {
        release();
        releaseBuffer(x);
        releaseBuffer(y);
      }
    }
  }
  return rows;
}
