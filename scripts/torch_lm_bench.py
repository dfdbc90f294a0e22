"""The PyTorch side of `memlayers bench --model DIR` / `--shape NAME`: the same causal LM in
transformers on the CPU, f32, eager attention, batch 1: a prefill of --prompt tokens, then
--decode greedy steps with the KV cache. Prints one line:

    torch prefill <tokens/s> decode <tokens/s>

    python3 scripts/torch_lm_bench.py (--model DIR | --config CONFIG.json) --prompt 128 --decode 16

--model loads the folder's weights; --config builds the model with random weights (nothing
is downloaded). Needs torch and transformers.
"""
import argparse
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--model")
p.add_argument("--config")
p.add_argument("--prompt", type=int, default=128)
p.add_argument("--decode", type=int, default=16)
a = p.parse_args()

torch.manual_seed(0)
if a.model:
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
else:
    config = AutoConfig.from_pretrained(a.config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
model.eval()
vocab = model.config.vocab_size
ids = torch.tensor([[(i * 7919) % min(vocab, 50000) for i in range(a.prompt)]])

with torch.no_grad():
    model(ids[:, :1])  # warm-up
    t = time.perf_counter()
    out = model(ids, use_cache=True)
    prefill = a.prompt / (time.perf_counter() - t)
    past = out.past_key_values
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    out = model(nxt, past_key_values=past, use_cache=True)  # the first step, untimed
    past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    t = time.perf_counter()
    for _ in range(a.decode):
        out = model(nxt, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    decode = a.decode / (time.perf_counter() - t)
print(f"torch prefill {prefill:.1f} decode {decode:.2f}")
