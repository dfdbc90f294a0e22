//! The lingua-compatible transformer: configuration, parameters under lingua's names, the
//! forward and backward on the GPU with a KV cache for generation, and the CPU oracle.

mod backward;
mod config;
mod cpu;
mod gpu;
mod weights;

pub use backward::ModelGrads;
pub use config::{LMTransformerArgs, ModelConfig, ProductKeyArgs};
pub use cpu::{forward_cpu, forward_cpu_with_selections};
pub use gpu::{KvCache, Model, ModelForward};
pub use weights::{FeedForward, LayerWeights, ModelWeights};
