//! `--devices`: the adapters a command shards value tables over, and the per-device cap.

use memlayers::memory::{max_device_bytes_from_env, ShardOptions};
use memlayers::model::{Model, ModelConfig, ModelWeights};
use memlayers::train::{TrainConfig, Trainer};
use memlayers::{Error, Gpu, Result};

/// The devices `--devices` names (each opened on its adapter, in order), or the default one.
pub fn open(devices: Option<&[usize]>) -> Result<Vec<Gpu>> {
    match devices {
        None => Ok(vec![Gpu::new_blocking()?]),
        Some([]) => Err(Error::Config("--devices: give at least one adapter index".into())),
        Some(list) => open_each(list),
    }
}

/// A device on each adapter of `list`, in order.
pub fn open_each(list: &[usize]) -> Result<Vec<Gpu>> {
    list.iter().map(|&i| Gpu::on_adapter_blocking(i)).collect()
}

/// How tables are sharded: as many rows a buffer as a binding holds, under the cap
/// `MEMLAYERS_MAX_DEVICE_BYTES` sets, if any.
pub fn shard_options() -> Result<ShardOptions> {
    Ok(ShardOptions {
        rows_per_chunk: None,
        max_device_bytes: max_device_bytes_from_env()?,
    })
}

/// The device a command runs on: the first of `--devices`, or the default one.
pub fn main(devices: Option<&[usize]>) -> Result<Gpu> {
    match devices {
        Some([first, ..]) => Gpu::on_adapter_blocking(*first),
        Some([]) => Err(Error::Config("--devices: give at least one adapter index".into())),
        None => Gpu::new_blocking(),
    }
}

/// The devices after the first of `--devices`, opened, when a model of `config` has value
/// tables to shard (memory layers other than PEER's); None: it runs on the first device alone.
pub fn others(devices: Option<&[usize]>, config: &ModelConfig) -> Result<Option<Vec<Gpu>>> {
    let shardable = config.memory.as_ref().is_some_and(|m| !m.peer);
    match devices {
        Some([_, rest @ ..]) if !rest.is_empty() && shardable => open_each(rest).map(Some),
        _ => Ok(None),
    }
}

/// A trainer on `gpu` (the first of `--devices`), its value tables sharded over the devices
/// after it when there are any (and tables to shard).
pub fn trainer(
    gpu: &Gpu,
    devices: Option<&[usize]>,
    weights: &ModelWeights,
    config: TrainConfig,
) -> Result<Trainer> {
    match others(devices, &weights.config)? {
        Some(others) => Trainer::new_sharded(gpu, others, weights, config, shard_options()?),
        None => Trainer::new(gpu, weights, config),
    }
}

/// A model on `gpu` (the first of `--devices`), its value tables sharded over the devices
/// after it when there are any (and tables to shard).
pub fn model(gpu: &Gpu, devices: Option<&[usize]>, weights: &ModelWeights) -> Result<Model> {
    match others(devices, &weights.config)? {
        Some(others) => Model::new_sharded(gpu, others, weights, shard_options()?),
        None => Model::new(gpu, weights),
    }
}
