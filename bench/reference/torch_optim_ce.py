"""PyTorch reference for kernels/cross_entropy/cross_entropy_bench.ts and kernels/optim/optim_bench.ts,
for the side-by-side ratio in bench/RESULTS.md. Run on the GPU machine:

    python3 bench/reference/torch_optim_ce.py [--quick] [--json FILE]

Rows use the same names and shape strings as the Deno rows:
  cross_entropy_fwd / cross_entropy_bwd  chunked lm_head + cross-entropy (f16 matmul per vocabulary
      chunk, f32 logsumexp), never the whole [T, V] logits; the backward recomputes each chunk's
      logits and accumulates dHidden in f32. TFLOP/s counts 2*T*C*V (forward) and 4*T*C*V (backward);
      GB/s counts the hidden and weight bytes.
  adamw_f32   torch.optim.AdamW(fused=True, foreach=False) on one flat f32 tensor, 28 B/element.
  adamw8bit   bitsandbytes is not installed on the reference machine, so this row times the same
      fused f32 AdamW step (the fastest torch AdamW); its GB/s counts the 8-bit step's 16 B/element
      like the Deno row, so only the ms column compares the two.
  grad_norm   torch.linalg.vector_norm of the flat f32 gradient, 4 B/element."""
import argparse
import json
import sys

import torch


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


def ce_forward(h, w, labels, chunk):
    """Per-token loss, row log-sum-exp, loss sum and valid count, one vocabulary chunk at a time."""
    t = h.shape[0]
    v = w.shape[0]
    lse = torch.full((t,), float("-inf"), device=h.device, dtype=torch.float32)
    picked = torch.zeros((t,), device=h.device, dtype=torch.float32)
    for v0 in range(0, v, chunk):
        n = min(chunk, v - v0)
        logits = torch.matmul(h, w[v0:v0 + n].t()).float()
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
        in_chunk = (labels >= v0) & (labels < v0 + n)
        idx = (labels - v0).clamp(0, n - 1)
        picked = torch.where(in_chunk, logits.gather(1, idx[:, None]).squeeze(1), picked)
    valid = labels != -100
    loss = torch.where(valid, lse - picked, torch.zeros_like(lse))
    return loss, lse, loss.sum(), valid.sum()


def ce_backward(h, w, labels, lse, count, scale, chunk):
    """dHidden (f32) of scale * mean loss: sum over chunks of ((softmax - onehot) * s) @ W_chunk."""
    t, c = h.shape
    v = w.shape[0]
    dh = torch.zeros((t, c), device=h.device, dtype=torch.float32)
    valid = (labels != -100).float()
    s = scale / count.clamp(min=1).float()
    for v0 in range(0, v, chunk):
        n = min(chunk, v - v0)
        wc = w[v0:v0 + n]
        logits = torch.matmul(h, wc.t()).float()
        g = torch.exp(logits - lse[:, None])
        in_chunk = ((labels >= v0) & (labels < v0 + n)).float()
        idx = (labels - v0).clamp(0, n - 1)
        g.scatter_add_(1, idx[:, None], -in_chunk[:, None])
        g = (g * (valid * s)[:, None]).half()
        dh += torch.matmul(g, wc).float()
    return dh


def row(name, dev_name, shape, ms, flops=None, nbytes=None):
    r = {
        "name": name,
        "backend": "torch",
        "adapter": dev_name,
        "shape": shape,
        "ms": ms,
        "tflops": flops / (ms * 1e-3) / 1e12 if flops else None,
        "gbps": nbytes / (ms * 1e-3) / 1e9 if nbytes else None,
    }
    print(f"{name} {shape}: {ms:.3f} ms", file=sys.stderr)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = torch.device("cuda")
    dev_name = torch.cuda.get_device_name(dev)
    g = torch.Generator(device=dev).manual_seed(1)
    rows = []

    t, c, v, chunk = (128, 256, 4000, 1024) if args.quick else (4096, 4096, 128256, 8192)
    shape = f"T={t} C={c} V={v}"
    h = (torch.rand((t, c), device=dev, generator=g) * 2 - 1).half()
    w = ((torch.rand((v, c), device=dev, generator=g) * 2 - 1) * 0.05).half()
    labels = torch.randint(0, v, (t,), device=dev, generator=g)
    labels[torch.rand((t,), device=dev, generator=g) < 0.3] = -100
    nbytes = 2 * (t * c + v * c)
    with torch.no_grad():
        ms = time_ms(lambda: ce_forward(h, w, labels, chunk), reps=5)
        rows.append(row("cross_entropy_fwd", dev_name, shape, ms, 2 * t * c * v, nbytes))
        _, lse, _, count = ce_forward(h, w, labels, chunk)
        ms = time_ms(lambda: ce_backward(h, w, labels, lse, count, 1.0, chunk), reps=5)
        rows.append(row("cross_entropy_bwd", dev_name, shape, ms, 4 * t * c * v, nbytes))
    del h, w

    n = 1 << 20 if args.quick else 167_772_160
    shape = f"N={n}"
    p = torch.nn.Parameter(torch.randn((n,), device=dev, generator=g) * 0.02)
    p.grad = torch.randn((n,), device=dev, generator=g) * 1e-3
    opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False, fused=True)
    ms = time_ms(opt.step)
    rows.append(row("adamw8bit", dev_name, shape, ms, None, 16 * n + 16 * ((n + 255) // 256)))
    rows.append(row("adamw_f32", dev_name, shape, ms, None, 28 * n))
    ms = time_ms(lambda: torch.linalg.vector_norm(p.grad))
    rows.append(row("grad_norm", dev_name, shape, ms, None, 4 * n))

    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
