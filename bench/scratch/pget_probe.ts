import { openGpu } from "../../engine/gpu.ts";
const gpu = await openGpu({ backend: "dawn" });
const shader = {
  file: "x.wgsl",
  code:
    "override A: u32 = 0u; override B: u32 = 0u; @compute @workgroup_size(1) fn main() { _ = A; _ = B; }\n" +
    "// pad\n".repeat(2000),
};
await gpu.pipelines.get({ shader, constants: { A: 1, B: 0 }, substitutions: {} });
for (let r = 0; r < 3; r++) {
  const t0 = performance.now();
  for (let i = 0; i < 10000; i++) {
    await gpu.pipelines.get({ shader, constants: { A: 1, B: 0 }, substitutions: {} });
  }
  console.log(`pipelines.get: ${((performance.now() - t0) / 10000 * 1000).toFixed(2)} us`);
}
Deno.exit(0);
