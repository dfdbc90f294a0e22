//! The product-key memory layer: configuration, the shared value pool, weights and forward.

mod config;
mod layer;
mod pool;

pub use config::MemoryConfig;
pub use layer::*;
pub use pool::{as_stored, ValueDtype, ValuePool};
