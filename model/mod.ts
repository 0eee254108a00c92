// Llama-3.1 with LoRA on the GPU engine: configuration, weights, strategies, training and evaluation.
export {};
