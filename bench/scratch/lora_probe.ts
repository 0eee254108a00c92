// Where LoRA's cost goes on the 8B shapes (T = 4096, R = 64), and slice widths.
import { openGpu } from "../../engine/gpu.ts";
import { createBuffer, roundToF16, uploadF16 } from "../../engine/buffers.ts";
import { timeGpu } from "../../engine/timing.ts";
import { profileGpu } from "../../engine/profile.ts";
import { Encoder } from "../../engine/encoder.ts";
import { Rng } from "../../engine/testing.ts";
import { nf4Matmul, nf4Upload } from "../../kernels/nf4/nf4.ts";
import { randomNf4Host } from "../../kernels/nf4/nf4_bench.ts";
import { matmul } from "../../kernels/matmul/matmul.ts";
import { loraBackward, loraForward } from "../../kernels/lora/lora.ts";
const gpu = await openGpu({ backend: "dawn" });
const rng = new Rng(1);
const T = 4096, R = 64;
const big = 4096 * 14336;
const x = uploadF16(gpu, roundToF16(rng.uniforms(big)));
const dy = uploadF16(gpu, roundToF16(rng.uniforms(big)));
const y = createBuffer(gpu, big * 2, "workspace");
const dx = createBuffer(gpu, big * 2, "workspace");
const u = uploadF16(gpu, roundToF16(rng.uniforms(T * R)));
const du = createBuffer(gpu, T * R * 2, "workspace");
const a16 = uploadF16(gpu, roundToF16(rng.uniforms(14336 * R, -0.02, 0.02)));
const b16 = uploadF16(gpu, roundToF16(rng.uniforms(14336 * R, -0.02, 0.02)));
const dA = createBuffer(gpu, 14336 * R * 4, "workspace");
const dB = createBuffer(gpu, 14336 * R * 4, "workspace");
const t = async (f: (enc: Encoder) => Promise<void>, warmupMs = 500) =>
  (await timeGpu(gpu, f, { warmupMs })).ms;
const f3 = (v: number) => v.toFixed(3);
const mode = Deno.args[0] ?? "all";
for (const [inDim, out] of [[4096, 4096], [4096, 1024], [4096, 14336], [14336, 4096]]) {
  const w = nf4Upload(gpu, randomNf4Host(rng, out, inDim));
  const shape = { T, in: inDim, out, R, scale: 1 };
  const base = { kind: "nf4" as const, w };
  if (mode === "all" || mode === "parts") {
    const r: Record<string, number> = {};
    r.nf4fwd = await t((enc) => nf4Matmul(enc, { x, w, y, T, mode: "fwd", out: "f16" }));
    r.nf4fwdLow = await t((enc) =>
      nf4Matmul(enc, { x, w, y, T, mode: "fwd", out: "f16", lowRank: { u, f: b16, R, scale: 1 } })
    );
    r.U = await t((enc) =>
      matmul(enc, { a: x, b: a16, c: u, M: T, N: R, K: inDim, layout: "nt", out: "f16" })
    );
    r.loraFwd = await t((enc) => loraForward(enc, { ...shape, x, base, a16, b16, u, y, yType: "f16" }));
    r.nf4dx = await t((enc) => nf4Matmul(enc, { x: dy, w, y: dx, T, mode: "dx", out: "f16" }));
    r.nf4dxLow = await t((enc) =>
      nf4Matmul(enc, { x: dy, w, y: dx, T, mode: "dx", out: "f16", lowRank: { u: du, f: a16, R, scale: 1 } })
    );
    r.dB = await t((enc) =>
      matmul(enc, { a: dy, b: u, c: dB, M: out, N: R, K: T, layout: "tn", out: "f32" })
    );
    r.dU = await t((enc) =>
      matmul(enc, { a: dy, b: b16, c: du, M: T, N: R, K: out, layout: "nn", out: "f16" })
    );
    r.dA = await t((enc) =>
      matmul(enc, { a: du, b: x, c: dA, M: R, N: inDim, K: T, layout: "tn", out: "f32" })
    );
    r.loraBwd = await t((enc) =>
      loraBackward(enc, { ...shape, x, dy, base, a16, b16, u, du, dA, dB, dx, dxType: "f16" })
    );
    console.log(`${inDim}x${out}: ` + Object.entries(r).map(([k, v]) => `${k} ${f3(v)}`).join("  "));
    console.log(
      `   fwd +${(100 * (r.loraFwd / r.nf4fwd - 1)).toFixed(1)}% (lowRank steps +${
        f3(r.nf4fwdLow - r.nf4fwd)
      }, U ${f3(r.U)}, rest ${f3(r.loraFwd - r.nf4fwdLow - r.U)})` +
        `   bwd +${(100 * (r.loraBwd / r.nf4dx - 1)).toFixed(1)}% (lowRank steps +${
          f3(r.nf4dxLow - r.nf4dx)
        }, dB+dU+dA ${f3(r.dB + r.dU + r.dA)}, rest ${f3(r.loraBwd - r.nf4dxLow - r.dB - r.dU - r.dA)})`,
    );
    for (const which of ["fwd", "bwd"]) {
      for (let rep = 0; rep < 3; rep++) {
        const { profile } = await profileGpu(gpu, async () => {
          const enc = new Encoder(gpu);
          for (let i = 0; i < 4; i++) {
            if (which === "fwd") await loraForward(enc, { ...shape, x, base, a16, b16, u, y, yType: "f16" });
            else {await loraBackward(enc, {
                ...shape,
                x,
                dy,
                base,
                a16,
                b16,
                u,
                du,
                dA,
                dB,
                dx,
                dxType: "f16",
              });}
          }
          await enc.submit();
          await gpu.sync();
        });
        if (rep < 2) continue;
        const n = profile.dispatches.length / 4;
        const last = profile.dispatches.slice(3 * n);
        console.log(
          `   profile ${which} (4th rep): span ${
            f3(last.at(-1)!.startMs + last.at(-1)!.ms - last[0].startMs)
          } ` +
            last.map((d) => `${d.label.replace(/^kernels\//, "").replace(/\.wgsl:main/, "")} ${f3(d.ms)}`)
              .join(" | "),
        );
      }
    }
  }
  if ((mode === "all" || mode === "slices") && !(inDim === 4096 && out === 1024)) {
    for (const m of ["fwd", "dx"] as const) {
      const N = m === "fwd" ? out : inDim, K = m === "fwd" ? inDim : out;
      const most = Math.floor(32 * 2 ** 20 / (K * 2) / 128) * 128;
      const cells: string[] = [];
      for (let c = Math.max(128, most - 128 * 24); c <= most; c += 128) {
        const v = await t(
          (enc) =>
            nf4Matmul(enc, {
              x: m === "fwd" ? x : dy,
              w,
              y: m === "fwd" ? y : dx,
              T,
              mode: m,
              out: "f16",
              sliceColumns: c,
            }),
          250,
        );
        cells.push(`${c}:${f3(v)}`);
      }
      const auto = await t(
        (enc) =>
          nf4Matmul(enc, { x: m === "fwd" ? x : dy, w, y: m === "fwd" ? y : dx, T, mode: m, out: "f16" }),
        250,
      );
      console.log(`   slices ${m} ${inDim}x${out} auto ${f3(auto)}: ${cells.join(" ")}`);
    }
  }
}
Deno.exit(0);
