"""PyTorch f16 matmul on the shapes of kernels/matmul/matmul_bench.ts, for the side-by-side
ratio in bench/RESULTS.md. Run on the GPU machine:

    python3 bench/reference/torch_matmul.py [--quick] [--json FILE]

Rows: name torch_matmul_<layout>, backend "torch", the same shape strings as the Deno rows."""
import argparse
import json
import sys

import torch


def shapes(quick):
    if quick:
        return [(256, 256, 256, "nt"), (256, 256, 256, "nn")]
    t = 4096
    return [
        (4096, 4096, 4096, "nt"),
        (4096, 4096, 4096, "nn"),
        (4096, 4096, 4096, "tn"),
        (t, 14336, 4096, "nt"),
        (t, 4096, 14336, "nt"),
        (t, 1024, 4096, "nt"),
    ]


def time_ms(fn, warmup=3, reps=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    rows = []
    for m, n, k, layout in shapes(args.quick):
        g = torch.Generator(device=dev).manual_seed(1)
        # Same storage layouts as the WGSL kernels: "nt" B is [N,K], "tn" A is [K,M].
        a = torch.rand((k, m) if layout == "tn" else (m, k), device=dev, generator=g, dtype=torch.float16) * 2 - 1
        b = torch.rand((n, k) if layout == "nt" else (k, n), device=dev, generator=g, dtype=torch.float16) * 2 - 1
        op_a = a.t() if layout == "tn" else a
        op_b = b.t() if layout == "nt" else b
        c = torch.empty((m, n), device=dev, dtype=torch.float16)
        ms = time_ms(lambda: torch.matmul(op_a, op_b, out=c))
        rows.append({
            "name": f"torch_matmul_{layout}",
            "backend": "torch",
            "adapter": name,
            "shape": f"M={m} N={n} K={k}",
            "ms": ms,
            "tflops": 2 * m * n * k / (ms * 1e-3) / 1e12,
            "gbps": 2 * (m * k + n * k + m * n) / (ms * 1e-3) / 1e9,
        })
        print(f"{rows[-1]['name']} {rows[-1]['shape']}: {ms:.3f} ms {rows[-1]['tflops']:.1f} TFLOP/s", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
