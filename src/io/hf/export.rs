//! A memlayers or lingua dense model written as a Hugging Face Llama folder
//! (`memlayers export-hf`), for transformers and every tool that reads such folders, and as the
//! starting point of a retrofit: `config.json` (LlamaForCausalLM), `model.safetensors` (f32, in
//! transformers' names and RoPE order) and, for a byte-level model, a `tokenizer.json` whose
//! id of each byte is the byte.
//!
//! lingua's transformer is Llama's: RMSNorm before attention and before a SwiGLU feed-forward
//! block, RoPE, grouped-query attention, an untied output layer. Only the RoPE convention
//! differs, handled as on load (`weights.rs`).

use super::names::hf_tensors;
use super::weights::WEIGHTS_FILE;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::ModelWeights;
use serde_json::json;
use std::path::Path;

/// The id generation stops at in an exported byte-level model: the newline that ends each of
/// the demo's facts.
pub const BYTE_LEVEL_EOS: u32 = b'\n' as u32;

/// `config.json` of `weights` as a `LlamaForCausalLM`; errors for what Llama does not have
/// (memory or mixture-of-experts layers, Hugging Face variants).
pub fn llama_config(weights: &ModelWeights, eos: Option<u32>) -> Result<serde_json::Value> {
    let c = &weights.config;
    if c.memory.is_some() || !c.moe_layers.is_empty() {
        return Err(Error::Config(
            "export-hf writes dense models (Llama has no memory or mixture-of-experts layers; a memory is added with \
memlayers retrofit)"
                .into(),
        ));
    }
    if !c.variant.is_lingua() {
        return Err(Error::Config(
            "export-hf writes lingua's transformer; this model is already a Hugging Face one".into(),
        ));
    }
    Ok(json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.dim,
        "intermediate_size": c.hidden,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.norm_eps as f64,
        "rope_theta": c.rope_theta as f64,
        "rope_scaling": null,
        "max_position_embeddings": c.max_seqlen,
        "vocab_size": c.vocab,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": null,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }))
}

/// GPT-2's printable stand-in of every byte (the byte-level BPE alphabet): printable Latin-1
/// bytes stand for themselves, the others for the characters from U+0100 on, in byte order.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 0x100;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).expect("below U+0200")
        })
        .collect()
}

/// A byte-level `tokenizer.json` whose id of byte `b` is `b` (no merges, no special tokens).
pub fn byte_tokenizer_json() -> Result<String> {
    use tokenizers::decoders::byte_level::ByteLevel as ByteDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let vocab: tokenizers::models::bpe::Vocab = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(b, c)| (c.to_string(), b as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .map_err(|e| Error::Format(format!("byte tokenizer: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, false, false)));
    tokenizer.with_decoder(Some(ByteDecoder::new(false, false, false)));
    tokenizer
        .to_string(true)
        .map_err(|e| Error::Format(format!("byte tokenizer: {e}")))
}

/// Writes `weights` as a Llama folder at `out` (created); `tokenizer_json` the tokenizer's
/// file, if any; `eos` the id generation stops at.
pub fn export_llama(
    weights: &ModelWeights,
    out: &Path,
    tokenizer_json: Option<&str>,
    eos: Option<u32>,
) -> Result<()> {
    let config = llama_config(weights, eos)?;
    let (tensors, memory) = hf_tensors(weights)?;
    debug_assert!(memory.tensors.is_empty());
    std::fs::create_dir_all(out)?;
    write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    tensors.write(&out.join(WEIGHTS_FILE))?;
    if let Some(text) = tokenizer_json {
        write_atomic(&out.join("tokenizer.json"), text.as_bytes())?;
    }
    if let Some(id) = eos {
        write_atomic(
            &out.join("generation_config.json"),
            serde_json::to_string_pretty(&json!({"eos_token_id": id}))
                .unwrap_or_default()
                .as_bytes(),
        )?;
    }
    Ok(())
}
