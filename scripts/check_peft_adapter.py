"""Checks a LoRA-taught model of `memlayers teach --method lora` against PEFT: transformers
loads the original folder, PEFT applies the adapter folder memlayers wrote, and the logits on
a text must equal those memlayers computes from the taught (merged) model.

    python3 scripts/check_peft_adapter.py TEACH_OUT [TEXT]

TEACH_OUT is teach's --out folder (adapter/ and model/ in it); the base folder is the
adapter's base_model_name_or_path. Needs torch, transformers, safetensors and peft, and the
memlayers binary (target/release or target/debug, or MEMLAYERS_BIN).
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    out = sys.argv[1]
    text = sys.argv[2] if len(sys.argv) > 2 else "The capital of France is"
    adapter = os.path.join(out, "adapter")
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        base = json.load(f)["base_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(base)
    ids = tok(text)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0]
    root = os.path.join(os.path.dirname(__file__), "..")
    binary = os.environ.get("MEMLAYERS_BIN") or next(
        p for p in (os.path.join(root, "target", d, "memlayers") for d in ("release", "debug")) if os.path.exists(p))
    with tempfile.TemporaryDirectory() as tmp:
        save_file({"tokens": torch.tensor([ids], dtype=torch.int64)}, os.path.join(tmp, "in.safetensors"))
        subprocess.run([binary, "lm-forward", "--model", os.path.join(out, "model"), "--input",
                        os.path.join(tmp, "in.safetensors"), "--output", os.path.join(tmp, "out.safetensors")],
                       check=True, stderr=subprocess.DEVNULL)
        ours = load_file(os.path.join(tmp, "out.safetensors"))["logits"][0]
    diff = float((theirs - ours).abs().max())
    scale = float(theirs.abs().max())
    print(f"{len(ids)} tokens: max |PEFT - memlayers| = {diff:.3g} (largest logit {scale:.3g}); "
          f"greedy tokens agree at {float((theirs.argmax(-1) == ours.argmax(-1)).float().mean()):.3f}")
    sys.exit(0 if diff <= 1e-4 * max(1.0, scale) else 1)


if __name__ == "__main__":
    main()
