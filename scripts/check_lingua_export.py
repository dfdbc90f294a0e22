"""Loads a folder written by `memlayers export-lingua` the way lingua's generator does
(apps/main/generate.py, load_consolidated_model_and_tokenizer, on the CPU) and prints the
reference model's greedy continuation of a prompt, to compare with `memlayers generate`.

    python3 scripts/check_lingua_export.py REFERENCE_REPO FOLDER PROMPT MAX_TOKENS

Needs torch, omegaconf (and sentencepiece/tiktoken for those tokenizers); xformers is
stubbed (scripts/lingua_reference.py).
"""
import sys
from pathlib import Path

import torch

from lingua_reference import share_value_tables, use_checkout

ref, folder, prompt, max_tokens = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
use_checkout(ref)

from omegaconf import OmegaConf  # noqa: E402
from apps.main.transformer import LMTransformer, LMTransformerArgs  # noqa: E402
from lingua.args import dataclass_from_dict  # noqa: E402
from lingua.tokenizer import build_tokenizer  # noqa: E402

config = OmegaConf.load(folder / "params.json")
args = dataclass_from_dict(LMTransformerArgs, config.model, strict=False)
path = config.data.tokenizer.path
if path is not None and not Path(path).is_file():
    path = str(folder / Path(path).name)
tokenizer = build_tokenizer(config.data.tokenizer.name, path)
model = LMTransformer(args)
state = torch.load(folder / "consolidated.pth", weights_only=True)
model.load_state_dict(state["model"])  # strict: every name and shape
share_value_tables(model)
model = model.float().eval()
seq = tokenizer.encode(prompt, add_bos=True, add_eos=False)
new = []
with torch.no_grad():
    for _ in range(max_tokens):
        nxt = int(torch.argmax(model(torch.tensor([seq]), attn_impl="sdpa")[0, -1]))
        if nxt == tokenizer.eos_id:
            break
        new.append(nxt)
        seq.append(nxt)
print(tokenizer.decode(new))
