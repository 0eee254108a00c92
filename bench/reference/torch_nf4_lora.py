#!/usr/bin/env python3
"""Reference timings for the NF4 and LoRA rows, with torch on CUDA (f16).

For the Llama-3.1-8B projections [in -> out] at T = 4096 tokens:
  torch_f16_matmul_fwd_<in>x<out>  Y = X W^T on the already-dequantized f16 weight
  torch_f16_matmul_dx_<in>x<out>   dX = dY W
  torch_lora_fwd_<in>x<out>        Y = X W^T + s (X A^T) B^T, R = 64, s = 1
  torch_lora_bwd_<in>x<out>        dX, dA, dB of that (autograd, W frozen)
Shape strings match the Deno rows (kernels/nf4/nf4_bench.ts, kernels/lora/lora_bench.ts).
CUDA events, warmup, median of repeated timings. Prints one JSON row per line.

  python bench/reference/torch_nf4_lora.py [--json FILE] [--tokens 4096] [--reps 20]
"""

import argparse
import json
import statistics

import torch

SHAPES = [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)]
R = 64


def time_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def row(name, shape, ms, flops, nbytes, adapter):
    return {
        "name": name,
        "backend": "torch",
        "adapter": adapter,
        "shape": shape,
        "ms": ms,
        "tflops": flops / (ms * 1e-3) / 1e12,
        "gbps": nbytes / (ms * 1e-3) / 1e9,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="also write the rows to this file as a JSON array")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    dev = torch.device("cuda")
    adapter = torch.cuda.get_device_name(dev)
    T = args.tokens
    rows = []
    torch.manual_seed(0)
    for (n_in, n_out) in SHAPES:
        name = f"{n_in}x{n_out}"
        shape = f"T={T} in={n_in} out={n_out}"
        x = torch.randn(T, n_in, device=dev, dtype=torch.float16)
        dy = torch.randn(T, n_out, device=dev, dtype=torch.float16)
        w = torch.randn(n_out, n_in, device=dev, dtype=torch.float16) * 0.02
        flops = 2 * T * n_in * n_out
        # Bytes as the Deno rows count them for the NF4 weight: 4 bits per weight.
        ms = time_ms(lambda: x @ w.t(), args.warmup, args.reps)
        rows.append(row(f"torch_f16_matmul_fwd_{name}", shape, ms, flops,
                        2 * T * n_in + n_in * n_out / 2 + 2 * T * n_out, adapter))
        ms = time_ms(lambda: dy @ w, args.warmup, args.reps)
        rows.append(row(f"torch_f16_matmul_dx_{name}", shape, ms, flops,
                        2 * T * n_out + n_in * n_out / 2 + 2 * T * n_in, adapter))

        a = (torch.rand(R, n_in, device=dev, dtype=torch.float16) - 0.5) * 0.04
        b = (torch.rand(n_out, R, device=dev, dtype=torch.float16) - 0.5) * 0.04
        a.requires_grad_(True)
        b.requires_grad_(True)
        xg = x.clone().requires_grad_(True)
        low = 2 * T * R * (n_in + n_out)
        lshape = f"{shape} R={R}"

        def lora_fwd():
            with torch.no_grad():
                return x @ w.t() + (x @ a.t()) @ b.t()

        ms = time_ms(lora_fwd, args.warmup, args.reps)
        rows.append(row(f"torch_lora_fwd_{name}", lshape, ms, flops + low,
                        2 * T * n_in + n_in * n_out / 2 + 2 * R * (n_in + n_out) + 2 * T * n_out, adapter))

        y = xg @ w.t() + (xg @ a.t()) @ b.t()

        def lora_bwd():
            xg.grad = None
            a.grad = None
            b.grad = None
            y.backward(dy, retain_graph=True)

        ms = time_ms(lora_bwd, args.warmup, args.reps)
        rows.append(row(f"torch_lora_bwd_{name}", lshape, ms, flops + 2 * low,
                        2 * T * (n_in + n_out + R) + n_in * n_out / 2 + 2 * R * (n_in + n_out) + 2 * T * n_in
                        + 4 * R * (n_in + n_out), adapter))
        del x, dy, w, a, b, xg, y
        torch.cuda.empty_cache()
    for r in rows:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
