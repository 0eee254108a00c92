// One GPU device on one backend: Dawn (npm `webgpu`, the default) or Deno's built-in WebGPU.
// There is no global device: every buffer, pipeline and launch belongs to one `Gpu`, so layers
// can live on different adapters, and two `Gpu`s may share one adapter.

import { MemoryLedger } from "./memory.ts";
import { PipelineCache } from "./pipeline.ts";
import type { DispatchProfile } from "./profile.ts";

export type Backend = "dawn" | "deno";
export const BACKENDS: readonly Backend[] = ["dawn", "deno"];

/** One shape the adapter's subgroup matrices (tensor cores) support, e.g. f16 x f16 -> f32 at 16x16x16. */
export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

/** What kernels choose their variants from. */
export interface Capabilities {
  backend: Backend;
  /** Human-readable adapter name, e.g. "NVIDIA H100 80GB HBM3" or "llvmpipe (LLVM 19...)". */
  adapter: string;
  vendor: string;
  architecture: string;
  isFallbackAdapter: boolean;
  f16: boolean;
  subgroups: boolean;
  timestamps: boolean;
  subgroupMinSize: number;
  subgroupMaxSize: number;
  /** Empty where the adapter has no `chromium-experimental-subgroup-matrix`. */
  subgroupMatrix: SubgroupMatrixConfig[];
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxStorageBuffersPerShaderStage: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupSizeX: number;
    maxComputeWorkgroupsPerDimension: number;
    minUniformBufferOffsetAlignment: number;
  };
}

export interface OpenOptions {
  backend?: Backend;
  /** Case-insensitive substring of the adapter's name; the first adapter is taken when absent. */
  adapter?: string;
}

const WANTED_FEATURES = [
  "shader-f16",
  "subgroups",
  "timestamp-query",
  "chromium-experimental-subgroup-matrix",
] as const;

const LIMIT_NAMES = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxBindGroups",
  "maxBindingsPerBindGroup",
  "maxUniformBuffersPerShaderStage",
  "maxUniformBufferBindingSize",
] as const;

/** Dawn instance toggles (FACTS.md): unsafe APIs for subgroup matrices, f16 on NVIDIA's Vulkan,
 * and unquantized timestamps so short kernels can be timed. Robustness (clamping of every array
 * index in the generated code) is disabled as well unless DAWN_ROBUSTNESS=1: every kernel checks
 * its own bounds, and the clamps cost 2.4x on the tensor-core matmul (they split the vector
 * stores into workgroup memory). */
const DAWN_FLAGS = [
  "enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia",
  "disable-dawn-features=timestamp_quantization",
];

const NO_ADAPTER_HELP = "Install a GPU driver with Vulkan support, or on a machine without a GPU " +
  "Mesa's Vulkan drivers (lavapipe; on Debian bookworm: mesa-vulkan-drivers from " +
  "bookworm-backports, Mesa 25 or newer, since Dawn refuses Mesa 22). " +
  "The `deno` backend (--backend deno) also runs on older Mesa.";

export class GpuError extends Error {
  override name = "GpuError";
}

let dawnGpu: GPU | undefined;
const dawnGpus = new Map<string, GPU>();

/** How long a chain of Dawn's completion polls runs at full speed before pacePolling slows it. */
const FAST_POLL_MS = 2;
let pollingPaced = false;

/** Dawn's Node binding (npm:webgpu) learns that GPU work has finished by polling: while a
 * mapAsync or onSubmittedWorkDone is pending, it schedules a poll with `setImmediate` from native
 * code, processes Dawn's events in it and schedules the next. Under Deno that chain spins at tens
 * of thousands of polls a second and the V8 heap swells with garbage; during a wait of a second or
 * more the main thread then stalls for 0.3-1.5 s at a time (apparently in garbage collection), and
 * finished work is reported that much later (bench/NOTES.md). The binding looks `setImmediate` up for every
 * poll, so this paces it: a chain of calls made from inside the previous one's callback runs at
 * full speed for its first FAST_POLL_MS (short waits, such as a decode step's, stay prompt) and
 * then hops through setTimeout(0), a poll every millisecond or two. A setImmediate called from
 * anywhere else starts a new chain and runs at once. */
function pacePolling(): void {
  if (pollingPaced) return;
  pollingPaced = true;
  const immediate = globalThis.setImmediate;
  let chainStart = 0;
  let inPoll = false;
  const paced = (callback: (...args: unknown[]) => void, ...args: unknown[]) => {
    const now = performance.now();
    if (!inPoll) chainStart = now;
    const run = () => {
      inPoll = true;
      try {
        callback(...args);
      } finally {
        inPoll = false;
      }
    };
    return immediate(now - chainStart < FAST_POLL_MS ? run : () => setTimeout(run, 0));
  };
  globalThis.setImmediate = paced as typeof globalThis.setImmediate;
}

/** On Linux, Deno's WebGPU (wgpu) also probes its OpenGL backend, which loads Mesa's libEGL; at
 * process exit libEGL's finalizer then frees memory while other threads still exit, and glibc
 * aborted the process ("corrupted size vs. prev_size in fastbins", "double free or corruption")
 * after all work was done, now and then (a core dump showed that finalizer on the exiting thread).
 * Only Vulkan is asked for instead, unless DENO_WEBGPU_BACKEND says otherwise; it must be set
 * before the first adapter request creates wgpu's instance. */
function useVulkanOnlyInDenoWebGpu(): void {
  if (Deno.build.os !== "linux") return;
  try {
    if (Deno.env.get("DENO_WEBGPU_BACKEND") === undefined) Deno.env.set("DENO_WEBGPU_BACKEND", "vulkan");
  } catch {
    // Without env permission wgpu keeps its default backends.
  }
}

async function gpuObject(backend: Backend, adapterName?: string): Promise<GPU> {
  if (backend === "deno") {
    if (!("gpu" in navigator) || !navigator.gpu) {
      throw new GpuError(
        "Deno's WebGPU is not enabled: run with --unstable-webgpu (deno.json sets it for the tasks).",
      );
    }
    useVulkanOnlyInDenoWebGpu();
    return navigator.gpu;
  }
  const key = adapterName ?? "";
  const cached = key ? dawnGpus.get(key) : dawnGpu;
  if (cached) return cached;
  let mod: typeof import("webgpu");
  try {
    mod = await import("webgpu");
  } catch (e) {
    throw new GpuError(`Dawn (npm:webgpu) could not be loaded: ${(e as Error).message}`);
  }
  // Dawn's constants (GPUBufferUsage...) where the runtime has none of its own.
  for (const [k, v] of Object.entries(mod.globals)) {
    if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
  }
  const flags = [...DAWN_FLAGS];
  if (Deno.env.get("DAWN_ROBUSTNESS") !== "1") flags[0] += ",disable_robustness";
  if (adapterName) flags.push(`adapter=${adapterName}`);
  pacePolling();
  const gpu = mod.create(flags) as GPU;
  if (key) dawnGpus.set(key, gpu);
  else dawnGpu = gpu;
  return gpu;
}

function readSubgroupMatrixConfigs(info: GPUAdapterInfo): SubgroupMatrixConfig[] {
  const raw = (info as unknown as { subgroupMatrixConfigs?: unknown }).subgroupMatrixConfigs;
  if (!raw || typeof raw !== "object") return [];
  const out: SubgroupMatrixConfig[] = [];
  for (const c of raw as Iterable<Record<string, unknown>>) {
    out.push({
      componentType: String(c.componentType),
      resultComponentType: String(c.resultComponentType),
      M: Number(c.M),
      N: Number(c.N),
      K: Number(c.K),
    });
  }
  return out;
}

/** Dawn describes NVIDIA adapters by their driver ("NVIDIA: 580.159.04 ..."); the device name,
 * where the adapter reports one, says more. */
function adapterDescription(info: GPUAdapterInfo): string {
  const device = /[a-z]/i.test(info.device) ? info.device : "";
  const description = info.description ?? "";
  if (device && !description.includes(device)) return description ? `${device} (${description})` : device;
  return description || [info.vendor, info.architecture].filter(Boolean).join(" ") || "unknown adapter";
}

/** A device on one adapter, with its capabilities, memory ledger and pipeline cache. */
export class Gpu {
  readonly memory = new MemoryLedger();
  readonly pipelines: PipelineCache;
  /** While set (engine/profile.ts profileGpu), every encoder of this Gpu times each dispatch into it. */
  profile: DispatchProfile | undefined = undefined;
  #firstError: string | undefined;
  #destroyed = false;

  constructor(readonly device: GPUDevice, readonly caps: Capabilities) {
    this.pipelines = new PipelineCache(this);
    device.addEventListener("uncapturederror", (e) => {
      const msg = (e as GPUUncapturedErrorEvent).error.message;
      if (this.#firstError === undefined) this.#firstError = msg;
    });
    device.lost.then((info) => {
      if (info.reason !== "destroyed" && !this.#destroyed) {
        this.#firstError ??= `device lost: ${info.message}`;
        console.error(`GPU device lost on ${caps.adapter} (${caps.backend}): ${info.message}`);
      }
    });
  }

  /** Short name for test titles and bench rows: "dawn: NVIDIA H100 80GB HBM3". */
  get name(): string {
    return `${this.caps.backend}: ${this.caps.adapter}`;
  }

  /** Throws the first validation or out-of-memory error the device reported, if any. */
  throwIfFailed(): void {
    if (this.#firstError !== undefined) {
      const msg = this.#firstError;
      this.#firstError = undefined;
      throw new GpuError(`GPU error on ${this.name}: ${msg}`);
    }
  }

  /** Waits for all submitted work, then reports any error it raised. */
  async sync(): Promise<void> {
    await this.device.queue.onSubmittedWorkDone();
    this.throwIfFailed();
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.device.destroy();
  }
}

/** Opens a device with the adapter's real limits and every wanted feature it has. */
export async function openGpu(options: OpenOptions = {}): Promise<Gpu> {
  const backend = options.backend ?? "dawn";
  if (!BACKENDS.includes(backend)) {
    throw new GpuError(`Unknown backend "${backend}": use one of ${BACKENDS.join(", ")}.`);
  }
  const gpu = await gpuObject(backend, options.adapter);
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new GpuError(`No WebGPU adapter on backend "${backend}". ${NO_ADAPTER_HELP}`);
  const description = adapterDescription(adapter.info);
  if (options.adapter && !description.toLowerCase().includes(options.adapter.toLowerCase())) {
    throw new GpuError(
      `No adapter matching "${options.adapter}" on backend "${backend}"; found "${description}".`,
    );
  }
  const features = WANTED_FEATURES.filter((f) => adapter.features.has(f)) as GPUFeatureName[];
  const requiredLimits: Record<string, number> = {};
  const adapterLimits = adapter.limits as unknown as Record<string, number>;
  for (const name of LIMIT_NAMES) {
    if (typeof adapterLimits[name] === "number") requiredLimits[name] = adapterLimits[name];
  }
  const device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits });
  const info = adapter.info;
  const limits = device.limits;
  const has = (f: string) => device.features.has(f);
  const caps: Capabilities = {
    backend,
    adapter: description,
    vendor: info.vendor,
    architecture: info.architecture,
    isFallbackAdapter: Boolean((info as { isFallbackAdapter?: boolean }).isFallbackAdapter),
    f16: has("shader-f16"),
    subgroups: has("subgroups"),
    timestamps: has("timestamp-query"),
    subgroupMinSize: (info as { subgroupMinSize?: number }).subgroupMinSize ?? 0,
    subgroupMaxSize: (info as { subgroupMaxSize?: number }).subgroupMaxSize ?? 0,
    subgroupMatrix: has("chromium-experimental-subgroup-matrix") ? readSubgroupMatrixConfigs(info) : [],
    limits: {
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxBufferSize: limits.maxBufferSize,
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
      maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: limits.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupsPerDimension: limits.maxComputeWorkgroupsPerDimension,
      minUniformBufferOffsetAlignment: limits.minUniformBufferOffsetAlignment,
    },
  };
  return new Gpu(device, caps);
}

/** Opens one device on every backend that has an adapter; `missing` says why the others failed. */
export async function openAllBackends(
  adapter?: string,
): Promise<{ gpus: Gpu[]; missing: { backend: Backend; reason: string }[] }> {
  const gpus: Gpu[] = [];
  const missing: { backend: Backend; reason: string }[] = [];
  for (const backend of BACKENDS) {
    try {
      gpus.push(await openGpu({ backend, adapter }));
    } catch (e) {
      missing.push({ backend, reason: (e as Error).message });
    }
  }
  return { gpus, missing };
}
