"""Makes small Hugging Face model folders and what transformers computes on them, for the
parity tests of memlayers' Hugging Face loader (tests/fixtures/hf, described in its README.md).

    python3 scripts/hf_fixtures.py [OUT_DIR]        # OUT_DIR defaults to tests/fixtures/hf

Nothing is downloaded: every model gets random weights (seeded with torch.manual_seed, so a
rerun with the same package versions writes the same files) and every tokenizer is trained or
assembled here with the `tokenizers` library on a small corpus. The Python packages are torch
(the CPU build is enough), transformers, tokenizers, safetensors, numpy and jinja2, e.g.

    python3 -m venv /work/venv-hf
    /work/venv-hf/bin/pip install torch transformers tokenizers safetensors numpy jinja2
    /work/venv-hf/bin/python scripts/hf_fixtures.py

Folders (each with config.json, generation_config.json, tokenizer.json, tokenizer_config.json,
safetensors weights and expected.json):

  llama_tied_bf16_shards  LlamaForCausalLM, tied embeddings, bf16 in several shards with an
                          index, grouped-query attention, llama3 RoPE scaling, a Llama-3-like
                          byte-level BPE that adds <|begin_of_text|>, a list of EOS ids
                          (greedy decoding stops on the second); config.json in the v4 style.
  qwen2_bias_f32          Qwen2ForCausalLM, q/k/v biases, untied head, f32 in one file,
                          rope_theta 1e6, no BOS, ChatML template; config.json in the v4 style
                          with a sliding_window that use_sliding_window=false switches off.
  qwen3_qknorm_f16        Qwen3ForCausalLM, head_dim 32 != hidden/heads, per-head q_norm and
                          k_norm, tied embeddings, f16, no BOS, greedy stops on its int EOS;
                          config.json in the v5 style.
  mistral_f32             MistralForCausalLM, sliding_window null, f32, a SentencePiece-like
                          BPE (Metaspace, byte fallback) that adds <s>, an [INST] template;
                          config.json in the v5 style.

"v4" config style: top-level rope_theta, rope_scaling {..., "rope_type"} and torch_dtype, as
transformers 4.x writes them; "v5": rope_parameters {"rope_theta", "rope_type", ...} and dtype.
The installed transformers writes one of them; the script rewrites the folders that should be
in the other one and checks that transformers loads them back to the same logits.

expected.json holds the package versions, the config style, the tokenizer's ids on a few texts
(tokenizer(text)["input_ids"], so with whatever the post-processor adds) and their decodes, a
prompt's ids and the model's float32 logits on it (prompt_logits: [len(prompt_ids), vocab]
flattened row-major, each rounded to 6 significant digits), the mean cross-entropy of the
prompt's next tokens (loss), model.generate's greedy continuation (greedy_ids: new tokens only,
the EOS included when it stopped there; max_new_tokens 12) and its decode, the EOS ids
generate used, and the chat template's rendering of one user message where there is a
template. For the bf16 and f16 folders every number is computed in float32 on the stored
(rounded) weights: the folder is loaded back with dtype=torch.float32.
"""
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "fixtures", "hf")
MAX_NEW_TOKENS = 12

VERSIONS = {
    "transformers": transformers.__version__,
    "torch": torch.__version__,
    "tokenizers": tokenizers.__version__,
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}
# Which style the installed transformers writes.
WRITES = "v5" if int(transformers.__version__.split(".")[0]) >= 5 else "v4"

CORPUS = (
    "The theory of memory layers is that a large table of keys and values can hold facts. "
    "A query picks the best keys; their values are summed and added to the hidden state. "
    "Dense layers don't remember as many facts, and they're slower to grow. "
    "In 2024 the model read 1234567 tokens at 3.14159 tokens per second, then 42 more.\n"
    "Caf\u00e9, na\u00efve, \u00dcber, \u6771\u4eac and \U0001f642 appear now and then.\n\n"
    "    indented lines\tand tabs\tstay as they are.\n"
) * 30

# Llama 3's and Qwen 2's pre-tokenizer patterns: they differ in how digits are grouped.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def round6(x):
    return float(f"{x:.6g}")


# ----------------------------------------------------------------------------------- tokenizers


def byte_level_bpe(split_pattern, n_merges_vocab, specials, bos=None, nfc=False):
    """A byte-level BPE trained on CORPUS; `specials` are appended after the learned vocabulary
    (as in Llama 3 and Qwen 2), and with `bos` the post-processor puts it before every text."""
    tok = tokenizers.Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_merges_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False, special_tokens=[],
    )
    tok.train_from_iterator([CORPUS], trainer=trainer)
    tok.add_special_tokens(specials)
    steps = [processors.ByteLevel(trim_offsets=False)]
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        steps.append(processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)],
        ))
    tok.post_processor = processors.Sequence(steps)
    return tok


def metaspace_bpe(vocab_size):
    """A SentencePiece-like BPE as in Mistral's tokenizer.json: Metaspace pre-tokenizer ("▁",
    prepended to the first word only), <unk> <s> </s> then the 256 <0xNN> byte pieces, byte
    fallback for characters outside the vocabulary, and <s> added before every text."""
    trained = tokenizers.Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[])
    trained.train_from_iterator([CORPUS], trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    learned = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in learned:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)],
    )
    return tok


def write_tokenizer(folder, tok, config):
    tok.save(os.path.join(folder, "tokenizer.json"))
    added = {}
    for tid, t in sorted(tok.get_added_tokens_decoder().items()):
        added[str(tid)] = {
            "content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
            "single_word": t.single_word, "special": t.special,
        }
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(dict(config, added_tokens_decoder=added), f, indent=2, ensure_ascii=False)


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
INST_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

COMMON_TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Caf\u00e9 na\u00efve \u00dcber \u6771\u4eac \U0001f642 \u2192 \u00e5ngstr\u00f6m \u0416",
    "  leading spaces\n\nnew lines\ttabs   and trailing  ",
    "digits 1234567 and 3.14159, 2024-06-01",
    "don't stop , it 's fine . They're here !",
    "",
]

# ------------------------------------------------------------------------------------- weights


def randomize(model, scale, embed_scale):
    """Every parameter drawn anew: matrices N(0, scale^2) (embeddings N(0, embed_scale^2)),
    norm weights 1 + N(0, 0.2^2), biases N(0, 0.1^2)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(embed_scale * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))


def round_to(model, dtype):
    """The model's weights rounded to `dtype` and back, in place (still float32)."""
    if dtype != torch.float32:
        model.to(dtype).to(torch.float32)


def greedy_plain(model, ids, n):
    """n greedy steps (full forward each), returning the tokens and the final normed hidden
    state and logits of each step."""
    seq = list(ids)
    hs, logits = [], []
    with torch.no_grad():
        for _ in range(n):
            h = model.model(torch.tensor([seq])).last_hidden_state[0, -1]
            lg = model.lm_head(h)
            hs.append(h)
            logits.append(lg)
            seq.append(int(lg.argmax()))
    return seq[len(ids):], hs, logits


def force_eos_at(model, ids, eos, dtype, head):
    """Rewrites the output row of `eos` so that greedy decoding of `ids` stops there at the
    first step >= 7 where that changes nothing before it. Only that row's logit changes, and
    `eos` never enters the model before the stop, so the earlier steps are unchanged (in a tied
    model the row is also eos's embedding, unused for the same reason)."""
    toks, hs, logits = greedy_plain(model, ids, MAX_NEW_TOKENS)
    row = head.weight
    for k in range(7, MAX_NEW_TOKENS - 1):
        others = logits[k].clone()
        others[eos] = -math.inf
        target = float(others.max()) + 3.0
        w = hs[k] * (target / float(hs[k] @ hs[k]))
        w = w.to(dtype).to(torch.float32)
        ok = all(float(w @ hs[j]) < float(logits[j][torch.arange(len(logits[j])) != eos].max()) - 0.5 for j in range(k))
        if ok and float(w @ hs[k]) > float(others.max()) + 1.0:
            with torch.no_grad():
                row[eos] = w
            return k
    raise RuntimeError("no step where EOS can be forced")


# ------------------------------------------------------------------------------ config styles


def to_v4(folder, extra=None, drop=()):
    """Rewrites config.json as transformers 4.x writes it: rope_theta at the top level,
    rope_scaling (with rope_type, or null), torch_dtype."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    kind = rope.get("rope_type", "default")
    cfg["rope_scaling"] = None if kind == "default" else rope
    cfg["torch_dtype"] = cfg.pop("dtype")
    for k in drop:
        cfg.pop(k, None)
    cfg.update(extra or {})
    with open(path, "w") as f:
        json.dump(dict(sorted(cfg.items())), f, indent=2)
        f.write("\n")


def config_style(folder):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    if "rope_parameters" in cfg and "dtype" in cfg and "rope_theta" not in cfg:
        return "v5"
    if "rope_theta" in cfg and "torch_dtype" in cfg and "rope_parameters" not in cfg:
        return "v4"
    raise RuntimeError(f"{folder}: config.json in neither style")


# ---------------------------------------------------------------------------------- one folder


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def variant_logits(folder, mutate, ids):
    """The logits of a copy of `folder` whose config.json `mutate` changed."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "m")
        shutil.copytree(folder, copy)
        path = os.path.join(copy, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        mutate(cfg)
        with open(path, "w") as f:
            json.dump(cfg, f)
        return logits_of(load(copy), ids)


def build(name, arch_cls, config, dtype, tok, tok_config, gen_eos, prompt, texts, seed,
          scale=0.3, embed_scale=0.3, stop_on=None, rewrite=None, max_shard_size=None, matters=()):
    """Writes OUT/name. `matters`: (what, mutate) pairs, config changes that must change the
    logits (so that the fixture tells whether a reimplementation honours that setting)."""
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    write_tokenizer(folder, tok, tok_config)
    hf_tok = AutoTokenizer.from_pretrained(folder)
    # transformers must tokenize exactly as tokenizer.json does on its own.
    for t in texts + [prompt]:
        assert hf_tok(t)["input_ids"] == tok.encode(t).ids, (name, t)
    prompt_ids = hf_tok(prompt)["input_ids"]

    torch.manual_seed(seed)
    model = arch_cls(config).eval()
    randomize(model, scale, embed_scale)
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    if config.vocab_size > n_tok:
        # Rows past the tokenizer's vocabulary are never targets in training: small, so that
        # greedy decoding does not pick them.
        with torch.no_grad():
            model.get_output_embeddings().weight[n_tok:] *= 0.05
    round_to(model, dtype)
    stop_step = None
    if stop_on is not None:
        stop_step = force_eos_at(model, prompt_ids, stop_on, dtype, model.get_output_embeddings())
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=gen_eos,
    )
    model.to(dtype).save_pretrained(folder, max_shard_size=max_shard_size or "50GB")
    written = config_style(folder)
    assert written == WRITES, (name, written)
    reference = logits_of(load(folder), prompt_ids)
    if rewrite is not None:
        rewrite(folder)
        assert torch.equal(logits_of(load(folder), prompt_ids), reference), f"{name}: rewritten config changes logits"

    for what, mutate in matters:
        assert not torch.allclose(variant_logits(folder, mutate, prompt_ids), reference, atol=1e-4), \
            f"{name}: {what} does not change the logits"
    for n in os.listdir(folder):
        os.chmod(os.path.join(folder, n), 0o644)

    model = load(folder)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    input_ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model(input_ids, labels=input_ids)
    logits = out.logits[0]
    assert torch.equal(logits, reference)
    eos_ids = model.generation_config.eos_token_id
    eos_list = eos_ids if isinstance(eos_ids, list) else [eos_ids]
    with torch.no_grad():
        gen = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=MAX_NEW_TOKENS,
                             do_sample=False, pad_token_id=eos_list[0])
    greedy = gen[0, len(prompt_ids):].tolist()
    stopped = bool(greedy) and greedy[-1] in eos_list
    # generate's tokens are the plain argmax of a full forward at each step.
    plain, _, _ = greedy_plain(model, prompt_ids, len(greedy))
    assert plain == greedy, (name, plain, greedy)
    if stop_on is not None:
        assert stopped and greedy[-1] == stop_on and len(greedy) == stop_step + 1, (name, greedy, stop_step)
    assert max(greedy) < n_tok, (name, greedy)
    body = greedy[:-1] if stopped else greedy
    assert len(set(body)) >= 4, f"{name}: greedy continuation too repetitive: {greedy}"
    top = logits.argmax(-1)
    assert len(set(top.tolist())) >= 3, f"{name}: flat logits"

    with open(os.path.join(folder, "config.json")) as f:
        cfg_json = json.load(f)
    expected = {
        "versions": VERSIONS,
        "config_style": config_style(folder),
        "architecture": cfg_json["architectures"][0],
        "dtype": str(dtype).replace("torch.", ""),
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "vocab_size": config.vocab_size,
        "tokenizer_vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "logits_rounding": "6 significant digits",
        # RoPE as transformers computes it: angle(position p, pair i) = p * rope_inv_freq[i],
        # cos and sin times rope_attention_scaling.
        "rope_inv_freq": [float(x) for x in model.model.rotary_emb.inv_freq],
        "rope_attention_scaling": float(model.model.rotary_emb.attention_scaling),
        "tokenizer_cases": [],
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "prompt_logits": [round6(float(x)) for x in logits.flatten()],
        "loss": float(out.loss),
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_ids": eos_list,
        "greedy_ids": greedy,
        "greedy_stopped_at_eos": stopped,
        "greedy_text": hf_tok.decode(greedy, skip_special_tokens=False),
    }
    for t in texts:
        ids = hf_tok(t)["input_ids"]
        expected["tokenizer_cases"].append({
            "text": t, "ids": ids, "decoded": hf_tok.decode(ids, skip_special_tokens=False),
        })
    if hf_tok.chat_template:
        messages = [{"role": "user", "content": "Hi there"}]
        text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):
            ids = ids["input_ids"]
        # apply_chat_template tokenizes without the post-processor's specials (the template
        # writes its own BOS); tokenizer(text) would add a second one.
        assert ids == hf_tok(text, add_special_tokens=False)["input_ids"]
        expected["chat"] = {"messages": messages, "add_generation_prompt": True, "text": text, "ids": ids}
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
    print(f"{name}: {size} bytes, style {expected['config_style']}, prompt {len(prompt_ids)} ids, "
          f"greedy {greedy} stopped={stopped} {expected['greedy_text']!r}, loss {expected['loss']:.4f}")


def main():
    os.makedirs(OUT, exist_ok=True)

    # 1. Llama 3 style.
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = byte_level_bpe(LLAMA3_SPLIT, 352, specials, bos="<|begin_of_text|>")
    sid = {s: tok.token_to_id(s) for s in specials}
    vocab = tok.get_vocab_size(with_added_tokens=True)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=sid["<|begin_of_text|>"], eos_token_id=sid["<|end_of_text|>"],
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        attn_implementation="eager",
    )
    build(
        "llama_tied_bf16_shards", transformers.LlamaForCausalLM, cfg, torch.bfloat16, tok,
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
         "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": True, "model_max_length": 256,
         "model_input_names": ["input_ids", "attention_mask"], "chat_template": LLAMA3_TEMPLATE},
        [sid["<|end_of_text|>"], sid["<|eot_id|>"]],
        "The theory of memory layers is that",
        COMMON_TEXTS + ["<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|> after"],
        seed=1, stop_on=sid["<|eot_id|>"], max_shard_size="100KB", rewrite=to_v4,
        matters=[("llama3 rope scaling", lambda c: c.update(rope_scaling=None))],
    )

    # 2. Qwen 2 style: q/k/v biases, untied head, the model's vocabulary padded past the
    # tokenizer's (as Qwen's 151936 rows for 151665 tokens).
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_level_bpe(QWEN2_SPLIT, 352, specials, nfc=True)
    sid = {s: tok.token_to_id(s) for s in specials}
    cfg = transformers.Qwen2Config(
        vocab_size=384, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=sid["<|endoftext|>"], eos_token_id=sid["<|endoftext|>"],
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, attn_implementation="eager",
    )

    def qwen2_v4(folder):
        # As Qwen 2.5's configs: a sliding window that use_sliding_window=false switches off
        # (here shorter than the prompt, so applying it would change the logits), no layer_types.
        to_v4(folder, extra={"use_sliding_window": False, "sliding_window": 4, "max_window_layers": 1},
              drop=("layer_types",))

    build(
        "qwen2_bias_f32", transformers.Qwen2ForCausalLM, cfg, torch.float32, tok,
        {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
         "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False, "model_max_length": 256,
         "errors": "replace", "split_special_tokens": False, "chat_template": CHATML_TEMPLATE},
        sid["<|endoftext|>"],
        "A query picks the best keys; their",
        COMMON_TEXTS + ["<|im_start|>user\nhi<|im_end|>\n"],
        seed=2, rewrite=qwen2_v4,
        matters=[("use_sliding_window", lambda c: c.update(use_sliding_window=True)),
                 ("rope_theta", lambda c: c.update(rope_theta=10000.0))],
    )

    # 3. Qwen 3 style: head_dim 32 with 4 heads on hidden 64, per-head RMSNorm of q and k,
    # tied embeddings, f16. Same tokenizer family as Qwen 2, no chat template.
    cfg = transformers.Qwen3Config(
        vocab_size=tok.get_vocab_size(with_added_tokens=True), hidden_size=64, intermediate_size=128,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=sid["<|im_end|>"],
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, attn_implementation="eager",
    )
    build(
        "qwen3_qknorm_f16", transformers.Qwen3ForCausalLM, cfg, torch.float16, tok,
        {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
         "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False, "model_max_length": 256},
        sid["<|im_end|>"],
        "Dense layers don't remember as many",
        COMMON_TEXTS + ["before <|im_start|> middle <|im_end|>after"],
        seed=3, stop_on=sid["<|im_end|>"],
        matters=[("rope_theta", lambda c: c["rope_parameters"].update(rope_theta=10000.0))],
    )

    # 4. Mistral: no sliding window, f32, SentencePiece-like tokenizer with BOS.
    tok = metaspace_bpe(140)
    cfg = transformers.MistralConfig(
        vocab_size=tok.get_vocab_size(with_added_tokens=True), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
        rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attn_implementation="eager",
    )
    build(
        "mistral_f32", transformers.MistralForCausalLM, cfg, torch.float32, tok,
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "clean_up_tokenization_spaces": False, "model_max_length": 256,
         "chat_template": INST_TEMPLATE},
        2,
        "In 2024 the model read",
        COMMON_TEXTS + ["one</s>two <s> three"],
        seed=4,
    )


if __name__ == "__main__":
    main()
