"""Loads a folder written by `memlayers export-lingua` the way lingua's generator does
(apps/main/generate.py, load_consolidated_model_and_tokenizer, on the CPU) and prints the
reference model's greedy continuation of a prompt, to compare with `memlayers generate`.

    python3 scripts/check_lingua_export.py REFERENCE_REPO FOLDER PROMPT MAX_TOKENS

Needs torch, omegaconf (and sentencepiece/tiktoken for those tokenizers); xformers is
stubbed as in scripts/lingua_fixtures.py.
"""
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ref, folder, prompt, max_tokens = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
sys.path.insert(0, ref)
xf = types.ModuleType("xformers")
xf_ops = types.ModuleType("xformers.ops")
xf_ops.fmha = types.SimpleNamespace(attn_bias=types.SimpleNamespace())
xf_ops.AttentionBias = object
xf.ops = xf_ops
sys.modules["xformers"] = xf
sys.modules["xformers.ops"] = xf_ops
xeb = types.ModuleType("lingua.product_key.xformer_embeddingbag")
xeb.xformers_embedding_bag = lambda i, w, per_sample_weights, mode: F.embedding_bag(
    i, w, per_sample_weights=per_sample_weights, mode=mode
)
sys.modules["lingua.product_key.xformer_embeddingbag"] = xeb

from omegaconf import OmegaConf  # noqa: E402
from apps.main.transformer import LMTransformer, LMTransformerArgs  # noqa: E402
from lingua.args import dataclass_from_dict  # noqa: E402
from lingua.product_key.memory import HashingMemory  # noqa: E402
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
for m in model.modules():
    if isinstance(m, HashingMemory) and m.values is None:
        m.values = HashingMemory.VALUES
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
