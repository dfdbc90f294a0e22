//! memlayers' parameter names and row orders against transformers' (`docs/hugging-face.md`).
//!
//! transformers' RoPE turns dimension `i` of a head with dimension `i + head_dim/2`; memlayers'
//! kernel (lingua's) turns adjacent pairs `(2i, 2i+1)`. Attention scores are dot products
//! of a query and a key head, which do not change when both heads' dimensions are put in the
//! same new order, so the rows of `q_proj` and `k_proj` (and their biases and Qwen3's q/k
//! norms) are reordered once on load so that pair `(2i, 2i+1)` holds transformers' `(i, i +
//! head_dim/2)`: the same rotation, done by the adjacent-pair kernel. Values and the output
//! projection keep their order. Written back (export, a taught model), the order is undone.

use crate::error::{Error, Result};
use crate::model::ModelWeights;
use crate::tensor_file::{HostTensor, TensorFile};

/// How a Hugging Face tensor's rows become memlayers' (`docs/hugging-face.md`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Order {
    Same,
    /// Rows of heads `head_dim` long: within each head, row `2i` takes row `i` and row
    /// `2i + 1` row `i + head_dim / 2` (the row length: 1 for biases and norms).
    RopePairs,
}

/// The Hugging Face name of memlayers' parameter `name` and how its rows are ordered; `None`
/// for a name outside the Llama family's.
pub(super) fn hf_name(name: &str) -> Option<(String, Order)> {
    let simple = match name {
        "tok_embeddings.weight" => return Some(("model.embed_tokens.weight".into(), Order::Same)),
        "norm.weight" => return Some(("model.norm.weight".into(), Order::Same)),
        "output.weight" => return Some(("lm_head.weight".into(), Order::Same)),
        _ => name,
    };
    let rest = simple.strip_prefix("layers.")?;
    let (layer, param) = rest.split_once('.')?;
    let (hf, order) = match param {
        "attention_norm.weight" => ("input_layernorm.weight", Order::Same),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", Order::Same),
        "attention.wq.weight" => ("self_attn.q_proj.weight", Order::RopePairs),
        "attention.wk.weight" => ("self_attn.k_proj.weight", Order::RopePairs),
        "attention.wv.weight" => ("self_attn.v_proj.weight", Order::Same),
        "attention.wo.weight" => ("self_attn.o_proj.weight", Order::Same),
        "attention.wq.bias" => ("self_attn.q_proj.bias", Order::RopePairs),
        "attention.wk.bias" => ("self_attn.k_proj.bias", Order::RopePairs),
        "attention.wv.bias" => ("self_attn.v_proj.bias", Order::Same),
        "attention.q_norm.weight" => ("self_attn.q_norm.weight", Order::RopePairs),
        "attention.k_norm.weight" => ("self_attn.k_norm.weight", Order::RopePairs),
        "feed_forward.w1.weight" => ("mlp.gate_proj.weight", Order::Same),
        "feed_forward.w3.weight" => ("mlp.up_proj.weight", Order::Same),
        "feed_forward.w2.weight" => ("mlp.down_proj.weight", Order::Same),
        // A memory's parameters, beside the feed-forward block (`memory.`) or in its place
        // (`feed_forward.` other than w1, w2, w3): stored alike.
        _ => match param
            .strip_prefix("memory.")
            .or_else(|| param.strip_prefix("feed_forward."))
        {
            Some(memory) => return Some((format!("model.layers.{layer}.memory.{memory}"), Order::Same)),
            None => return None,
        },
    };
    Some((format!("model.layers.{layer}.{hf}"), order))
}

/// `data` (`rows` rows of `row_len`) with each head's rows in adjacent-pair order.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(super) fn to_rope_pairs(data: &[f32], row_len: usize, head_dim: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    let rows = data.len() / row_len;
    for r in 0..rows {
        let (head, j) = (r / head_dim, r % head_dim);
        let from = head * head_dim + if j % 2 == 0 { j / 2 } else { half + j / 2 };
        out[r * row_len..(r + 1) * row_len].copy_from_slice(&data[from * row_len..(from + 1) * row_len]);
    }
    out
}

/// transformers' name of memlayers' parameter `name`, and whether its rows are in RoPE pair
/// order here (q and k projections: their rows differ from transformers' order).
pub fn hf_name_and_order(name: &str) -> Option<(String, bool)> {
    hf_name(name).map(|(n, order)| (n, order == Order::RopePairs))
}

/// Rows in RoPE pair order (rows of `row_len` in heads of `head_dim` rows) back in
/// transformers' order.
pub fn rows_to_halves(data: &[f32], row_len: usize, head_dim: usize) -> Vec<f32> {
    from_rope_pairs(data, row_len, head_dim)
}

/// The inverse of `to_rope_pairs`: adjacent pairs back to transformers' halves.
fn from_rope_pairs(data: &[f32], row_len: usize, head_dim: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    let rows = data.len() / row_len;
    for r in 0..rows {
        let (head, j) = (r / head_dim, r % head_dim);
        let to = head * head_dim + if j % 2 == 0 { j / 2 } else { half + j / 2 };
        out[to * row_len..(to + 1) * row_len].copy_from_slice(&data[r * row_len..(r + 1) * row_len]);
    }
    out
}

/// `weights` as a Hugging Face folder's tensors (f32, transformers' names and row order):
/// the model's, and its retrofitted memory's (`memory.safetensors`). A tied output layer is
/// stored once, as the embedding.
pub fn hf_tensors(weights: &ModelWeights) -> Result<(TensorFile, TensorFile)> {
    let head_dim = weights.config.head_dim;
    let (mut model, mut memory) = (TensorFile::default(), TensorFile::default());
    for (name, shape, data) in weights.named_tensors() {
        let (hf, order) =
            hf_name(&name).ok_or_else(|| Error::Config(format!("{name} has no Hugging Face counterpart")))?;
        let data = match order {
            Order::Same => data.to_vec(),
            Order::RopePairs => from_rope_pairs(data, shape.get(1).copied().unwrap_or(1), head_dim),
        };
        let file = if hf.contains(".memory.") {
            &mut memory
        } else {
            &mut model
        };
        file.insert(hf, HostTensor::f32(shape, data));
    }
    Ok((model, memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotating adjacent pairs of the reordered head equals rotating halves of the original.
    #[test]
    fn rope_pair_order_turns_halves_into_adjacent_pairs() {
        let head_dim = 8;
        let x: Vec<f32> = (0..2 * head_dim).map(|i| i as f32 * 0.37 - 1.0).collect();
        let pairs = to_rope_pairs(&x, 1, head_dim);
        let (c, s) = (0.6f32, 0.8f32);
        for head in 0..2 {
            let o = head * head_dim;
            for i in 0..head_dim / 2 {
                let (a, b) = (x[o + i], x[o + i + head_dim / 2]);
                let halves = (a * c - b * s, b * c + a * s);
                let (p, q) = (pairs[o + 2 * i], pairs[o + 2 * i + 1]);
                assert_eq!((p * c - q * s, q * c + p * s), halves);
            }
        }
    }

    #[test]
    fn rope_pair_order_round_trips() {
        let x: Vec<f32> = (0..3 * 16 * 2).map(|i| i as f32).collect();
        assert_eq!(from_rope_pairs(&to_rope_pairs(&x, 2, 8), 2, 8), x);
    }

    #[test]
    fn every_llama_family_name_maps() {
        assert_eq!(
            hf_name("layers.3.attention.wq.weight"),
            Some(("model.layers.3.self_attn.q_proj.weight".into(), Order::RopePairs))
        );
        assert_eq!(
            hf_name("layers.0.feed_forward.w3.weight"),
            Some(("model.layers.0.mlp.up_proj.weight".into(), Order::Same))
        );
        // A memory beside the feed-forward block or in its place is stored alike.
        for name in [
            "layers.2.memory.values.weight",
            "layers.2.feed_forward.values.weight",
        ] {
            assert_eq!(
                hf_name(name),
                Some(("model.layers.2.memory.values.weight".into(), Order::Same))
            );
        }
        assert_eq!(hf_name("layers.0.mixer.weight"), None);
        assert_eq!(hf_name("tok_embeddings.bias"), None);
    }
}
