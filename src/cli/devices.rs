//! `--devices`: the adapters a command shards value tables over, and the per-device cap.

use memlayers::memory::{max_device_bytes_from_env, ShardOptions};
use memlayers::{Error, Gpu, Result};

/// The devices `--devices` names (each opened on its adapter, in order), or the default one.
pub fn open(devices: Option<&[usize]>) -> Result<Vec<Gpu>> {
    match devices {
        None => Ok(vec![Gpu::new_blocking()?]),
        Some([]) => Err(Error::Config("--devices: give at least one adapter index".into())),
        Some(list) => list.iter().map(|&i| Gpu::on_adapter_blocking(i)).collect(),
    }
}

/// How tables are sharded: as many rows a buffer as a binding holds, under the cap
/// `MEMLAYERS_MAX_DEVICE_BYTES` sets, if any.
pub fn shard_options() -> Result<ShardOptions> {
    Ok(ShardOptions {
        rows_per_chunk: None,
        max_device_bytes: max_device_bytes_from_env()?,
    })
}
