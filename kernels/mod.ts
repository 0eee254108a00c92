// WGSL kernels and their launchers, one folder per family. Kernels take buffers and shapes and
// know nothing of models.
export * from "./matmul/matmul.ts";
export * from "./attention/flash_attention.ts";
