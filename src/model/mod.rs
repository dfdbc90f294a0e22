//! The lingua-compatible transformer: configuration (and, to come, parameters, forward,
//! backward, KV cache).

mod config;

pub use config::{LMTransformerArgs, ModelConfig, ProductKeyArgs};
