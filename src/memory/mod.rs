//! The product-key memory layer: configuration, the shared value pool, weights and forward.

mod backward;
mod config;
mod layer;
mod lookup;
mod pool;
mod sharded;
mod throughput;

pub use backward::MemoryGrads;
pub use config::MemoryConfig;
pub use layer::*;
pub use lookup::{record_lookup, LookupBuffers, LookupShape, MAX_HALF_DIM};
pub use pool::{as_stored, ValueDtype, ValuePool};
pub use sharded::{
    max_device_bytes_from_env, put_shard, shard_bytes, shard_columns, shard_of, Relay, ShardOptions,
    ShardedActivations, ShardedAdamW, ShardedGrads, ShardedValues, MAX_DEVICE_BYTES_ENV,
};
pub use throughput::ForwardWorkload;
