"""Reads the logs of scripts/gpu-check.sh (OUT/bench.txt, bench-train.txt, tests.txt,
triton-bag.txt, info.txt), writes OUT/gpu-check.json with every figure, and prints the ratios
that issue 16's targets are stated in.

    python3 scripts/gpu_check_summary.py OUT SECONDS
"""
import json
import re
import sys

out, seconds = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None


def read(name):
    try:
        with open(f"{out}/{name}") as f:
            return f.read()
    except OSError:
        return ""


def num(pattern, text, group=1):
    m = re.search(pattern, text)
    return float(m.group(group)) if m else None


bench, train, tests, triton = read("bench.txt"), read("bench-train.txt"), read("tests.txt"), read("triton-bag.txt")
r = {"seconds": seconds, "adapter": None, "tests": {}, "bench": {}, "train": {}, "triton_bag": {}}
m = re.search(r"^adapter: (.*)$", bench, re.M)
r["adapter"] = m.group(1) if m else None

for name, body in re.findall(r"== test (\S+)\n(.*?)(?=\n== test |\Z)", tests, re.S):
    res = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", body)
    r["tests"][name] = {"result": res[-1][0], "passed": int(res[-1][1]), "failed": int(res[-1][2])} if res else {"result": "did not finish"}

b = r["bench"]
b["copy_gbs"] = num(r"plain copy kernel: ([\d.]+) GB/s", bench)
b["fma_gflops"] = num(r"arithmetic ceiling[^:]*: ([\d.]+) GFLOP/s", bench)
b["linear"] = []
for m in re.finditer(r"linear (\d+ x \d+ x \d+) \(m x n x k\):\n((?:  .*\n?)*)", bench):
    kernels = {k.group(1): float(k.group(2)) for k in re.finditer(r"^  (subgroup|tiled \S+)\s+([\d.]+) GFLOP/s", m.group(2), re.M)}
    used = re.search(r"^  (subgroup|tiled \S+)\s+[\d.]+ GFLOP/s.*\(in use\)", m.group(2), re.M)
    b["linear"].append({"shape": m.group(1), "gflops": kernels, "in_use": used.group(1) if used else None})
b["matrix_units"] = [
    {"shape": m.group(1), "kernel": m.group(2), "gflops": float(m.group(3)) if m.group(3) else None, "failed": m.group(4)}
    for m in re.finditer(r"matrix units: linear (\d+ x \d+ x \d+) on (.*?): (?:([\d.]+) GFLOP/s|failed \((.*)\))", bench)
]
dec = re.search(r"decoding, (.*?): f32 weights ([\d.]+) tokens/s, f16 weights ([\d.]+) tokens/s", bench)
b["decoding"] = {"model": dec.group(1), "f32_weights_tokens_per_s": float(dec.group(2)), "f16_weights_tokens_per_s": float(dec.group(3))} if dec else None
kv = re.search(r"decoding at positions (\S+), (.*?): f32 KV cache ([\d.]+) tokens/s, f16 KV cache ([\d.]+) tokens/s", bench)
b["decoding_long"] = {"positions": kv.group(1), "model": kv.group(2), "f32_kv_cache_tokens_per_s": float(kv.group(3)), "f16_kv_cache_tokens_per_s": float(kv.group(4))} if kv else None
pre = re.search(r"prefill of (.*?): f32 activations ([\d.]+) tokens/s, f16 activations ([\d.]+) tokens/s", bench)
b["prefill_f16_activations"] = {"model": pre.group(1), "f32_activations_tokens_per_s": float(pre.group(2)), "f16_activations_tokens_per_s": float(pre.group(3))} if pre else None
b["gemm_in_use"] = (re.search(r"in use on this adapter: (.*)", bench) or [None, None])[1]
sections = re.split(r"\n(?=(?:small|paper) d=)", bench)
b["configs"] = []
for sec in sections[1:]:
    head = sec.split("\n", 1)[0]
    c = {
        "config": head.split(" (")[0],
        "tokens_per_s": num(r"forward: ([\d.]+) tokens/s", sec),
        "query_proj_gflops": num(r"query_proj matmul: ([\d.]+) GFLOP/s", sec),
        "subkey_gemm_gflops": num(r"sub-key scoring GEMM: ([\d.]+) GFLOP/s", sec),
        "bag_gbs": num(r"embedding bag: ([\d.]+) GB/s", sec),
        "bag_of_copy": num(r"embedding bag: [\d.]+ GB/s of value rows = (\d+)%", sec),
        "torch": [
            {"device": m.group(1), "tokens_per_s": float(m.group(2)), "ratio": float(m.group(3))}
            for m in re.finditer(r"PyTorch on (\S+) \(([\d.]+) tokens/s, measured now\): ([\d.]+)x", sec)
        ],
        "torch_not_measured": (re.search(r"PyTorch: not measured \((.*)\)", sec) or [None, None])[1],
    }
    b["configs"].append(c)

t = r["train"]
for sec_name, sec in zip(["batch 8 x 64", "cpu preset", "gpu preset"], re.split(r"\n(?=the demo's)", train)):
    rows = []
    for m in re.finditer(r"^(\S[^\n]*?)\s+(\d+) params\s+([\d.]+) MFLOP/token\s+(\d+) training tokens/s", sec, re.M):
        rows.append({"model": m.group(1).strip(), "params": int(m.group(2)), "tokens_per_s": float(m.group(4))})
    dispatches = [int(x) for x in re.findall(r"dispatches per step: (\d+)", sec)]
    for row, d in zip(rows, dispatches):
        row["dispatches_per_step"] = d
    t[sec_name] = rows if rows else ("skipped on a CPU adapter" if "skipped" in sec else None)

for m in re.finditer(r"^(Meta's Triton bag|torch F\.embedding_bag) (\w+): ([\d.]+) GB/s", triton, re.M):
    r["triton_bag"][f"{m.group(1)} {m.group(2)}"] = float(m.group(3))
nm = re.search(r"not measured \((.*)\)", triton)
if nm:
    r["triton_bag"]["not_measured"] = nm.group(1)

with open(f"{out}/gpu-check.json", "w") as f:
    json.dump(r, f, indent=2)

print(f"\n== gpu-check: {r['adapter']}, {seconds:.0f} s" if seconds is not None else f"\n== gpu-check: {r['adapter']}")
failed = {k: v for k, v in r["tests"].items() if v.get("result") != "ok"}
print(f"tests: {sum(v.get('passed', 0) for v in r['tests'].values())} passed in {len(r['tests'])} binaries"
      + (f"; NOT OK: {failed}" if failed else ""))
fma, copy = b["fma_gflops"], b["copy_gbs"]
for lin in b["linear"]:
    if not lin["gflops"]:
        continue
    best_kernel, best = max(lin["gflops"].items(), key=lambda kv: kv[1])
    used = lin["in_use"]
    if fma:
        print(f"GEMM {lin['shape']}: best {best_kernel} {best:.1f} GFLOP/s = {100 * best / fma:.0f}% of the f32 multiply-add ceiling (target >= 50%); "
              f"in use: {used} ({lin['gflops'].get(used, float('nan')):.1f})")
if b["decoding"]:
    d = b["decoding"]
    print(f"decoding ({d['model']}): f16 weights {d['f16_weights_tokens_per_s'] / d['f32_weights_tokens_per_s']:.2f}x of f32 weights")
if b["decoding_long"]:
    d = b["decoding_long"]
    print(f"decoding at positions {d['positions']} ({d['model']}): f16 KV cache {d['f16_kv_cache_tokens_per_s'] / d['f32_kv_cache_tokens_per_s']:.2f}x of f32")
if b["prefill_f16_activations"]:
    d = b["prefill_f16_activations"]
    print(f"prefill ({d['model']}): f16 activations {d['f16_activations_tokens_per_s'] / d['f32_activations_tokens_per_s']:.2f}x of f32")
for mu in b["matrix_units"]:
    print(f"GEMM {mu['shape']} on {mu['kernel']}: " + (f"{mu['gflops']:.1f} GFLOP/s (target >= 30% of the chip's f16 tensor peak)" if mu["gflops"] else f"FAILED ({mu['failed']})"))
if not b["matrix_units"]:
    print("GEMM on matrix units: not measured (" + ("no cooperative matrices on this adapter" if "no cooperative matrices" in bench else "no figure") + ")")
for c in b["configs"]:
    line = f"{c['config']}: {c['tokens_per_s']:.0f} tokens/s; bag {c['bag_gbs']} GB/s = {c['bag_of_copy']}% of copy (target >= 90%)"
    for tr in c["torch"]:
        line += f"; vs PyTorch {tr['device']} {tr['ratio']:.2f}x"
    if c["torch_not_measured"]:
        line += f"; PyTorch not measured ({c['torch_not_measured']})"
    print(line)
tb = r["triton_bag"]
paper16 = next((c for c in b["configs"] if c["config"].startswith("paper") and "F16" in c["config"]), None)
meta = tb.get("Meta's Triton bag bfloat16")
if meta and paper16 and paper16["bag_gbs"]:
    print(f"bag, 2-byte values: memlayers {paper16['bag_gbs']} GB/s vs Meta's Triton bag (bf16) {meta} GB/s = {paper16['bag_gbs'] / meta:.2f}x (target >= 1.0x)")
elif "not_measured" in tb:
    print(f"Meta's Triton bag: not measured ({tb['not_measured']})")
gp = t.get("gpu preset")
if isinstance(gp, list):
    for row in gp:
        if row["model"] == "memory":
            print(f"demo gpu preset, memory model: {row['tokens_per_s']:.0f} training tokens/s = {row['tokens_per_s'] / 15404:.2f}x the issue's 15,404 (target >= 5x)")
else:
    print(f"demo gpu preset training: {gp}")
print(f"wrote {out}/gpu-check.json")
