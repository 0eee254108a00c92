// WGSL kernels and their launchers, one folder per family. Kernels take buffers and shapes and
// know nothing of models.
export * from "./matmul/matmul.ts";
export * from "./attention/flash_attention.ts";
export * from "./nf4/nf4.ts";
export * from "./lora/lora.ts";
export * from "./cross_entropy/cross_entropy.ts";
export * from "./optim/optim.ts";
export * from "./elementwise/elementwise.ts";
export * from "./norm/rmsnorm.ts";
export * from "./rope/rope.ts";
export * from "./swiglu/swiglu.ts";
export * from "./embedding/embedding.ts";
export * from "./matvec/matvec.ts";
