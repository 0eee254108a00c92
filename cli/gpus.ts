// `deno task gpus`: the adapters each backend finds and what kernels can use on them.
import { BACKENDS, openGpu } from "../engine/gpu.ts";

for (const backend of BACKENDS) {
  try {
    const gpu = await openGpu({ backend });
    const c = gpu.caps;
    console.log(`${backend}: ${c.adapter}${c.isFallbackAdapter ? " (software)" : ""}`);
    console.log(
      `  shader-f16 ${c.f16}, subgroups ${c.subgroups} (${c.subgroupMinSize}-${c.subgroupMaxSize}), timestamps ${c.timestamps}`,
    );
    const mats = c.subgroupMatrix.map((m) =>
      `${m.componentType}->${m.resultComponentType} ${m.M}x${m.N}x${m.K}`
    );
    console.log(`  subgroup matrices: ${mats.length ? mats.join(", ") : "none"}`);
    const info = (await gpu.device.adapterInfo) ?? {};
    console.log(
      `  info: ${
        JSON.stringify({
          vendor: info.vendor,
          architecture: info.architecture,
          device: info.device,
          description: info.description,
        })
      }`,
    );
    console.log(`  limits: ${JSON.stringify(c.limits)}`);
    gpu.destroy();
  } catch (e) {
    console.log(`${backend}: unavailable: ${(e as Error).message}`);
  }
}
