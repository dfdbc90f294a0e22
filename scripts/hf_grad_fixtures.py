"""The gradients transformers computes on the Hugging Face fixtures, for the parity tests of
memlayers' backward on Llama-family variants (q/k/v biases, per-head q/k norms, tied
embeddings, llama3 RoPE scaling).

    python3 scripts/hf_grad_fixtures.py [FIXTURE_DIR]     # defaults to tests/fixtures/hf

For every folder that scripts/hf_fixtures.py made: the model loaded in float32 (eager
attention), the mean cross-entropy of expected.json's prompt_ids predicting their next ids
(labels = the ids, as transformers shifts them), backpropagated; every parameter's gradient
goes to expected_grads.safetensors under transformers' names (float32), with the loss in its
metadata. Same Python packages as hf_fixtures.py.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf")
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isfile(os.path.join(folder, "expected.json")):
            continue
        with open(os.path.join(folder, "expected.json")) as f:
            ids = json.load(f)["prompt_ids"]
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        model.train(False)
        input_ids = torch.tensor([ids])
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        grads = {}
        for pname, p in model.named_parameters():
            if p.grad is not None:
                grads[pname] = p.grad.detach().to(torch.float32).contiguous()
        save_file(grads, os.path.join(folder, "expected_grads.safetensors"), metadata={"loss": repr(float(loss))})
        print(f"{name}: loss {float(loss):.6f}, {len(grads)} gradients")


if __name__ == "__main__":
    main()
