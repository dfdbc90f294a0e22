"""Builds the lingua fixtures of tests/lingua.rs with Meta's reference code (CC-BY-NC; it is
run here, not copied): small consolidated folders written by torch.save exactly as lingua's
consolidate_checkpoints writes them, their params.json and tokenizer files, and what the
reference model and tokenizers produce on them.

    python3 scripts/lingua_fixtures.py REFERENCE_REPO OUT_DIR

REFERENCE_REPO is a checkout of facebookresearch/memory; torch, numpy, sentencepiece and
tiktoken must be importable. xformers and CUDA are not needed: the reference's attention runs
with attn_impl="sdpa" on the CPU, and its xformers embedding bag is replaced by
torch's F.embedding_bag (the same sum) before the model is built (scripts/lingua_reference.py).

Each folder gets expected.json: the prompt, lingua's encoding of it with BOS (prompt_ids),
the reference model's logits on it (prompt_logits, [len(prompt_ids), vocab] flattened), the
loss of predicting its next tokens (loss) with every parameter's gradient (expected_grads.pth,
{"model": {name: grad}}; a value table shared by several layers once, its gradient summed),
the greedy continuation of the reference model (greedy_ids: argmax over the full vocabulary
after a full forward of the sequence so far, until EOS or max_tokens, EOS not included) and
its text (the tokenizer's decode of greedy_ids), plus tokenizer cases (text -> ids).
"""
import base64
import json
import os
import sys

import torch

from lingua_reference import share_value_tables, use_checkout

ref, out = sys.argv[1], sys.argv[2]
use_checkout(ref)

from apps.main.transformer import LMTransformer, LMTransformerArgs  # noqa: E402
from lingua.args import dataclass_from_dict  # noqa: E402
from lingua.product_key.memory import HashingMemory  # noqa: E402
from lingua.tokenizer import build_tokenizer  # noqa: E402

CASES = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing\n\nnewlines\t tabs 12345 and 3.14159",
    "Ünïcödé: naïve café, 東京, emoji 🙂!",
    "don't won't they're I'm we'll it'd",
    "",
]

CORPUS = (
    "the theory of the thing is that the theme there then thinned. "
    "in an inn, an ant and another ant ran. "
    "memory layers remember facts; dense layers do not remember as many facts. "
) * 20


def tiktoken_file(path):
    """A small rank file: the 256 bytes, then merges learned greedily from CORPUS."""
    ranks = {bytes([b]): b for b in range(256)}
    words = [w.encode() for w in CORPUS.replace(".", " .").split(" ") if w]
    for _ in range(60):
        counts = {}
        for w in words:
            toks = [w[i : i + 1] for i in range(len(w))]
            # tokenize with current ranks (greedy merge by rank)
            while True:
                best = None
                for i in range(len(toks) - 1):
                    r = ranks.get(toks[i] + toks[i + 1])
                    if r is not None and (best is None or r < best[0]):
                        best = (r, i)
                if best is None:
                    break
                i = best[1]
                toks[i : i + 2] = [toks[i] + toks[i + 1]]
            for a, b in zip(toks, toks[1:]):
                counts[a + b] = counts.get(a + b, 0) + 1
        if not counts:
            break
        pair = max(sorted(counts), key=lambda p: counts[p])
        ranks[pair] = len(ranks)
    with open(path, "w") as f:
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(tok).decode()} {rank}\n")


def sp_file(prefix):
    import sentencepiece as spm

    text = prefix + ".txt"
    with open(text, "w") as f:
        for line in CORPUS.split(". "):
            f.write(line + "\n")
    spm.SentencePieceTrainer.train(
        input=text, model_prefix=prefix, vocab_size=320, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
    )
    os.remove(text)
    os.remove(prefix + ".vocab")


def build(name, model_args, tokenizer_name, tokenizer_file, prompt, max_tokens, seed):
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    tok_path = None
    if tokenizer_name == "tiktoken":
        tok_path = os.path.join(folder, tokenizer_file)
        tiktoken_file(tok_path)
    elif tokenizer_name == "sp":
        sp_file(os.path.join(folder, tokenizer_file[: -len(".model")]))
        tok_path = os.path.join(folder, tokenizer_file)
    tokenizer = build_tokenizer(tokenizer_name, tok_path)
    model_args["vocab_size"] = tokenizer.n_words
    args = dataclass_from_dict(LMTransformerArgs, model_args, strict=False)
    torch.manual_seed(seed)
    HashingMemory.VALUES = None
    model = LMTransformer(args)
    model.init_weights() if hasattr(model, "init_weights") else model.reset_parameters()
    # As lingua's mp_parallelize: the state dict repeats a shared table under each layer.
    share_value_tables(model)
    model = model.float().eval()
    # Larger weights than the reference's init, so that logits are far from ties.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    # As consolidate_checkpoints: torch.save({"model": state_dict, ...}).
    torch.save({"model": model.state_dict(), "optim": {}}, os.path.join(folder, "consolidated.pth"))
    params = {
        "name": name,
        "dump_dir": "/checkpoints/" + name,
        "steps": 1000,
        "model": json.loads(json.dumps(args, default=lambda o: o.__dict__)),
        "data": {
            "root_dir": "/data",
            "batch_size": 8,
            "seq_len": 64,
            "add_bos": True,
            "add_eos": True,
            # lingua records the tokenizer's path on the cluster; the file is beside.
            "tokenizer": {
                "name": tokenizer_name,
                "path": None if tok_path is None else "/cluster/tokenizers/" + tokenizer_file,
            },
        },
        "distributed": {"model_dtype": "fp32", "dp_shard": 1},
    }
    with open(os.path.join(folder, "params.json"), "w") as f:
        json.dump(params, f, indent=2)
    ids = tokenizer.encode(prompt, add_bos=True, add_eos=False)
    with torch.no_grad():
        prompt_logits = model(torch.tensor([ids]), attn_impl="sdpa")[0]
    # The loss of predicting each next prompt token and every parameter's gradient
    # (grad.<name>, as `memlayers lm-forward` names them), saved as a torch checkpoint.
    model.zero_grad()
    loss = model(torch.tensor([ids[:-1]]), target=torch.tensor([ids[1:]]), attn_impl="sdpa")
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"model": grads, "loss": float(loss)}, os.path.join(folder, "expected_grads.pth"))
    seq = list(ids)
    new = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.tensor([seq]), attn_impl="sdpa")[0, -1]
            nxt = int(torch.argmax(logits))
            if nxt == tokenizer.eos_id:
                break
            new.append(nxt)
            seq.append(nxt)
    expected = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "prompt_ids": ids,
        "greedy_ids": new,
        "prompt_logits": [round(float(x), 7) for x in prompt_logits.flatten()],
        "loss": float(loss),
        "text": tokenizer.decode(new),
        "tokenizer_cases": [
            {"text": t, "ids": tokenizer.encode(t, add_bos=True, add_eos=True)} for t in CASES
        ],
        "n_words": tokenizer.n_words,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
    }
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, ensure_ascii=False)
    print(name, "prompt", len(ids), "tokens, greedy", len(new), repr(expected["text"][:60]))


memory = {
    "is_enabled": True,
    "layers": "1",
    "mem_n_keys": 16,
    "mem_heads": 2,
    "mem_knn": 4,
    "mem_k_dim": 16,
    "mem_v_dim": -1,
    "swilu_projection": True,
    "value_fixed_lr": 0.001,
    "mem_share_values": True,
}
base = {"dim": 32, "n_layers": 2, "n_heads": 4, "multiple_of": 16, "max_seqlen": 64, "rope_theta": 10000.0}
build("bytes_memory", dict(base, productkey_args=memory), "bytes", None, "The theory of memory", 24, 1)
build("tiktoken_dense", dict(base), "tiktoken", "tokenizer.model", "the theme then", 16, 2)
build("sp_memory", dict(base, n_layers=3, productkey_args=dict(memory, layers="0,2")), "sp", "sp.model", "an ant ran", 16, 3)
# The reference's other memory options: a table per memory layer; a value dimension of its own
# with and without the SwiLU gate (a value projection either way, as mem_v_dim > 0 asks).
build("bytes_unshared", dict(base, productkey_args=dict(memory, layers="0,1", mem_share_values=False)),
      "bytes", None, "memory layers", 12, 14)
build("bytes_vdim_swilu", dict(base, productkey_args=dict(memory, mem_v_dim=24)), "bytes", None, "facts", 12, 5)
build("bytes_vdim_plain", dict(base, productkey_args=dict(memory, mem_v_dim=32, swilu_projection=False)),
      "bytes", None, "facts", 12, 6)
# mem_gated: the output times sigmoid(gating(x)), in two memory layers sharing a table.
build("bytes_gated", dict(base, n_layers=3, productkey_args=dict(memory, layers="0,2", mem_gated=True)),
      "bytes", None, "gates", 12, 7)
# PEER (peer_variant): values_u and values_v shared by two memory layers; its swilu_projection
# and value_proj exist unused, as in the reference.
build("bytes_peer", dict(base, n_layers=3, productkey_args=dict(memory, layers="0,2", peer_variant=True)),
      "bytes", None, "experts", 12, 8)

# A checkpoint whose pickle holds an object that is neither a tensor nor a container.
import datetime  # noqa: E402

torch.save({"model": {"w": datetime.date(2020, 1, 1)}}, os.path.join(out, "unexpected_object.pth"))
# A checkpoint whose pickle names a callable beside the state dict (torch.load with
# weights_only=True refuses it; so must memlayers).
torch.save({"model": {"w": torch.zeros(2)}, "run": os.system}, os.path.join(out, "global_beside_model.pth"))
