//! Training: AdamW with the reference's parameter groups and schedule, byte-level data, and
//! the training step on the GPU.

mod data;
mod trainer;

pub use data::ByteData;
pub use trainer::{TrainConfig, Trainer, ValueOptimizer};
