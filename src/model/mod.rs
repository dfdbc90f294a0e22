//! The lingua-compatible transformer: configuration, parameters under lingua's names, the
//! forward on the GPU, and its CPU oracle. (Backward, KV cache and training: to come.)

mod backward;
mod config;
mod cpu;
mod gpu;
mod weights;

pub use backward::ModelGrads;
pub use config::{LMTransformerArgs, ModelConfig, ProductKeyArgs};
pub use cpu::{forward_cpu, forward_cpu_with_selections};
pub use gpu::{Model, ModelForward};
pub use weights::{FeedForward, LayerWeights, ModelWeights};
