//! `--devices`: the adapters a command shards value tables over, and the per-device cap.

use memlayers::memory::{max_device_bytes_from_env, ShardOptions};
use memlayers::model::ModelWeights;
use memlayers::train::{TrainConfig, Trainer};
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

/// The device a command runs on: the first of `--devices`, or the default one.
pub fn main(devices: Option<&[usize]>) -> Result<Gpu> {
    match devices {
        Some([first, ..]) => Gpu::on_adapter_blocking(*first),
        Some([]) => Err(Error::Config("--devices: give at least one adapter index".into())),
        None => Gpu::new_blocking(),
    }
}

/// A trainer on `gpu` (the first of `--devices`), its value tables sharded over the devices
/// after it when there are any.
pub fn trainer(
    gpu: &Gpu,
    devices: Option<&[usize]>,
    weights: &ModelWeights,
    config: TrainConfig,
) -> Result<Trainer> {
    match devices {
        Some([_, rest @ ..]) if !rest.is_empty() => {
            let others = rest
                .iter()
                .map(|&i| Gpu::on_adapter_blocking(i))
                .collect::<Result<_>>()?;
            Trainer::new_sharded(gpu, others, weights, config, shard_options()?)
        }
        _ => Trainer::new(gpu, weights, config),
    }
}

/// A model on `gpu` (the first of `--devices`), its value tables sharded over the devices
/// after it when there are any.
pub fn model(
    gpu: &Gpu,
    devices: Option<&[usize]>,
    weights: &ModelWeights,
) -> Result<memlayers::model::Model> {
    match devices {
        Some([_, rest @ ..]) if !rest.is_empty() => {
            let others = rest
                .iter()
                .map(|&i| Gpu::on_adapter_blocking(i))
                .collect::<Result<_>>()?;
            memlayers::model::Model::new_sharded(gpu, others, weights, shard_options()?)
        }
        _ => memlayers::model::Model::new(gpu, weights),
    }
}
