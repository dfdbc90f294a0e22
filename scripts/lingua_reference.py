"""Meta's reference code (facebookresearch/memory, CC-BY-NC: run from a checkout, never copied)
on the CPU, for scripts/lingua_fixtures.py and scripts/check_lingua_export.py.

`use_checkout(path)` puts the checkout on the import path with xformers stubbed (the reference
imports it at module level; the CPU path, attn_impl="sdpa", needs only its names) and the
xformers embedding bag replaced by torch's F.embedding_bag (the same weighted sum).
`share_value_tables(model)` does what lingua's mp_parallelize does with mem_share_values:
every later memory layer holds the first one's table(s), so the state dict repeats them.
"""
import sys
import types

import torch.nn.functional as F


def use_checkout(path):
    sys.path.insert(0, path)
    xf = types.ModuleType("xformers")
    xf_ops = types.ModuleType("xformers.ops")
    xf_ops.fmha = types.SimpleNamespace(attn_bias=types.SimpleNamespace())
    xf_ops.AttentionBias = object
    xf.ops = xf_ops
    sys.modules["xformers"] = xf
    sys.modules["xformers.ops"] = xf_ops
    bag = types.ModuleType("lingua.product_key.xformer_embeddingbag")
    bag.xformers_embedding_bag = lambda indices, weight, per_sample_weights, mode: F.embedding_bag(
        indices, weight, per_sample_weights=per_sample_weights, mode=mode
    )
    sys.modules["lingua.product_key.xformer_embeddingbag"] = bag


def share_value_tables(model):
    from lingua.product_key.memory import HashingMemory

    for m in model.modules():
        if isinstance(m, HashingMemory) and not m.original and m.mem_share_values:
            if m.use_peer_variant:
                m.values_u, m.values_v = HashingMemory.VALUES
            else:
                m.values = HashingMemory.VALUES
