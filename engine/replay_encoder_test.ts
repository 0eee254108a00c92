// The replay encoder: dispatches that repeat on the same buffers keep their bind groups, and each
// repetition's parameters still reach the GPU; other buffers at the same dispatch index get a bind
// group of their own; work split over several encoders continues the slot numbering.

import { ok as assert } from "node:assert";
import { createBuffer, readAs, releaseBuffer, uploadF32 } from "./buffers.ts";
import { ReplayBindings, ReplayEncoder } from "./replay_encoder.ts";
import { gpuTest } from "./testing.ts";
import { scaleElements } from "../kernels/elementwise/elementwise.ts";

await gpuTest("replay encoder: kept bind groups, fresh parameters, continued slots", async (gpu) => {
  const n = 300;
  const x = uploadF32(gpu, Float32Array.from({ length: n }, (_, i) => i + 1));
  const outs = [0, 1].map(() => createBuffer(gpu, n * 4, "workspace"));
  const bindings = new ReplayBindings(gpu, "test");
  try {
    // Each repetition: 300 launches (more than one uniform buffer of 256 slots) split over two
    // encoders; launch i writes out[(i + target) % 2] = (base + i) * x.
    let groups: (GPUBindGroup | undefined)[] = [];
    for (const [rep, base, target] of [[0, 1, 0], [1, 10, 0], [2, 100, 1]] as const) {
      let first = 0;
      for (const part of [0, 1]) {
        const enc = new ReplayEncoder(bindings, `rep ${rep} part ${part}`, first);
        for (let i = part * 150; i < (part + 1) * 150; i++) {
          // Dispatch i writes outs[(i + target) % 2]; the last writer of each buffer is 298 or 299.
          await scaleElements(enc, { x, out: outs[(i + target) % 2], n, dtype: "f32", factor: base + i });
        }
        first = enc.nextSlot;
        await enc.submit();
      }
      const now = bindings.dispatches.map((d) => d?.bindGroup);
      if (rep === 1) {
        assert(
          now.length === groups.length && now.every((g, i) => g === groups[i]),
          "bind groups were remade",
        );
      }
      if (rep === 2) assert(now.every((g, i) => g !== groups[i]), "a bind group on other buffers was kept");
      groups = now;
      for (const [b, buf] of outs.entries()) {
        const last = (b + target) % 2 === 0 ? 298 : 299;
        const got = await readAs(gpu, buf, "f32", n);
        for (let i = 0; i < n; i++) {
          const want = (base + last) * (i + 1);
          assert(got[i] === want, `repetition ${rep}, out ${b}[${i}] = ${got[i]}, expected ${want}`);
        }
      }
    }
  } finally {
    bindings.destroy();
    for (const b of [x, ...outs]) releaseBuffer(b);
  }
});
