"""Meta's Triton embedding bag (lingua/product_key/xformer_embeddingbag.py from
facebookresearch/memory, CC-BY-NC: carried in the GPU bundle from a checkout, never committed
here) against torch's F.embedding_bag, on the paper shape's bag (512 tokens, 4 heads x knn 32,
a 1024^2 x 1024 table), bf16 and f32 tables. Prints GB/s of value rows read, as `memlayers
bench` counts them.

    python3 scripts/triton_bag_bench.py META_DIR   (META_DIR/lingua/product_key/...)

Says why and exits 0 when CUDA, Triton or the checkout is missing (scripts/gpu-check.sh
runs it everywhere).
"""
import os
import sys


def skip(why):
    print(f"Meta's Triton bag: not measured ({why})")
    sys.exit(0)


try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # noqa: BLE001
    skip(f"torch: {e}")
if not torch.cuda.is_available():
    skip("no CUDA device")
meta = sys.argv[1] if len(sys.argv) > 1 else ""
if not os.path.isfile(os.path.join(meta, "lingua", "product_key", "xformer_embeddingbag.py")):
    skip(f"no checkout of facebookresearch/memory at {meta!r} (scripts/gpu-check.sh bundle --meta-repo)")
sys.path.insert(0, meta)
try:
    from lingua.product_key.xformer_embeddingbag import xformers_embedding_bag
except Exception as e:  # noqa: BLE001
    skip(f"import: {e}")

tokens, bag, rows, dim = 512, 4 * 32, 1024 * 1024, 1024
torch.manual_seed(0)
idx = torch.randint(0, rows, (tokens, bag), device="cuda")
for dtype in [torch.bfloat16, torch.float32]:
    table = torch.randn(rows, dim, device="cuda", dtype=dtype)
    w = torch.rand(tokens, bag, device="cuda", dtype=dtype)
    row_bytes = dim * table.element_size()
    moved = tokens * bag * row_bytes
    for name, fn in [
        ("Meta's Triton bag", lambda: xformers_embedding_bag(idx, table, w, mode="sum")),
        ("torch F.embedding_bag", lambda: F.embedding_bag(idx, table, per_sample_weights=w, mode="sum")),
    ]:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        t = sorted(times)[len(times) // 2]
        print(f"{name} {str(dtype).replace('torch.', '')}: {moved / t / 1e9:.1f} GB/s ({t * 1e3:.3f} ms)")
