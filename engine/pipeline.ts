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

export class PipelineCache {
  #pipelines = new Map<string, Promise<GPUComputePipeline>>();

  constructor(private readonly gpu: Gpu) {}

  get size(): number {
    return this.#pipelines.size;
  }

  get(spec: KernelSpec): Promise<GPUComputePipeline> {
    const code = substitute(spec.shader, spec.substitutions);
    const entry = spec.entry ?? "main";
    const constants = spec.constants ?? {};
    const key = `${entry}\u0000${JSON.stringify(Object.entries(constants).sort())}\u0000${code}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      p = this.#compile(spec.shader.file, code, entry, constants);
      this.#pipelines.set(key, p);
      p.catch(() => this.#pipelines.delete(key));
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
