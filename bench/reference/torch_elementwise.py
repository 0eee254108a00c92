"""PyTorch f16 timings of the memory-bound Llama-3.1 ops, on the shapes and with the row names of
kernels/{norm,rope,swiglu,embedding,elementwise}/*_bench.ts, plus `copy_bandwidth`, a plain
device-to-device copy that the memory-bound rows are measured against. Run on the GPU machine:

    python3 bench/reference/torch_elementwise.py [--quick] [--json FILE]

Ops are written the way Hugging Face transformers runs them (LlamaRMSNorm, rotate-half RoPE with
f16 cos/sin, F.silu(g) * u, F.embedding); backward rows time autograd's gradient of the same
graph (inputs' gradients only, like LoRA training, where the weights are frozen).
GB/s counts the bytes that must move (inputs read once, outputs written once), as the Deno rows."""
import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F


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


def rmsnorm(x, w, eps=1e-5):
    h = x.to(torch.float32)
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    return w * h.to(x.dtype)


def llama3_inv_freq(dim=128, theta=500000.0, factor=8.0, low=1.0, high=4.0, orig=8192):
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > orig / low, inv_freq / factor, inv_freq)
    smooth = (orig / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < orig / high) * ~(wavelen > orig / low)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    q = args.quick
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    h16 = torch.float16
    T, C, I = (256, 512, 1024) if q else (4096, 4096, 14336)
    H, KVH, D = (8, 2, 128) if q else (32, 8, 128)
    V = 4096 if q else 128256
    g = torch.Generator(device=dev).manual_seed(1)

    def rand(*shape, dtype=h16):
        return (torch.rand(shape, device=dev, generator=g, dtype=torch.float32) * 2 - 1).to(dtype)

    rows = []

    def row(rname, shape, ms, nbytes):
        rows.append({
            "name": rname, "backend": "torch", "adapter": name, "shape": shape, "ms": ms,
            "tflops": None, "gbps": nbytes / (ms * 1e-3) / 1e9,
        })
        print(f"{rname} {shape}: {ms:.4f} ms {rows[-1]['gbps']:.1f} GB/s", file=sys.stderr)

    # copy_bandwidth: one buffer to another, read + write bytes.
    nbytes = (16 if q else 1024) * 2**20
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    row("copy_bandwidth", f"bytes={nbytes}", time_ms(lambda: dst.copy_(src)), 2 * nbytes)
    del src, dst

    # RMSNorm
    shape = f"T={T} C={C}"
    x = rand(T, C)
    w = rand(C) * 0.5 + 1
    row("rmsnorm_fwd", shape, time_ms(lambda: rmsnorm(x, w)), 2 * T * C * 2 + C * 2 + T * 4)
    xg = x.clone().requires_grad_(True)
    y = rmsnorm(xg, w)
    dy = rand(T, C)
    row("rmsnorm_bwd", shape,
        time_ms(lambda: torch.autograd.grad(y, xg, dy, retain_graph=True)), 3 * T * C * 2 + C * 2 + T * 4)
    del xg, y
    wg = w.clone().requires_grad_(True)
    y = rmsnorm(x, wg)
    row("rmsnorm_bwd_dw", shape,
        time_ms(lambda: torch.autograd.grad(y, wg, dy, retain_graph=True)), 2 * T * C * 2 + T * 4 + C * 4)
    del wg, y, dy

    # Residual add and casts at T x C.
    a, b, out = rand(T, C), rand(T, C), torch.empty(T, C, dtype=h16, device=dev)
    row("residual_add", shape, time_ms(lambda: torch.add(a, b, out=out)), 3 * T * C * 2)
    dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    for frm, to in [("bf16", "f16"), ("f16", "f32"), ("f32", "f16"), ("bf16", "f32"), ("f32", "bf16"), ("f16", "bf16")]:
        s = rand(T, C, dtype=dtypes[frm])
        d = torch.empty(T, C, dtype=dtypes[to], device=dev)
        nb = T * C * (s.element_size() + d.element_size())
        row(f"cast_{frm}_{to}", shape, time_ms(lambda: d.copy_(s)), nb)
    del a, b, out, x

    # RoPE on q [T, H, D] and k [T, KVH, D], HF layout: cos/sin [T, D] in f16 from f32 angles.
    rshape = f"T={T} H={H} KVH={KVH} D={D}"
    inv_freq = llama3_inv_freq(D).to(dev)
    pos = torch.arange(T, device=dev, dtype=torch.float32)
    emb = torch.cat([torch.outer(pos, inv_freq)] * 2, dim=-1)
    cos, sin = emb.cos().to(h16)[:, None, :], emb.sin().to(h16)[:, None, :]
    qt, kt = rand(T, H, D), rand(T, KVH, D)
    rbytes = 2 * (T * H * D + T * KVH * D) * 2 + T * 4 + (D // 2) * 4

    def rope(s):
        return (qt * cos + rotate_half(qt) * s, kt * cos + rotate_half(kt) * s)

    row("rope_fwd", rshape, time_ms(lambda: rope(sin)), rbytes)
    neg_sin = -sin
    row("rope_bwd", rshape, time_ms(lambda: rope(neg_sin)), rbytes)
    del qt, kt

    # SwiGLU
    sshape = f"T={T} I={I}"
    gt, ut = rand(T, I), rand(T, I)
    row("swiglu_fwd", sshape, time_ms(lambda: F.silu(gt) * ut), 3 * T * I * 2)
    gg, ug = gt.clone().requires_grad_(True), ut.clone().requires_grad_(True)
    hh = F.silu(gg) * ug
    dh = rand(T, I)
    row("swiglu_bwd", sshape,
        time_ms(lambda: torch.autograd.grad(hh, (gg, ug), dh, retain_graph=True)), 5 * T * I * 2)
    del gt, ut, gg, ug, hh, dh

    # Embedding gather
    eshape = f"T={T} C={C} V={V}"
    table = torch.zeros(V, C, dtype=h16, device=dev)
    ids = torch.randint(0, V, (T,), device=dev, generator=g)
    row("embedding_fwd", eshape, time_ms(lambda: F.embedding(ids, table)), T * 4 + 2 * T * C * 2)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
