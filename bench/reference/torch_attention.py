"""PyTorch f16 causal grouped-query attention on the shapes of
kernels/attention/flash_attention_bench.ts, for the side-by-side ratio. Run on the GPU machine:

    python3 bench/reference/torch_attention.py [--quick] [--json FILE]

Rows flash_attention_fwd (forward) and flash_attention_bwd (forward+backward minus forward),
backend "torch", with the same shape strings as the Deno rows. Layout as the WGSL kernels:
q [B,T,H,D], k and v [B,T,KVH,D] (transposed to [B,H,T,D] views for SDPA).
Flops as FlashAttention counts them: forward 4*B*T*T*H*D, halved when causal; backward 2.5x."""
import argparse
import json
import sys

import torch
import torch.nn.functional as F


def shapes(quick):
    if quick:
        return [(1, 256, 4, 2, 64, True)]
    return [(1, 4096, 32, 8, 128, True), (1, 8192, 32, 8, 128, True)]


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


def attention(q, k, v, causal):
    """q [B,T,H,D], k/v [B,T,KVH,D] -> o [B,T,H,D]."""
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    try:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, enable_gqa=True)
    except TypeError:  # torch before 2.5 has no enable_gqa
        group = q.shape[2] // k.shape[2]
        o = F.scaled_dot_product_attention(
            qh, kh.repeat_interleave(group, dim=1), vh.repeat_interleave(group, dim=1), is_causal=causal
        )
    return o.transpose(1, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    rows = []
    for b, t, h, kvh, d, causal in shapes(args.quick):
        g = torch.Generator(device=dev).manual_seed(1)
        rand = lambda *s: (torch.rand(s, device=dev, generator=g, dtype=torch.float16) * 2 - 1)
        q, k, v, do = rand(b, t, h, d), rand(b, t, kvh, d), rand(b, t, kvh, d), rand(b, t, h, d)
        shape = f"B={b} T={t} H={h} KVH={kvh} D={d} {'causal' if causal else 'full'}"
        fwd_flops = 4 * b * t * t * h * d / (2 if causal else 1)
        nq, nk, nl = b * t * h * d, b * t * kvh * d, b * h * t

        with torch.no_grad():
            fwd_ms = time_ms(lambda: attention(q, k, v, causal))
        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))

        def fwd_bwd():
            o = attention(qg, kg, vg, causal)
            o.backward(do)

        fwd_grad_ms = time_ms(lambda: attention(qg, kg, vg, causal))
        both_ms = time_ms(fwd_bwd)
        bwd_ms = max(both_ms - fwd_grad_ms, 1e-6)
        for row_name, ms, flops, nbytes in [
            ("flash_attention_fwd", fwd_ms, fwd_flops, 2 * (2 * nq + 2 * nk) + 4 * nl),
            ("flash_attention_bwd", bwd_ms, 2.5 * fwd_flops, 2 * (4 * nq + 4 * nk) + 4 * nl),
        ]:
            rows.append({
                "name": row_name,
                "backend": "torch",
                "adapter": name,
                "shape": shape,
                "ms": ms,
                "tflops": flops / (ms * 1e-3) / 1e12,
                "gbps": nbytes / (ms * 1e-3) / 1e9,
            })
            print(f"{row_name} {shape}: {ms:.3f} ms {rows[-1]['tflops']:.1f} TFLOP/s", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
