// The GPU runtime: devices and capabilities, buffers with byte accounting, pipelines, command
// batching and timing.
export * from "./gpu.ts";
export * from "./memory.ts";
export * from "./buffers.ts";
export * from "./pipeline.ts";
export * from "./encoder.ts";
export * from "./replay_encoder.ts";
export * from "./timing.ts";
