// Compute pipelines from WGSL files: compilation errors with file, line and column, and a cache
// keyed by the source, entry point and override constants.

import type { Gpu } from "./gpu.ts";

/** WGSL source with the file it came from (for error messages). */
export interface Shader {
  file: string;
  code: string;
}

export interface KernelSpec {
  shader: Shader;
  entry?: string;
  /** Values of the shader's `override` constants (tile sizes, flags). */
  constants?: Record<string, number>;
  /** Values for `{{NAME}}` placeholders: types and address spaces that override constants cannot set. */
  substitutions?: Record<string, string>;
}

export class KernelCompileError extends Error {
  override name = "KernelCompileError";
}

/** Replaces every `{{NAME}}` in the code; a placeholder without a value, or a value without a
 * placeholder, is an error. Values stay on one line so line numbers still match the file. */
export function substitute(shader: Shader, values: Record<string, string> = {}): string {
  const used = new Set<string>();
  const code = shader.code.replace(/\{\{(\w+)\}\}/g, (_, name: string) => {
    if (!(name in values)) {
      throw new KernelCompileError(`${shader.file}: no value for placeholder {{${name}}}`);
    }
    if (values[name].includes("\n")) {
      throw new KernelCompileError(`${shader.file}: value for {{${name}}} must be one line`);
    }
    used.add(name);
    return values[name];
  });
  for (const name of Object.keys(values)) {
    if (!used.has(name)) throw new KernelCompileError(`${shader.file}: no placeholder {{${name}}}`);
  }
  return code;
}

const shaderKeys = new WeakMap<Shader, string>();

/** File name and a hash of the source, computed once per shader object. */
function shaderKey(shader: Shader): string {
  let key = shaderKeys.get(shader);
  if (key === undefined) {
    let h = 0x811c9dc5;
    for (let i = 0; i < shader.code.length; i++) h = Math.imul(h ^ shader.code.charCodeAt(i), 0x01000193);
    key = `${shader.file}\u0000${shader.code.length}\u0000${(h >>> 0).toString(16)}`;
    shaderKeys.set(shader, key);
  }
  return key;
}

/** The entries of a record in key order as one string (a launcher's constants on the hot path). */
function recordKey(record: Record<string, number | string>): string {
  const keys = Object.keys(record);
  if (keys.length > 1) keys.sort();
  let key = "";
  for (const k of keys) key += `${k}\u0001${record[k]}\u0002`;
  return key;
}

export class PipelineCache {
  /** Per shader file, then per entry, constants and substitutions: a lookup on the hot path
   * neither substitutes nor hashes the whole WGSL source. */
  #pipelines = new Map<string, Map<string, Promise<GPUComputePipeline>>>();
  #size = 0;

  constructor(private readonly gpu: Gpu) {}

  get size(): number {
    return this.#size;
  }

  get(spec: KernelSpec): Promise<GPUComputePipeline> {
    const entry = spec.entry ?? "main";
    const constants = spec.constants ?? {};
    const subs = spec.substitutions ?? {};
    const fileKey = shaderKey(spec.shader);
    let byVariant = this.#pipelines.get(fileKey);
    if (!byVariant) {
      byVariant = new Map();
      this.#pipelines.set(fileKey, byVariant);
    }
    const key = `${entry}\u0000${recordKey(constants)}\u0000${recordKey(subs)}`;
    let p = byVariant.get(key);
    if (!p) {
      const code = substitute(spec.shader, spec.substitutions);
      p = this.#compile(spec.shader.file, code, entry, constants);
      byVariant.set(key, p);
      this.#size++;
      const variants = byVariant;
      p.catch(() => {
        variants.delete(key);
        this.#size--;
      });
    }
    return p;
  }

  async #compile(
    file: string,
    code: string,
    entry: string,
    constants: Record<string, number>,
  ): Promise<GPUComputePipeline> {
    const device = this.gpu.device;
    device.pushErrorScope("validation");
    const module = device.createShaderModule({ code, label: file });
    const info = await module.getCompilationInfo();
    const moduleError = await device.popErrorScope();
    const errors = info.messages.filter((m) => m.type === "error");
    if (errors.length > 0 || moduleError) {
      const lines = errors.map((m) => `${file}:${m.lineNum}:${m.linePos}: error: ${m.message}`);
      if (lines.length === 0) lines.push(`${file}: ${moduleError!.message}`);
      throw new KernelCompileError(`WGSL compilation failed on ${this.gpu.name}\n${lines.join("\n")}`);
    }
    device.pushErrorScope("validation");
    let pipeline: GPUComputePipeline;
    try {
      pipeline = await device.createComputePipelineAsync({
        label: `${file}:${entry}`,
        layout: "auto",
        compute: { module, entryPoint: entry, constants },
      });
    } catch (e) {
      await device.popErrorScope();
      throw new KernelCompileError(
        `${file}: pipeline "${entry}" with ${JSON.stringify(constants)} failed on ${this.gpu.name}: ${
          (e as Error).message
        }`,
      );
    }
    const err = await device.popErrorScope();
    if (err) {
      throw new KernelCompileError(`${file}: pipeline "${entry}" failed on ${this.gpu.name}: ${err.message}`);
    }
    return pipeline;
  }
}
