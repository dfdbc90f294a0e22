#!/usr/bin/env python3
"""The memory layer's forward in plain PyTorch, timed: the comparison for `memlayers bench`.

The same semantics as docs/reference.md, "The memory layer" (and the reference code): query projection
with bias, per-head sub-key scores, top-k of each half, top-k of the k x k candidates, softmax in
f32, one embedding bag over heads*k value rows, Memory+ gating. Tokens/s of the whole forward,
synchronised, at the paper configuration (d=1024, heads=4, n_keys=1024, knn=32, k_dim=512) and at
`memlayers bench`'s small one, on every device torch sees (CPU, and CUDA when present): with
f32 values, f16 values, and on CUDA the whole layer in bfloat16 (16-bit GEMM inputs, f32
accumulation: what `memlayers bench` compares its f16-input GEMMs on matrix units with).

    python3 scripts/torch_memory_forward_bench.py [--tokens 512] [--iters 20]
"""
import argparse
import time

import torch
import torch.nn.functional as F


def make_layer(d, heads, n_keys, knn, k_dim, device, value_dtype):
    g = torch.Generator().manual_seed(0)
    # bfloat16 values: every weight in bfloat16 too.
    weights = torch.bfloat16 if value_dtype == torch.bfloat16 else torch.float32
    def rand(*shape, std):
        return (torch.randn(*shape, generator=g) * std).to(device, weights)
    n = n_keys * n_keys
    return dict(
        wq=rand(heads * k_dim, d, std=d ** -0.5), bq=rand(heads * k_dim, std=0.02),
        keys=rand(heads, 2, n_keys, k_dim // 2, std=k_dim ** -0.5),
        values=rand(n, d, std=d ** -0.5).to(value_dtype),
        w1=rand(d, d, std=d ** -0.5), b1=rand(d, std=0.02),
        wo=rand(d, d, std=d ** -0.5), bo=rand(d, std=0.02),
        heads=heads, n_keys=n_keys, knn=knn, k_dim=k_dim,
    )


def forward(p, x):
    heads, n_keys, knn, k_dim = p["heads"], p["n_keys"], p["knn"], p["k_dim"]
    t = x.shape[0]
    q = F.linear(x, p["wq"], p["bq"]).view(t, heads, 2, k_dim // 2)
    # s[t, h, half, i] = <q_half, K[h, half, i]>
    s = torch.einsum("thcj,hcij->thci", q, p["keys"])
    s1, i1 = s[:, :, 0].topk(knn, dim=-1)
    s2, i2 = s[:, :, 1].topk(knn, dim=-1)
    cand = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).view(t, heads, knn * knn)
    cand_idx = (i1.unsqueeze(-1) * n_keys + i2.unsqueeze(-2)).view(t, heads, knn * knn)
    scores, best = cand.topk(knn, dim=-1)
    slots = cand_idx.gather(-1, best)
    w = torch.softmax(scores.float(), dim=-1)
    y = F.embedding_bag(slots.view(t, heads * knn), p["values"],
                        per_sample_weights=w.view(t, heads * knn).to(p["values"].dtype),
                        mode="sum").to(x.dtype)
    return F.linear(y * F.silu(F.linear(x, p["w1"], p["b1"])), p["wo"], p["bo"])


def bench(device, name, cfg, tokens, iters, value_dtype):
    p = make_layer(*cfg, device=device, value_dtype=value_dtype)
    x = torch.randn(tokens, cfg[0], device=device).to(p["wq"].dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(3):
            forward(p, x)
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            forward(p, x)
        sync()
        seconds = (time.perf_counter() - start) / iters
    print(f"torch {torch.__version__} {device.type:4} {name:6} values {str(value_dtype)[6:]:8} "
          f"{tokens} tokens: {tokens / seconds:12.0f} tokens/s ({seconds * 1e3:.3f} ms)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    configs = {"paper": (1024, 4, 1024, 32, 512), "small": (256, 4, 128, 16, 128)}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if torch.cuda.is_available():
        print("cuda:", torch.cuda.get_device_name(0))
    for device in devices:
        for name, cfg in configs.items():
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                if device.type == "cpu" and dtype != torch.float32:
                    continue
                bench(device, name, cfg, args.tokens, args.iters, dtype)


if __name__ == "__main__":
    main()
