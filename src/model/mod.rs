//! The lingua-compatible transformer: configuration, the parameter layout (every parameter
//! declared once, by its block), host weights under lingua's names, the blocks' forward and
//! backward on the GPU with a KV cache for generation (its CPU oracle: `crate::oracle`).

mod backward;
pub mod blocks;
mod config;
mod context;
mod gpu;
mod kv_cache;
mod layout;
mod precision;
mod sharding;
mod slot_stats;
mod vocab;
mod weights;

pub use backward::{record_token_grad, ModelGrads};
pub use blocks::{
    AttentionParams, DenseAndMemoryParams, DenseParams, FeedForwardParams, MemoryParams, MoeParams,
};
pub use config::{
    LMTransformerArgs, MemoryPlacement, ModelConfig, MoeArgs, MoeConfig, ProductKeyArgs, TransformerVariant,
};
pub use gpu::{Model, ModelForward};
pub use kv_cache::KvCache;
pub use layout::{LayerParams, ModelLayout};
pub use precision::WeightPrecision;
pub use slot_stats::{LayerSlotCounts, SlotCounts, SLOT_COUNTS_FILE};
pub use weights::ModelWeights;
