//! The demo's models and training recipe, shared by `memlayers demo` and the web page: a
//! small byte-level lingua transformer whose last block's feed-forward is dense (SwiGLU), a
//! Memory+ layer or a PEER layer, trained with the reference recipe (values at 10x the lr).

use crate::model::{LMTransformerArgs, MoeArgs, ProductKeyArgs};
use crate::train::TrainConfig;

/// The memory layer's shape in a demo model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryShape {
    pub n_keys: usize,
    pub heads: usize,
    pub knn: usize,
    pub k_dim: usize,
    /// PEER (`peer_variant`, no projections) instead of Memory+.
    pub peer: bool,
}

/// The mixture of experts' shape in a demo model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeShape {
    pub experts: usize,
    pub top_k: usize,
    /// Each expert's hidden width.
    pub hidden: usize,
}

/// A demo model: width, depth, context (the training rows' length), init seed, and the
/// memory or the mixture of experts that replaces the last block's feed-forward (neither:
/// the dense model).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DemoModel {
    pub dim: usize,
    pub layers: usize,
    pub seq: usize,
    pub seed: u64,
    pub memory: Option<MemoryShape>,
    pub moe: Option<MoeShape>,
}

/// Byte-level: every token is a byte.
pub const VOCAB: usize = 256;

impl DemoModel {
    /// The lingua arguments (saved as the checkpoint's config.json).
    pub fn args(&self) -> LMTransformerArgs {
        let mut m = LMTransformerArgs {
            dim: self.dim,
            n_layers: self.layers,
            n_heads: Some((self.dim / 32).max(1)),
            multiple_of: 32,
            max_seqlen: self.seq,
            vocab_size: VOCAB as i64,
            seed: self.seed,
            ..Default::default()
        };
        if let Some(mem) = self.memory {
            m.productkey_args = ProductKeyArgs {
                is_enabled: true,
                layers: (self.layers - 1).to_string(),
                mem_n_keys: mem.n_keys,
                mem_heads: mem.heads,
                mem_knn: mem.knn,
                mem_k_dim: mem.k_dim,
                peer_variant: mem.peer,
                // PEER uses no projections; the reference would create them unused.
                swilu_projection: !mem.peer,
                ..Default::default()
            };
        }
        if let Some(moe) = self.moe {
            m.moe_args = MoeArgs {
                layers: (self.layers - 1).to_string(),
                n_experts: moe.experts,
                top_k: moe.top_k,
                hidden_dim: moe.hidden,
                ..Default::default()
            };
        }
        m
    }
}

/// The recipe: `steps` steps at `lr` with a tenth of them warm-up, and for memory models the
/// value table at the reference's 10x lr (docs/reference.md, "The training recipe"). Mixture-of-experts models
/// have no value table: everything at `lr`.
pub fn train_config(steps: u32, lr: f32, memory: bool) -> TrainConfig {
    TrainConfig {
        steps,
        lr,
        warmup: (steps / 10).max(1),
        value_lr: if memory { 10.0 * lr } else { lr },
        ..Default::default()
    }
}
