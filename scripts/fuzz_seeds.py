"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/): small valid inputs of
every loader, some with the corners the loaders handle (bf16 and f16 tensors, a transposed
view, aliased storages, an unexpected pickled object, a unigram SentencePiece model).
Needs torch and sentencepiece.

    python3 scripts/fuzz_seeds.py fuzz/corpus
"""
import base64
import datetime
import json
import os
import struct
import sys

import torch

out = sys.argv[1]


def seed(target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(os.path.join(out, target, name), mode) as f:
        f.write(data)


def safetensors(tensors):
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


f32 = lambda xs: struct.pack(f"<{len(xs)}f", *xs)  # noqa: E731
seed("safetensors", "f32.safetensors", safetensors({"a": ("F32", [2, 3], f32([1, 2, 3, 4, 5, 6]))}))
seed("safetensors", "mixed.safetensors", safetensors({
    "h": ("F16", [2], struct.pack("<2e", 1.5, -2.0)),
    "i": ("I64", [1, 2], struct.pack("<2q", 7, 8)),
    "b": ("BF16", [1], b"\x80\x3f"),
}))

model = {"dim": 32, "n_layers": 2, "n_heads": 4, "vocab_size": 258, "max_seqlen": 64, "multiple_of": 16,
         "productkey_args": {"is_enabled": True, "layers": "1", "mem_n_keys": 16, "mem_heads": 2,
                             "mem_knn": 4, "mem_k_dim": 16}}
seed("model_json", "args.json", json.dumps(model))
seed("model_json", "params.json", json.dumps({"model": model, "data": {"tokenizer": {"name": "tiktoken", "path": "/t/tok.model"}},
                                              "distributed": {"model_dtype": "bf16"}}))

seed("facts_tsv", "facts.tsv", "# subject\trelation\tobject\nAda Voss\tborn in\tLisbon\nAda Voss\tworks as\tpilot\n\nBo Lin\tborn in\tOslo\n")

torch.manual_seed(0)
w = torch.randn(4, 3)
state = {
    "tok_embeddings.weight": w,
    "norm.weight": torch.ones(3, dtype=torch.bfloat16),
    "output.weight": w.t(),  # a transposed view of the same storage
    "layers.0.feed_forward.values.weight": torch.randn(2, 3, dtype=torch.float16),
}
state["layers.1.feed_forward.values.weight"] = state["layers.0.feed_forward.values.weight"]  # aliased
for name, obj in {
    "model.pth": {"model": state, "optim": {}},
    "unexpected_object.pth": {"model": {"w": datetime.date(2020, 1, 1)}},
}.items():
    path = os.path.join(out, "consolidated_pth", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path)

ranks = [bytes([b]) for b in range(256)] + [b"th", b"he", b"the", b" t", b"in"]
seed("tiktoken", "ranks.tiktoken", "".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))

import sentencepiece as spm  # noqa: E402

text = os.path.join(out, "sp-corpus.txt")
with open(text, "w") as f:
    f.write("the theory of the thing\nan ant ran in an inn\nmemory layers remember facts\n" * 30)
os.makedirs(os.path.join(out, "sentencepiece"), exist_ok=True)
for kind in ["unigram", "bpe"]:
    prefix = os.path.join(out, "sp-" + kind)
    spm.SentencePieceTrainer.train(input=text, model_prefix=prefix, vocab_size=30, model_type=kind,
                                   character_coverage=1.0, normalization_rule_name="identity")
    os.replace(prefix + ".model", os.path.join(out, "sentencepiece", kind + ".model"))
    os.remove(prefix + ".vocab")
os.remove(text)
