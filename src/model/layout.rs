//! Where every parameter of a transformer is: its blocks declare their parameters into one
//! registry (`crate::params`).

use super::blocks::{AttentionParams, FeedForwardParams};
use super::config::ModelConfig;
use crate::error::Result;
use crate::params::{Group, Init, ParamId, Registry};

/// One transformer layer: two pre-norm residual blocks, each with its norm.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams {
    pub attention_norm: ParamId,
    pub attention: AttentionParams,
    pub ffn_norm: ParamId,
    pub feed_forward: FeedForwardParams,
}

/// Where each parameter of a model is in its registry.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelLayout {
    pub registry: Registry,
    pub tok_embeddings: ParamId,
    pub layers: Vec<LayerParams>,
    /// The value tables, each declared under the first memory layer that reads it: one
    /// shared by all memory layers (lingua's `mem_share_values`, its default), or one per
    /// memory layer.
    pub values: Vec<ParamId>,
    pub norm: ParamId,
    /// The output layer's weight: `tok_embeddings` itself where the embedding is tied.
    pub output: ParamId,
}

impl ModelLayout {
    /// Declares every parameter of `c` in lingua's state-dict order: the embedding, then per
    /// layer the attention block, both norms and the feed-forward block (a memory beside a
    /// dense block after the dense block's weights; a value table first in the memory layer
    /// that first reads it), then the final norm and the output layer.
    pub fn new(c: &ModelConfig) -> Result<Self> {
        let mut r = Registry::default();
        let std = c
            .args
            .init_base_std
            .map(|s| s as f32)
            .unwrap_or(1.0 / (c.dim as f32).sqrt());
        let tok_embeddings = r.normal_weight("tok_embeddings.weight", vec![c.vocab, c.dim], std);
        let mut layers = Vec::with_capacity(c.n_layers);
        let mut values: Vec<ParamId> = Vec::new();
        for l in 0..c.n_layers {
            let prefix = format!("layers.{l}.");
            let norm = |r: &mut Registry, name: &str| {
                r.declare(format!("{prefix}{name}"), vec![c.dim], Init::Ones, Group::Weights)
            };
            let attention = AttentionParams::declare(&mut r, &prefix, c, std);
            let attention_norm = norm(&mut r, "attention_norm.weight");
            let ffn_norm = norm(&mut r, "ffn_norm.weight");
            let feed_forward = FeedForwardParams::declare(&mut r, &prefix, c, (l, std), &mut values)?;
            layers.push(LayerParams {
                attention_norm,
                attention,
                ffn_norm,
                feed_forward,
            });
        }
        let norm = r.declare("norm.weight", vec![c.dim], Init::Ones, Group::Weights);
        let output = if c.variant.tied_output {
            tok_embeddings
        } else {
            r.normal_weight("output.weight", vec![c.vocab, c.dim], std)
        };
        Ok(ModelLayout {
            registry: r,
            tok_embeddings,
            layers,
            values,
            norm,
            output,
        })
    }

    /// The parameters in the order the reference initialisation draws them: per layer the
    /// feed-forward block, then the attention block; then the value tables, the embedding,
    /// the final norm and the output layer. (Norms start at one and draw nothing.)
    pub fn init_order(&self) -> Vec<ParamId> {
        let mut order = Vec::with_capacity(self.registry.len());
        for l in &self.layers {
            order.extend(l.feed_forward.ids());
            order.push(l.attention_norm);
            order.extend(l.attention.ids());
            order.push(l.ffn_norm);
        }
        order.extend(self.values.iter().copied());
        order.extend([self.tok_embeddings, self.norm]);
        if self.output != self.tok_embeddings {
            order.push(self.output);
        }
        debug_assert_eq!(order.len(), self.registry.len());
        order
    }
}

impl ModelConfig {
    /// Forward FLOPs per token at context length `seq` (multiply-adds x 2), counted over the
    /// model's layout: every attention projection, the attention scores and weighted sums
    /// (causal, averaged over positions), each layer's feed-forward block as its kind counts
    /// it (`FeedForwardParams::flops_per_token`), and the output layer.
    pub fn flops_per_token(&self, seq: usize) -> Result<f64> {
        let layout = ModelLayout::new(self)?;
        let (d, hd) = (self.dim as f64, self.head_dim as f64);
        let (h, kv) = (self.n_heads as f64, self.n_kv_heads as f64);
        let attention_projections = 2.0 * d * (h * hd) * 2.0 + 2.0 * d * (kv * hd) * 2.0;
        let average_context = (seq as f64 + 1.0) / 2.0;
        let attention_core = 2.0 * 2.0 * h * hd * average_context;
        let blocks: f64 = layout
            .layers
            .iter()
            .map(|l| attention_projections + attention_core + l.feed_forward.flops_per_token(self))
            .sum();
        Ok(blocks + 2.0 * d * self.vocab as f64)
    }
}
